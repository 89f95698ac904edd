"""Alert rules (issue 5): promtool checks and unit tests, every alert tested both ways, and the
PrometheusRule shipped in the kustomize base kept identical to deploy/prometheus/rules.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "base" / "prometheusrule.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

EXPORTER = ROOT / "nativewatch" / "agent" / "exporter.py"
HTTP = ROOT / "nativewatch" / "agent" / "http.py"
# client_python's ProcessCollector, registered by make_registry with namespace "nativewatch_agent"
PROCESS_COLLECTOR = {f"nativewatch_agent_process_{n}" for n in (
    "virtual_memory_bytes", "resident_memory_bytes", "start_time_seconds", "cpu_seconds_total",
    "open_fds", "max_fds")}
# DESIGN.md's metric families: the exporter must have every one of them.
DESIGN_METRICS = {
    "nativewatch_container_memory_bytes", "nativewatch_container_memory_growth_bytes_per_second",
    "nativewatch_container_memory_working_set_bytes", "nativewatch_container_memory_limit_bytes",
    "nativewatch_container_oom_kills_total", "nativewatch_process_memory_bytes",
    "nativewatch_process_memory_growth_bytes_per_second", "nativewatch_jvm_nmt_committed_bytes",
    "nativewatch_native_site_outstanding_bytes",
}


def exported_metric_names() -> set[str]:
    """Every family the agent's exporter can emit, read from its source (counters get `_total`), so
    rules and dashboards are checked against what the agent really exposes."""
    from nativewatch.runtimes.registry import registered

    text = EXPORTER.read_text() + HTTP.read_text()
    names = set(PROCESS_COLLECTOR)
    for kind, name in re.findall(r'(Gauge|Counter)MetricFamily\(\s*"(nativewatch_[a-z0-9_]+)"', text):
        names.add(name + "_total" if kind == "Counter" and not name.endswith("_total") else name)
    # the runtimes' own gauge families, which the exporter renders from their declarations
    names |= {g.name + "_total" if g.counter else g.name for rt in registered() for g in rt.gauges}
    return names


needs_promtool = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool missing: run scripts/setup.sh")

HEADER = ("# Generated from deploy/prometheus/rules.yml (the commented source; edit that file and regenerate:\n"
          "# tests/test_deploy_rules.py fails while the two differ and prints the regenerated text).\n")


def render_prometheus_rule(groups: list) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    def str_block(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, str_block)
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "nativewatch", "labels": {"app.kubernetes.io/component": "alerts"}},
           "spec": {"groups": groups}}
    return HEADER + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1000)


def alerts(groups: list) -> list[dict]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_prometheus_rule_in_base_is_generated_from_rules_yml():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    expected = render_prometheus_rule(groups)
    shipped = PROMETHEUS_RULE.read_text()
    assert yaml.safe_load(shipped)["spec"]["groups"] == groups, (
        f"{PROMETHEUS_RULE} is out of date; replace it with:\n{expected}")
    assert shipped == expected


def test_exporter_has_designs_metric_families():
    assert exported_metric_names() >= DESIGN_METRICS, DESIGN_METRICS - exported_metric_names()


def test_rules_use_only_metric_names_the_agent_exports():
    known = exported_metric_names() | {"up"}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for g in groups:
        for rule in g["rules"]:
            tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"', "", rule["expr"])))
            names = {t for t in tokens if t.startswith("nativewatch") or t == "up"}
            assert names, rule
            unknown = names - known - recorded
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"
    for name in recorded:  # Prometheus' level:metric:operations naming for recording rules
        assert re.fullmatch(r"nativewatch:[a-z_]+:[a-z0-9_]+", name), name


def test_every_alert_has_a_severity_summary_and_description():
    for rule in alerts(yaml.safe_load(RULES.read_text())["groups"]):
        assert rule["labels"]["severity"] in ("warning", "critical", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_silent():
    names = {r["alert"] for r in alerts(yaml.safe_load(RULES.read_text())["groups"])}
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert names == fires, f"alerts without a firing test: {names - fires}"
    assert names == silent, f"alerts without a must-not-fire test: {names - silent}"


@needs_promtool
def test_promtool_check_rules():
    for path in (RULES,):
        out = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"SUCCESS: {sum(len(g['rules']) for g in yaml.safe_load(path.read_text())['groups'])} rules" in out.stdout


@needs_promtool
def test_promtool_check_rules_on_the_prometheus_rule_spec(tmp_path):
    spec = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]
    extracted = tmp_path / "from-prometheusrule.yml"
    extracted.write_text(yaml.safe_dump(spec))
    out = subprocess.run([PROMTOOL, "check", "rules", str(extracted)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests_pass():
    """Includes: a healthy sawtooth never fires, a 5 MB/h leak (bare and under a sawtooth) fires."""
    out = subprocess.run([PROMTOOL, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_unit_tests_catch_a_floor_rule_that_ignores_the_floor(tmp_path):
    """The sawtooth case must be able to fail: the same tests against a rule fitted on the raw level
    over a short window (the naive rule) must report the sawtooth firing."""
    rules = RULES.read_text().replace(
        "deriv(nativewatch:container_memory_floor_bytes:min30m[2h]) * 3600 / 1e6 > 2",
        "deriv(nativewatch_container_memory_bytes[5m]) * 3600 / 1e6 > 2")
    rules = rules.replace(
        "deriv(nativewatch:container_memory_floor_bytes:min30m[6h]) * 3600 / 1e6 > 2",
        "deriv(nativewatch_container_memory_bytes[5m]) * 3600 / 1e6 > 2")
    rules = rules.replace("count_over_time(nativewatch:container_memory_floor_bytes:min30m[6h]) > 300",
                          "count_over_time(nativewatch_container_memory_bytes[6h]) > 300")
    rules = rules.replace("for: 30m", "for: 1m", 1)
    assert rules.count("nativewatch_container_memory_bytes[5m]") == 2
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "rules_test.yml").write_text(RULES_TEST.read_text())
    out = subprocess.run([PROMTOOL, "test", "rules", "rules_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert 'pod="cart-0"' in out.stdout + out.stderr  # the sawtooth fired
