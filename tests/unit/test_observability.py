"""units/observability: the promtail, Prometheus and Grafana files agree with the daemons."""

from __future__ import annotations

import importlib
import itertools
import json
import re
import uuid
from pathlib import Path
from typing import Any

import prometheus_client
import yaml

from sudo_core.config import ApiSettings, GatewaySettings
from sudo_core.families import runtime_name

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "units" / "observability"
DATASOURCES = {"prometheus": "${prometheus}", "loki": "${loki}"}

# The modules whose metrics Prometheus scrapes (sudo-api's and sudo-gateway's).
SCRAPED_MODULES = (
    "sudo_api.app",
    "sudo_api.chat",
    "sudo_api.devices",
    "sudo_api.monitor",
    "sudo_api.watcher",
    "sudo_core.provisioner_client",
    "sudo_gateway.gateway",
)


def promtail() -> dict[str, Any]:
    return yaml.safe_load((OBSERVABILITY / "promtail.yaml").read_text())


def journal_job() -> dict[str, Any]:
    (job,) = promtail()["scrape_configs"]
    return job


def dashboard() -> dict[str, Any]:
    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
        return dict(pairs)

    text = (OBSERVABILITY / "grafana-dashboard.json").read_text()
    return json.loads(text, object_pairs_hook=no_duplicate_keys)


def targets(kind: str) -> list[dict[str, Any]]:
    return [t for p in dashboard()["panels"] for t in p["targets"] if t["datasource"]["type"] == kind]


def unit_files() -> set[str]:
    return {p.name for p in (ROOT / "units").iterdir() if p.is_file()}


def sudo_services() -> set[str]:
    return {n for n in unit_files() if n.startswith("sudo-") and n.endswith(".service")}


def registered_metrics() -> set[str]:
    """Every series name the scraped daemons can expose, with the suffixes Prometheus adds."""
    for module in SCRAPED_MODULES:
        importlib.import_module(module)  # defining the metrics registers them
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in prometheus_client.REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_the_yaml_files_parse():
    job = journal_job()
    assert job["journal"]["path"] == "/var/log/journal"
    assert job["journal"]["labels"] == {"job": "systemd-journal"}
    assert promtail()["clients"][0]["url"] == "http://127.0.0.1:3100/loki/api/v1/push"
    assert promtail()["positions"]["filename"].startswith("/var/lib/promtail/")
    prometheus = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    assert prometheus["global"]["scrape_interval"] == "15s"


def alert_rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())["groups"]
    return group["rules"]


def test_prometheus_scrapes_the_default_metrics_listeners_and_not_the_provisioner():
    prometheus = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    # the alert rules, where sudo-observability installs them
    assert prometheus["rule_files"] == ["/usr/share/sudo/observability/alerts.yml"]
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    scraped = {name: [t for c in job["static_configs"] for t in c["targets"]] for name, job in jobs.items()}
    assert scraped == {"sudo-api": [ApiSettings().metrics], "sudo-gateway": [GatewaySettings().metrics]}
    # sudo_core.metrics serves GET /metrics, Prometheus's default path.
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())


def test_every_metric_in_the_dashboard_is_registered_by_a_scraped_daemon():
    registered = registered_metrics()
    used = set()
    for target in targets("prometheus"):
        names = set(re.findall(r"\bsudo_\w+", target["expr"]))
        assert names, f"no Sudo metric in {target['expr']}"
        used |= names
    assert not {n for n in used if n.startswith("sudo_provisioner_")}, "the provisioner is never scraped"
    assert used <= registered, f"not registered: {sorted(used - registered)}"


def test_every_alert_reads_metrics_of_the_scraped_daemons_and_says_what_to_do():
    registered = registered_metrics()
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        used = set(re.findall(r"\bsudo_\w+", rule["expr"]))
        assert used <= registered, f"{rule['alert']} reads what no daemon exposes: {used - registered}"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    # tests/e2e/alerts_test.yml has promtool test each of them
    tested = yaml.safe_load((ROOT / "tests" / "e2e" / "alerts_test.yml").read_text())["tests"]
    assert {t["alertname"] for case in tested for t in case["alert_rule_test"]} == set(names)


def test_no_metric_name_reaches_loki():
    for target in targets("loki"):
        assert not re.search(r"\bsudo_\w+", target["expr"]), target["expr"]


