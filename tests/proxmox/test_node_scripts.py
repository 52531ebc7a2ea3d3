"""proxmox/host-prep.sh and proxmox/apply-features.sh, the two scripts for the Proxmox node's shell.

There is no Proxmox node here. host-prep.sh needs none (it makes and re-owns directories, for
real, in a temporary directory). apply-features.sh talks to the node only through `pct`, so it
runs against tests/proxmox/standin/pct, put first on PATH: a stand-in for Proxmox's container
toolkit that records every call and keeps each container's `pct config` in a file that its
`pct set` updates. The tests assert the calls made, that a second run makes no `pct set` and
no reboot, and what each script says when the input is wrong (nothing changed then).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).resolve().parent / "standin"
HOST_PREP = ROOT / "proxmox/host-prep.sh"
APPLY = ROOT / "proxmox/apply-features.sh"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

UNPRIVILEGED = """arch: amd64
cores: 4
hostname: sudo
memory: 8192
net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth
ostype: debian
rootfs: local-lvm:vm-118-disk-0,size=32G
swap: 1024
tags: sudo;terraform
unprivileged: 1
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the node's scripts run as root")


@dataclass
class Node:
    """A pretend Proxmox node: the stand-in pct's containers and call log, and its disks."""

    state: Path
    log: Path
    disks: Path

    def env(self, path: str | None = None) -> dict[str, str]:
        return os.environ | {
            "PATH": path if path is not None else f"{STANDIN}:{os.environ['PATH']}",
            "PCT_STATE": str(self.state),
            "PCT_LOG": str(self.log),
        }

    def run(self, script: Path, *args: str, prefix: tuple[str, ...] = (), path: str | None = None):
        return subprocess.run(
            [*prefix, str(script), *args], env=self.env(path), capture_output=True, text=True, timeout=60
        )

    def calls(self) -> list[list[str]]:
        text = self.log.read_text() if self.log.exists() else ""
        self.log.write_text("")
        return [json.loads(line) for line in text.splitlines()]

    def config(self, vmid: str) -> str:
        return (self.state / f"{vmid}.conf").read_text()

    def container(self, vmid: str, config: str) -> None:
        (self.state / f"{vmid}.conf").write_text(config)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path / "pct", tmp_path / "pct.log", tmp_path / "disks")
    n.state.mkdir()
    n.disks.mkdir()
    n.container("118", UNPRIVILEGED)
    return n


def owner(path: Path) -> str:
    st = path.stat()
    return f"{st.st_uid}:{st.st_gid} {oct(st.st_mode & 0o7777)}"


# host-prep.sh


def test_host_prep_makes_the_directories_the_containers_root_owns(node: Node):
    backups, media = node.disks / "hdd/sudo-backups", node.disks / "ssd/sudo-media"
    first = node.run(HOST_PREP, str(backups), str(media))
    assert first.returncode == 0, first.stderr
    assert owner(backups) == owner(media) == "100000:100000 0o750"
    # The disk under it stays the node's.
    assert (node.disks / "hdd").stat().st_uid == 0
    assert "made ready, owned by 100000:100000" in first.stdout

    (backups / "kept").write_text("a file the container wrote")
    before = backups.stat().st_mtime_ns, backups.stat().st_ctime_ns
    second = node.run(HOST_PREP, str(backups), str(media))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("(unchanged)") == 2
    assert (backups.stat().st_mtime_ns, backups.stat().st_ctime_ns) == before

    custom = node.disks / "custom"
    assert node.run(HOST_PREP, "--owner", "200000:200000", str(custom)).returncode == 0
    assert owner(custom) == "200000:200000 0o750"


@pytest.mark.parametrize(
    ("make", "arg", "says"),
    [
        (None, "relative/dir", "give an absolute path"),
        (None, "/proc", "is a mount point (a whole disk): give a subdirectory of it, e.g. /proc/sudo"),
        ("file", "{disks}/a-file", "exists and is not a directory"),
        ("full", "{disks}/full", "already holds files and belongs to root:root"),
        (None, "{disks}/with,comma", "use only letters, digits"),
    ],
)
def test_host_prep_refuses_what_it_must_not_touch_and_changes_nothing(node: Node, make, arg, says):
    if make == "file":
        (node.disks / "a-file").write_text("")
    if make == "full":
        (node.disks / "full").mkdir()
        (node.disks / "full/data").write_text("the node's own data")
    good = node.disks / "good"
    result = node.run(HOST_PREP, str(good), arg.format(disks=node.disks))
    assert result.returncode == 1
    assert says in result.stderr
    assert not good.exists(), "checked everything before changing anything"


def test_host_prep_says_how_to_run_it(node: Node):
    usage = node.run(HOST_PREP)
    assert usage.returncode == 1 and "usage: host-prep.sh" in usage.stderr
    bad_owner = node.run(HOST_PREP, "--owner", "root", str(node.disks / "x"))
    assert "--owner must be UID:GID in numbers" in bad_owner.stderr
    nobody = node.run(HOST_PREP, str(node.disks / "x"), prefix=tuple(NOBODY))
    assert nobody.returncode == 1 and "run it as root on the Proxmox node" in nobody.stderr
    assert not (node.disks / "x").exists()


