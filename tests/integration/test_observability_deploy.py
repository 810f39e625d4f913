"""The observability files in deploy/: alert rules, their unit tests, the dashboard, the runbook.

promtool (Debian package `prometheus`) checks and unit-tests the rules; everything else is read
here and compared with what `Metrics` really exports, so a renamed metric breaks this test
rather than a dashboard panel or an alert that silently stops matching.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from consumer.metrics import PREFIX, Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yaml"
DASHBOARD = DEPLOY / "grafana" / "core-plays-consumer.json"
RUNBOOK = DEPLOY / "RUNBOOK.md"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
RUNBOOK_URL = re.compile(r"^https://\S+/deploy/RUNBOOK\.md#(runbook-[a-z0-9-]+)$")
METRIC_NAME = re.compile(rf"\b{PREFIX}[a-z0-9_]*[a-z0-9]\b")
# A PromQL label matcher: name, operator, quoted value.
LABEL_MATCHER = re.compile(r'\b([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
TARGET_LABELS = frozenset({"instance", "pod", "job", "namespace", "node", "container"})
# Grafana's interval macros, replaced by a literal duration so promtool can parse the query.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")


# --------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: run the suite with scripts/test.sh, which extracts it "
            "from Debian's prometheus package (or apt-get install prometheus)"
        )
    return path


def _run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _exported_series_names() -> set[str]:
    """Every series name a fresh `Metrics` exposes, histogram series included.

    Taken from the `# TYPE` lines, because a labelled metric with no children yet exposes
    no samples at all; a histogram stands for its `_bucket`, `_sum` and `_count` series.
    """
    exposition = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    names: set[str] = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SERIES)
    return names


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _query_panels() -> list[dict[str, Any]]:
    return [p for p in _panels(_dashboard()["panels"]) if p["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _query_panels() for t in p["targets"]]


def _walk(node: object, path: str = "$") -> Iterator[tuple[str, str, object]]:
    """Yield (path, key, value) for every key of every mapping in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _rule_tests() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_TEST.read_text())
    return [case for test in document["tests"] for case in test.get("alert_rule_test", [])]


# -------------------------------------------------------------------------------- promtool


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    result = _run_promtool(promtool, "check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass_promtool(promtool: str) -> None:
    result = _run_promtool(promtool, "test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # Each query becomes a recording rule, which `promtool check rules` parses.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": GRAFANA_INTERVALS.sub("5m", expr)}
        for i, expr in enumerate(_dashboard_exprs())
    ]
    rule_file = tmp_path / "dashboard_queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run_promtool(promtool, "check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- metric names


@pytest.mark.parametrize("path", [DASHBOARD, ALERTS, ALERTS_TEST, RUNBOOK], ids=lambda p: p.name)
def test_every_metric_name_used_is_exported(path: Path) -> None:
    used = set(METRIC_NAME.findall(path.read_text()))
    assert used, f"no {PREFIX}* metric found in {path.name}"
    assert used - _exported_series_names() == set()


def test_every_exported_metric_is_on_the_dashboard() -> None:
    on_dashboard = set(METRIC_NAME.findall(" ".join(_dashboard_exprs())))
    shown = {name.removesuffix(suffix) for name in on_dashboard for suffix in HISTOGRAM_SERIES}
    shown |= on_dashboard
    exported = {
        name
        for name in _exported_series_names()
        if not name.endswith(("_created", *HISTOGRAM_SERIES))
    }
    assert exported - shown == set()


# ------------------------------------------------------------------------------- dashboard


def test_dashboard_is_an_importable_current_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panel_ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(panel_ids) == len(set(panel_ids))


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    panels = _query_panels()
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for query in panel["targets"]:
            assert query["datasource"] == DATASOURCE_REF, panel["title"]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, variable["name"]


def test_dashboard_hard_codes_no_datasource_uid_or_target() -> None:
    for path, key, value in _walk(_dashboard()):
        if key == "datasource":
            assert value == DATASOURCE_REF, path
        if key == "uid" and path != "$":  # the dashboard's own uid keeps its URL stable
            assert value == "${datasource}", path
    for expr in _dashboard_exprs():
        for label, _, value in LABEL_MATCHER.findall(expr):
            if label in TARGET_LABELS:
                assert value.startswith("$"), f"{label}={value!r} hard-coded in {expr}"


# ---------------------------------------------------------------------------------- alerts


def test_every_alert_has_annotations_and_a_severity() -> None:
    rules = _alert_rules()
    assert rules
    for rule in rules:
        annotations = rule.get("annotations", {})
        for key in REQUIRED_ANNOTATIONS:
            assert str(annotations.get(key, "")).strip(), f"{rule['alert']}: no {key}"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, rule["alert"]


def test_every_runbook_url_points_at_its_runbook_section() -> None:
    runbook = RUNBOOK.read_text()
    headings = set(re.findall(r"^## (\S+)$", runbook, flags=re.MULTILINE))
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', runbook))
    for rule in _alert_rules():
        name = rule["alert"]
        match = RUNBOOK_URL.match(rule["annotations"]["runbook_url"])
        assert match, f"{name}: runbook_url is not a deploy/RUNBOOK.md#runbook-… link"
        assert match.group(1) == f"runbook-{name.lower()}", name
        assert match.group(1) in anchors, f"{name}: no anchor in {RUNBOOK.name}"
        assert name in headings, f"{name}: no section in {RUNBOOK.name}"


def test_every_alert_rule_is_unit_tested_firing_and_silent() -> None:
    cases = _rule_tests()
    for rule in _alert_rules():
        name = rule["alert"]
        fired = [
            alert["exp_labels"]
            for case in cases
            if case["alertname"] == name
            for alert in case.get("exp_alerts") or []
        ]
        silent = [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")]
        # Alerts split into several rules (one per severity or target) need a firing
        # test for each rule, recognised by the rule's own labels.
        labels = rule["labels"]
        assert any(labels.items() <= fired_labels.items() for fired_labels in fired), (
            f"{name} {labels}: no test where it fires"
        )
        assert silent, f"{name}: no test where it stays silent"
