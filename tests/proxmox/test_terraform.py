"""proxmox/terraform, read with python-hcl2: no provider can be downloaded here, so `terraform
validate` cannot run; the files are parsed (a syntax error fails) and what matters is asserted.

python-hcl2's quirks: string values keep their quotes, references come as "${...}", and blocks
are lists of dicts carrying "__is_block__".
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "proxmox/terraform"


def load(name: str) -> dict:
    with (TF / name).open() as f:
        return hcl2.load(f)


def unquote(value: str) -> str:
    return value[1:-1] if value.startswith('"') and value.endswith('"') else value


def blocks(parsed: dict, kind: str) -> dict[str, dict]:
    """`variable "x" {...}` and the like, by name, quotes removed."""
    return {unquote(name): body for entry in parsed.get(kind, []) for name, body in entry.items()}


def block(body: dict, name: str) -> dict:
    (only,) = body[name]
    return only


@pytest.fixture(scope="module")
def variables() -> dict[str, dict]:
    return blocks(load("variables.tf"), "variable")


@pytest.fixture(scope="module")
def container() -> dict:
    (resource,) = load("main.tf")["resource"]
    return resource['"proxmox_virtual_environment_container"']['"sudo"']


def test_every_file_parses_and_every_variable_is_declared_and_used(variables):
    texts = {path.name: path.read_text() for path in TF.glob("*.tf")}
    assert set(texts) == {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}
    for name in texts:
        load(name)
    used = set(
        re.findall(r"\bvar\.([a-z0-9_]+)", "".join(t for n, t in texts.items() if n != "variables.tf"))
    )
    assert used == set(variables), "each variable is used, each one used is declared"


def test_the_provider_is_bpg_at_a_pinned_version_and_takes_no_secret_from_files():
    versions = load("versions.tf")
    (terraform,) = versions["terraform"]
    (providers,) = terraform["required_providers"]
    proxmox = providers["proxmox"]
    assert unquote(proxmox["source"]) == "bpg/proxmox"
    assert re.fullmatch(r"\d+\.\d+\.\d+", unquote(proxmox["version"])), "an exact version, not a range"
    assert terraform["required_version"]
    (provider,) = versions["provider"]
    config = provider['"proxmox"']
    # The API token comes from PROXMOX_VE_API_TOKEN, never from a variable that could land in a file.
    assert not {"api_token", "password", "username", "auth_ticket"} & set(config)


def test_the_container_is_unprivileged_debian_sized_from_variables(container):
    assert container["unprivileged"] is True
    assert container["node_name"] == "${var.node_name}"
    assert container["vm_id"] == "${var.vm_id}"
    assert container["tags"] == "${var.tags}"
    assert container["start_on_boot"] == "${var.start_on_boot}"
    assert block(container, "operating_system") == {
        "template_file_id": "${var.template_file_id}",
        "type": '"debian"',
        "__is_block__": True,
    }
    assert block(container, "cpu")["cores"] == "${var.cores}"
    memory = block(container, "memory")
    assert (memory["dedicated"], memory["swap"]) == ("${var.memory_mb}", "${var.swap_mb}")
    disk = block(container, "disk")
    assert (disk["datastore_id"], disk["size"]) == ("${var.datastore_id}", "${var.disk_size_gb}")


def test_the_network_is_eth0_on_the_bridge_with_dhcp_or_a_static_address(container):
    nic = block(container, "network_interface")
    assert (unquote(nic["name"]), nic["bridge"], nic["vlan_id"]) == (
        "eth0",
        "${var.bridge}",
        "${var.vlan_id}",
    )
    init = block(container, "initialization")
    assert init["hostname"] == "${var.hostname}"
    ipv4 = block(block(init, "ip_config"), "ipv4")
    assert ipv4["address"] == "${var.ipv4_address}"
    assert "null" in ipv4["gateway"], "no gateway with DHCP"
    assert "password" not in block(init, "user_account"), "no root password in the configuration"


def test_features_and_bind_mounts_are_left_to_the_node_and_ignored_after(container):
    # An API token may not set them (apply-features.sh does, as root@pam): Terraform neither
    # sets them nor, once set, plans to remove them.
    assert "features" not in container and "mount_point" not in container
    assert set(block(container, "lifecycle")["ignore_changes"]) == {"features", "mount_point"}


def test_variables_have_types_descriptions_and_validation(variables):
    for name, body in variables.items():
        assert body.get("type"), name
        assert len(unquote(body.get("description", ""))) > 10, name
    unchecked = {name for name, body in variables.items() if "validation" not in body}
    # Booleans, free lists and storage names Proxmox itself checks.
    assert unchecked == {"proxmox_insecure", "datastore_id", "ssh_public_keys", "start_on_boot"}
    assert variables["vm_id"]["type"] == "number" and variables["tags"]["type"] == "${list(string)}"


def regex_of(variables: dict, name: str) -> re.Pattern:
    """The pattern of a `can(regex("...", var.name))` validation, as Terraform reads the string."""
    (validation,) = variables[name]["validation"]
    found = re.search(r'regex\(\\?"(.*?)\\?", var\.', validation["condition"])
    assert found, validation["condition"]
    return re.compile(found.group(1).replace("\\\\", "\\"))


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("proxmox_endpoint", "https://pve.example.lan:8006/", "http://pve.example.lan:8006/"),
        ("node_name", "pve1", "pve 1"),
        ("hostname", "sudo", "Sudo_Host"),
        (
            "template_file_id",
            "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
            "local:iso/debian-12.iso",
        ),
        ("bridge", "vmbr0", "a-bridge-name-too-long"),
    ],
)
def test_validations_accept_good_values_and_refuse_bad_ones(variables, name, good, bad):
    pattern = regex_of(variables, name)
    assert pattern.search(good) and not pattern.search(bad)


def test_outputs_are_the_vmid_and_the_ip():
    outputs = blocks(load("outputs.tf"), "output")
    assert set(outputs) == {"vmid", "ip"}
    assert outputs["vmid"]["value"] == "${proxmox_virtual_environment_container.sudo.vm_id}"
    assert "ipv4" in outputs["ip"]["value"] and "var.ipv4_address" in outputs["ip"]["value"]


def test_the_example_tfvars_sets_every_required_variable_and_no_secret(variables):
    with (TF / "terraform.tfvars.example").open() as f:
        example = hcl2.load(f)
    example.pop("__comments__", None)
    assert set(example) <= set(variables), "only declared variables"
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(example)
    assert not [k for k in example if re.search("token|password|secret", k)]
    for name in ("proxmox_endpoint", "node_name", "hostname", "template_file_id", "bridge"):
        assert regex_of(variables, name).search(unquote(example[name])), name


def test_real_values_and_state_are_never_committed():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path]).returncode == 0

    for path in (
        "terraform.tfvars",
        "prod.auto.tfvars",
        "terraform.tfstate",
        "terraform.tfstate.backup",
        ".terraform/x",
    ):
        assert ignored(f"proxmox/terraform/{path}"), path
    for path in ("terraform.tfvars.example", "main.tf"):
        assert not ignored(f"proxmox/terraform/{path}"), path


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform here (none from Debian or PyPI)")
def test_terraform_fmt_finds_nothing_to_change():
    result = subprocess.run(["terraform", "fmt", "-check", "-diff", str(TF)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
