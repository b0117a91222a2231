"""The PrometheusRule is docker/prometheus/alerts.yml, and the operator's schema accepts it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from deploy import crds, rules
from deploy.rules import RulesError

from .conftest import ROOT


def _committed() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(rules.OUTPUT.read_text())
    return loaded


def test_the_committed_rule_is_what_the_generator_writes() -> None:
    assert rules.OUTPUT.read_text() == rules.generate(rules.ALERTS.read_text()), (
        "deploy/components/monitoring/prometheusrule.yaml is stale: run python -m deploy.rules"
    )
    assert rules.main(["--check"]) == 0


def test_the_rule_groups_are_the_alerts_files() -> None:
    alerts = yaml.safe_load((ROOT / "docker" / "prometheus" / "alerts.yml").read_text())
    assert _committed()["spec"]["groups"] == alerts["groups"]
    for rule in alerts["groups"][0]["rules"]:
        assert rule["annotations"]["runbook_url"].startswith(
            "https://github.com/cachegw/cachegw/blob/main/RUNBOOK.md#"
        )


def test_an_edited_alerts_file_makes_the_committed_rule_stale() -> None:
    edited = rules.ALERTS.read_text().replace("for: 5m", "for: 6m", 1)
    assert rules.generate(edited) != rules.OUTPUT.read_text()


def test_an_alerts_file_with_more_than_groups_is_refused() -> None:
    with pytest.raises(RulesError, match="groups"):
        rules.generate("groups: []\nextra: 1\n")


def test_the_operator_schema_accepts_the_rule_and_refuses_a_broken_one() -> None:
    rule = _committed()
    assert crds.errors(rule) == []
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    assert any("expresion" in error for error in crds.errors(broken))
    wrong_version = {**rule, "apiVersion": "monitoring.coreos.com/v1beta1"}
    assert crds.errors(wrong_version) != []