def test_every_unit_named_in_logql_and_promtail_exists():
    keep = next(r for r in journal_job()["relabel_configs"] if r.get("action") == "keep")
    assert keep["source_labels"] == ["__journal__systemd_unit"]
    # Relabel regexes are anchored at both ends, like fullmatch.
    for name in sorted(sudo_services() | {"docker.service"}):
        assert re.fullmatch(keep["regex"], name), name
    assert not re.fullmatch(keep["regex"], "ssh.service")

    for target in targets("loki"):
        expr = target["expr"]
        named = re.findall(r'unit="([^"]+)"', expr)
        patterns = re.findall(r'unit=~"([^"]+)"', expr)
        assert named or patterns, f"no unit selected in {expr}"
        assert set(named) <= unit_files(), expr
        for pattern in patterns:
            assert all(re.fullmatch(pattern, name) for name in sudo_services()), expr


def test_promtail_labels_only_fields_the_daemons_log():
    """A `__journal_<field>` label that is not journald's own must be a sudo_core.logs field."""
    source = "\n".join(p.read_text() for p in (ROOT / "daemons").rglob("*.py"))
    calls = re.findall(r"\bfields\(([^)]*)\)", source)
    logged = {name for call in calls for name in re.findall(r"(\w+)=", call)}
    journald_own = {"priority_keyword"}
    for rule in journal_job()["relabel_configs"]:
        for label in rule["source_labels"]:
            field = label.removeprefix("__journal_")
            if not field.startswith("_") and field not in journald_own:
                assert field in logged, label


def test_promtail_labels_a_runtime_name_with_its_family_id():
    relabels = journal_job()["relabel_configs"]
    (rule,) = [r for r in relabels if r["source_labels"] == ["__journal_runtime"]]
    family = uuid.uuid4()
    match = re.fullmatch(rule["regex"], runtime_name(family))
    assert match
    label = re.sub(r"\$(\d)", lambda m: match.group(int(m.group(1))), rule["replacement"])
    assert (rule["target_label"], label) == ("family", str(family))


def test_the_provisioner_lines_the_dashboard_parses_are_still_logged_that_way():
    source = (ROOT / "daemons" / "sudo_provisioner" / "runtimes.py").read_text()
    exprs = [t["expr"] for t in targets("loki") if 'unit="sudo-provisioner.service"' in t["expr"]]
    prefixes = {p for expr in exprs for p in re.findall(r'\|~ "\^([^"]+)"', expr)}
    assert prefixes >= {"spawned ", "evicted idle ", "stopped "}
    for prefix in prefixes:
        assert f'f"{prefix}' in source, prefix
    patterns = {p for expr in exprs for p in re.findall(r'\| pattern "([^"]+)"', expr)}
    assert patterns
    for pattern in patterns:
        # Each <field> of the pattern is one {expression} of the f-string that logs the line.
        parts = re.split(r"(<[^>]+>)", pattern)
        regex = "".join(r"\{[^}]+\}" if p.startswith("<") else re.escape(p) for p in parts)
        assert re.search(f'f"{regex}"', source), pattern


def test_the_dashboard_panels_use_the_two_datasource_variables():
    board = dashboard()
    assert board["schemaVersion"] == 39
    variables = {v["name"]: v["query"] for v in board["templating"]["list"] if v["type"] == "datasource"}
    assert variables == {"prometheus": "prometheus", "loki": "loki"}
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        datasource = panel["datasource"]
        assert DATASOURCES.get(datasource["type"]) == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_dashboard_panels_do_not_overlap():
    def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
        g = panel["gridPos"]
        return set(itertools.product(range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])))

    for a, b in itertools.combinations(dashboard()["panels"], 2):
        assert not cells(a) & cells(b), (a["title"], b["title"])
        assert cells(a) <= set(itertools.product(range(24), range(1000))), a["title"]


def test_the_package_installs_every_file():
    files = {p.relative_to(ROOT).as_posix() for p in OBSERVABILITY.iterdir()}
    lines = (ROOT / "debian" / "sudo-observability.install").read_text().splitlines()
    install = dict(line.split() for line in lines)
    docs = set((ROOT / "debian" / "sudo-observability.docs").read_text().split())
    assert docs == {"units/observability/README.md"}
    assert set(install) | docs == files
    assert not set(install) & docs
    assert set(install.values()) == {"usr/share/sudo/observability/"}