# apply-features.sh


def prepared(node: Node, name: str) -> Path:
    path = node.disks / name
    assert node.run(HOST_PREP, str(path)).returncode == 0
    return path


def test_apply_features_sets_features_and_mounts_then_reboots_once(node: Node):
    backups = prepared(node, "sudo-backups")
    first = node.run(APPLY, "118", f"{backups}:/srv/backups")
    assert first.returncode == 0, first.stderr
    assert node.calls() == [
        ["config", "118"],
        ["set", "118", "--features", "nesting=1,keyctl=1", "--mp0", f"{backups},mp=/srv/backups"],
        ["config", "118"],
        ["status", "118"],
        ["reboot", "118"],
    ]
    config = node.config("118")
    assert "features: nesting=1,keyctl=1\n" in config
    assert f"mp0: {backups},mp=/srv/backups\n" in config
    assert "rebooting so that they apply" in first.stdout

    second = node.run(APPLY, "118", f"{backups}:/srv/backups")
    assert second.returncode == 0, second.stderr
    assert node.calls() == [["config", "118"]], "no pct set and no reboot the second time"
    assert "already set (unchanged)" in second.stdout
    assert node.config("118") == config


def test_apply_features_keeps_what_is_set_and_adds_to_it(node: Node):
    media, backups = prepared(node, "media"), prepared(node, "backups")
    node.container(
        "118",
        UNPRIVILEGED + f"features: fuse=1,nesting=1\nmp0: {media},mp=/srv/media\nmp1: /elsewhere,mp=/srv/x\n",
    )
    result = node.run(APPLY, "118", f"{media}:/srv/media", f"{backups}:/srv/backups")
    assert result.returncode == 0, result.stderr
    (_, set_call, *_) = node.calls()
    # fuse=1 kept, keyctl=1 added; the mount already there left alone, the new one on mp2.
    assert set_call == [
        "set",
        "118",
        "--features",
        "fuse=1,nesting=1,keyctl=1",
        "--mp2",
        f"{backups},mp=/srv/backups",
    ]
    assert node.run(APPLY, "118", f"{media}:/srv/media", f"{backups}:/srv/backups").returncode == 0
    assert node.calls() == [["config", "118"]]


def test_apply_features_with_only_the_features_and_a_stopped_container(node: Node):
    (node.state / "118.status").write_text("stopped")
    result = node.run(APPLY, "118")
    assert result.returncode == 0, result.stderr
    calls = node.calls()
    assert ["set", "118", "--features", "nesting=1,keyctl=1"] in calls
    assert not [c for c in calls if c[0] == "reboot"]
    assert "they apply when it starts (pct start 118)" in result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["999"],
            "no container 999 on this node (Configuration file 'nodes/pve/lxc/999.conf' does not exist)",
        ),
        (["11x"], "VMID must be a number from 100 up"),
        (["118", "{disks}/missing:/srv/x"], "does not exist on this node: run proxmox/host-prep.sh"),
        (["118", "{disks}/rootowned:/srv/x"], "belongs to the node's root"),
        (["118", "{disks}/prepared"], "give HOST_DIR:CONTAINER_PATH"),
        (["118", "{disks}/prepared:srv/x"], "both paths must be absolute"),
        (
            ["118", "{disks}/prepared:/srv/taken"],
            "/srv/taken is already mounted from elsewhere (mp0: /other)",
        ),
        (["119"], "container 119 is privileged"),
        ([], "usage: apply-features.sh VMID"),
    ],
)
def test_apply_features_refuses_bad_input_and_sets_nothing(node: Node, args, says):
    prepared(node, "prepared")
    (node.disks / "rootowned").mkdir()
    node.container("118", UNPRIVILEGED + "mp0: /other,mp=/srv/taken\n")
    node.container("119", UNPRIVILEGED.replace("unprivileged: 1", "unprivileged: 0"))
    before = node.config("118")
    node.calls()
    result = node.run(APPLY, *(a.format(disks=node.disks) for a in args))
    assert result.returncode == 1
    assert says in result.stderr
    assert not [c for c in node.calls() if c[0] in ("set", "reboot")]
    assert node.config("118") == before


def test_apply_features_wants_root_and_the_nodes_pct(node: Node):
    nobody = node.run(APPLY, "118", prefix=tuple(NOBODY))
    assert nobody.returncode == 1 and "only root@pam may set features and bind mounts" in nobody.stderr
    no_pct = node.run(APPLY, "118", path="/usr/bin:/bin")
    assert no_pct.returncode == 1 and "pct not found: run this on the Proxmox node's shell" in no_pct.stderr
    assert node.calls() == []
