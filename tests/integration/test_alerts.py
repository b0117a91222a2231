"""The alerting rules, their runbook and the Grafana dashboard, checked against the real gateway.

* ``promtool check rules`` and ``promtool test rules`` (Debian's prometheus package provides
  promtool; ``make test`` installs it);
* every alert has a severity, a summary, a description and a runbook_url whose anchor is a
  heading of RUNBOOK.md, and a unit test where it fires and one where it does not;
* the compose stack's Prometheus loads the rules from where compose.yaml mounts them, and
  Grafana's provisioning points at the dashboard and the data source it uses;
* every metric named in the rules and in the dashboard exists in the ``/metrics`` of a gateway
  running against the real local stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rules")

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
RULES_TEST = ROOT / "docker" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus.yml"
COMPOSE_FILE = ROOT / "compose.yaml"
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "cachegw.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
RUNBOOK = ROOT / "RUNBOOK.md"
TIMEOUT_S = 60
SEVERITIES = {"critical", "warning"}
# What Prometheus adds to every series it scrapes (the target's), not the gateway.
SCRAPE_LABELS = {"job", "instance"}

# Words of PromQL that look like metric names (functions are recognised by their parenthesis).
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "atan2", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar",
    "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
# The series names each kind of metric family exposes (as `# TYPE <family> <kind>` says).
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


# --- helpers -------------------------------------------------------------------------------


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe:
        return exe
    if os.geteuid() == 0:
        pytest.fail(
            "promtool is not installed: run make test, it installs Debian's prometheus package "
            "(which provides /usr/bin/promtool) before running the tests",
            pytrace=False,
        )
    pytest.skip(
        "promtool is not installed and, not being root, this run cannot install it (Debian "
        "package prometheus); make test installs it"
    )


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def _dashboard_panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows included."""
    panels: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in _dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _without_grafana_variables(expr: str) -> str:
    """A dashboard expression as plain PromQL ($__rate_interval and the like made concrete)."""
    return re.sub(r"\$\{?__\w+\}?", "1m", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label names, functions, keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.groups()
        if call is None and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def label_matchers(expr: str) -> dict[str, set[str]]:
    """metric name -> the label names its selectors match on, e.g. {"x_total": {"status"}}."""
    out: dict[str, set[str]] = {}
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}", expr):
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", match.group(2)))
        out.setdefault(match.group(1), set()).update(labels)
    return out


