"""deploy/prometheus/tokmesh-alerts.yaml: valid rule groups over metrics a node exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tokmesh.telemetry.metrics import EXTRA_METRIC_NAMES, METRIC_NAMES

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "tokmesh-alerts.yaml"
#: Every alert the operations spec asks for.
EXPECTED = {
    "WALWriteFailure", "ClusterSplitBrain", "HighAuthFailureRate", "DiskSpaceLow",
    "CriticalSessionRevokePropagationLag", "HighTokenValidateLatency", "HighResourceUsage",
    "DataSkew", "HighSessionRevokePropagationLag", "EvenNodeCount", "ReplicationLagHigh",
    "UnderReplicated",
}  # fmt: skip


def _rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_is_there_once_with_a_severity() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert sorted(names) == sorted(EXPECTED)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning")  # type: ignore[index]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"]))


def test_every_tokmesh_metric_named_is_exported() -> None:
    known = set(METRIC_NAMES) | set(EXTRA_METRIC_NAMES)
    for rule in _rules():
        for name in re.findall(r"tokmesh_[a-z_]+", str(rule["expr"])):
            base = re.sub(r"_(bucket|sum|count)$", "", name)  # a histogram's series
            assert name in known or base in known, f"{rule['alert']}: {name} is not exported"
