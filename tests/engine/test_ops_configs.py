"""The operator files in configs/ parse, and name only series L0 exports.

Schema checks (promtool is not on this machine): alert rules have the fields
Prometheus requires, the Grafana dashboard is valid JSON with targets, the
Kubernetes manifests probe /l0/health, and every l0_* name referenced exists
in l0.engine.health.metrics.SERIES.
"""
import json
import re
from pathlib import Path

import yaml

from l0.engine.health.metrics import SERIES

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bl0_[a-z_]+\b")


def _names(text: str) -> set[str]:
    return set(NAME.findall(text))


def test_alert_rules():
    doc = yaml.safe_load((ROOT / "configs/prometheus/l0-alerts.yaml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert rules and all({"alert", "expr", "labels", "annotations"} <= set(r) for r in rules)
    assert all(r["labels"]["severity"] in ("critical", "warning", "info") for r in rules)
    used = set().union(*(_names(r["expr"]) for r in rules))
    assert used and used <= set(SERIES), used - set(SERIES)


def test_grafana_dashboard():
    dash = json.loads((ROOT / "configs/grafana/l0-dashboard.json").read_text())
    assert dash["uid"] == "l0-overview" and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set().union(*(_names(e) for e in exprs))
    assert used <= set(SERIES), used - set(SERIES)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_kubernetes_example():
    docs = list(yaml.safe_load_all((ROOT / "configs/kubernetes/l0-vllm.yaml").read_text()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/l0/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "preStop" in c["lifecycle"]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/l0/metrics"
    assert c["command"][:2] == ["l0", "serve"]