def exposed_series(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """From a /metrics page: every series name it can have, and the label names seen on each."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            if kind == "counter":
                family = family.removesuffix("_total")
            names.update(family + suffix for suffix in SERIES_SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            match = re.match(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})?", line)
            assert match, line
            names.add(match.group(1))
            found = set(re.findall(r'([A-Za-z_]\w*)="', match.group(2) or ""))
            labels.setdefault(match.group(1), set()).update(found)
    return names, labels


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes from a document's headings (fenced code is not headings)."""
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # links: their text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def _compose_mounts(service: str) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts: dict[str, str] = {}
    for volume in compose["services"][service].get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source.startswith("."):
            mounts[target] = source
    return mounts


# --- promtool ------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    proc = _run_promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}{proc.stderr}"


def test_rules_pass_their_unit_tests() -> None:
    proc = _run_promtool("test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}{proc.stderr}"


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())
    assert [Path(f).name for f in tests["rule_files"]] == [RULES.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert not names - fires, f"alerts with no test where they fire: {sorted(names - fires)}"
    assert not names - quiet, f"alerts with no test where they stay quiet: {sorted(names - quiet)}"
    assert not (fires | quiet) - names, (
        f"tests of unknown alerts: {sorted((fires | quiet) - names)}"
    )


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert exprs, "the dashboard has no queries"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"cachegw_dashboard:expr_{i}", "expr": _without_grafana_variables(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = _run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, (
        f"dashboard queries that are not PromQL:\n{proc.stdout}{proc.stderr}"
    )


def test_prometheus_loads_the_rules_compose_mounts(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    mounts = _compose_mounts("prometheus")
    assert mounts.get("/etc/prometheus/prometheus.yml") == "./docker/prometheus.yml"
    rule_files = config.get("rule_files") or []
    assert rule_files, "docker/prometheus.yml loads no rule files"
    local = []
    for path in rule_files:
        assert path in mounts, f"rule file {path} is not mounted into the prometheus service"
        local.append(str((ROOT / mounts[path]).resolve()))
    assert str(RULES.resolve()) in local
    # The same configuration, with the rule files where they are in the repository.
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump({**config, "rule_files": local}))
    proc = _run_promtool("check", "config", str(copy))
    assert proc.returncode == 0, f"promtool check config failed:\n{proc.stdout}{proc.stderr}"


# --- alerts and the runbook ----------------------------------------------------------------


def test_every_alert_says_what_and_how_bad() -> None:
    alerts = _alerts()
    assert alerts
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key} annotation"


def test_runbook_urls_point_at_runbook_sections() -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    bases = set()
    for rule in _alerts():
        url = urlsplit(rule["annotations"]["runbook_url"])
        assert url.scheme == "https", f"{rule['alert']}: {url.geturl()}"
        assert url.netloc, f"{rule['alert']}: {url.geturl()}"
        assert url.path.endswith("/RUNBOOK.md"), f"{rule['alert']}: not RUNBOOK.md: {url.path}"
        assert url.fragment in anchors, (
            f"{rule['alert']}: RUNBOOK.md has no heading for #{url.fragment} "
            f"(anchors: {sorted(anchors)})"
        )
        bases.add(url._replace(fragment="").geturl())
    assert len(bases) == 1, f"runbook URLs should share one base: {sorted(bases)}"


def test_runbook_internal_links_resolve() -> None:
    text = RUNBOOK.read_text()
    anchors = github_anchors(text)
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert not links - anchors, f"RUNBOOK.md links to missing sections: {sorted(links - anchors)}"


def test_github_anchors() -> None:
    doc = "# A runbook\n## HTTP 5xx ratio high\n```\n# not a heading\n```\n## Fallback: p95!\n## A"
    assert github_anchors(doc) == {"a-runbook", "http-5xx-ratio-high", "fallback-p95", "a"}
    assert github_anchors("## Same\n## Same") == {"same", "same-1"}


# --- Grafana -------------------------------------------------------------------------------


def test_grafana_provisioning_matches_compose_and_the_dashboard() -> None:
    mounts = _compose_mounts("grafana")
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    paths = {provider["options"]["path"] for provider in providers}
    assert all(mounts.get(path) == "./docker/grafana/dashboards" for path in paths), (
        f"dashboard provider paths {paths} are not where compose mounts docker/grafana/dashboards"
    )
    for sub in ("datasources", "dashboards"):
        target = f"/etc/grafana/provisioning/{sub}"
        assert mounts.get(target) == f"./docker/grafana/provisioning/{sub}", mounts
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {source["uid"] for source in sources if source["type"] == "prometheus"}
    assert any(s["url"] == "http://prometheus:9090" for s in sources)
    panels = _dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, f"panel {panel['title']!r}: data source"


# --- the names, against a real gateway -----------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = """
      histogram_quantile(0.95, sum by (job, le) (rate(a_seconds_bucket{le!="+Inf", x=~"a|b"}[5m])))
        > 0.05 and on (job) sum without (instance) (rate(b_total[$__rate_interval] offset 1h)) > 2e3
      or max_over_time(c_gauge[10m:1m]) unless d:recorded / ignoring(le) group_left e
    """
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c_gauge", "d:recorded", "e"}
    assert label_matchers('x_total{status="5xx", a!~"b"} / y') == {"x_total": {"status", "a"}}


async def test_names_in_rules_and_dashboard_exist_in_the_gateways_metrics(stack: Stack) -> None:
    async with gateway_client(settings_for(stack)) as (client, _):
        key = f"alerts-{uuid.uuid4().hex}"
        assert (await client.put(f"/v1/keys/{key}", content=b"v")).status_code in (200, 201)
        assert (await client.get(f"/v1/keys/{key}")).status_code == 200
        assert (await client.get(f"/v1/keys/{key}-missing")).status_code == 404
        no_cache = await client.get(f"/v1/keys/{key}", headers={"Cache-Control": "no-cache"})
        assert no_cache.status_code == 200
        response = await client.get("/metrics")
    assert response.status_code == 200
    names, labels = exposed_series(response.text)

    sources = {f"alert {rule['alert']}": rule["expr"] for rule in _alerts()}
    sources.update({f"dashboard query {i}": e for i, e in enumerate(_dashboard_exprs())})
    missing: list[str] = []
    wrong_labels: list[str] = []
    referenced: set[str] = set()
    for where, expr in sources.items():
        for name in sorted(metric_names(expr)):
            referenced.add(name)
            if name not in names:
                missing.append(f"{where}: {name}")
        for name, used in label_matchers(expr).items():
            unknown = used - labels.get(name, set()) - SCRAPE_LABELS
            if name in names and unknown:
                wrong_labels.append(f"{where}: {name} has no label {sorted(unknown)}")
    assert not missing, "metrics the gateway does not expose:\n" + "\n".join(missing)
    assert not wrong_labels, "labels the gateway does not put on them:\n" + "\n".join(wrong_labels)
    # The extraction found what it had to (the dashboards' first names and the rest).
    assert {
        "redis_fallback_routing_attempts_total",
        "redis_fallback_routing_latency_seconds_bucket",
        "redis_cluster_slots_ok",
        "redis_cluster_slots_assigned",
        "cachegw_slots_mapped",
        "cachegw_breaker_state",
        "cachegw_outbox_pending",
        "cachegw_outbox_oldest_age_seconds",
        "cachegw_invalidation_feed_lag_seconds_bucket",
        "cachegw_degraded_mode",
        "http_requests_total",
    } <= referenced


def test_the_dashboard_is_scoped_by_job_and_instance_and_links_its_runbook() -> None:
    """Variables job and instance (All by default) filter every query, so one dashboard serves
    a fleet; a top row of stats; every runbook link (the runbook variable, then a section of
    RUNBOOK.md that exists) resolves."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"]
        assert variables[name]["multi"]
        assert variables[name]["allValue"] == ".*"
    for expr in _dashboard_exprs():
        for name in metric_names(_without_grafana_variables(expr)):
            matchers = re.findall(rf"(?<![\w:]){re.escape(name)}\{{([^}}]*)\}}", expr)
            assert matchers, f"{name} is not filtered in {expr!r}"
            for matcher in matchers:
                assert 'job=~"$job"' in matcher, expr
                assert 'instance=~"$instance"' in matcher, expr
    panels = _dashboard_panels()
    top = [p for p in panels if p["type"] == "stat" and p["gridPos"]["y"] <= 1]
    assert {p["title"] for p in top} >= {"Requests/s", "5xx share", "p99 latency"}, top
    anchors = github_anchors(RUNBOOK.read_text())
    runbook = variables["runbook"]["query"]
    alert_base = {
        urlsplit(rule["annotations"]["runbook_url"])._replace(fragment="").geturl()
        for rule in _alerts()
    }
    assert alert_base == {runbook}, "the dashboard's runbook is where the alerts point"
    linked = [link for p in panels for link in p.get("links", [])]
    assert len(linked) >= 10
    for link in linked:
        base, _, fragment = link["url"].partition("#")
        assert base == "${runbook}", link
        assert fragment in anchors, f"RUNBOOK.md has no section #{fragment}"
