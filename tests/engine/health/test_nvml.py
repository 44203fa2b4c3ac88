"""The real NVML source on a real GPU (markers ``gpu`` and ``nvml``; never
required in CI, whose machines have no GPU). Reads every field on every local
card, waits once for Xid events, and commits the reading under
``bench/results/nvml_reading_<card>.json``."""
from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.nvml]

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"
# Fields every data-centre card supports; the rest may be NotSupported (None) on some generations.
ALWAYS = ("uuid", "name", "temperature_c", "power_w", "memory_used_bytes", "memory_total_bytes")


def test_nvml_source_reads_every_field_without_error():
    from l0.engine.health.assess import DeviceHealth
    from l0.engine.health.policy import load_policy
    from l0.engine.health.telemetry import NvmlSource

    src = NvmlSource()
    try:
        readings = src.read()
        events = src.wait_events(0.2)
        t0 = time.perf_counter()
        for _ in range(20):
            src.read()
        per_read_ms = (time.perf_counter() - t0) / 20 * 1e3
    finally:
        src.close()
    assert readings, "NVML reports no GPU"
    for r in readings:
        assert r.errors == (), r.errors
        assert not r.lost
        for name in ALWAYS:
            assert getattr(r, name) not in (None, ""), name
    assert all(e.xid > 0 for e in events)
    verdict = DeviceHealth(load_policy()).assess(readings, time.monotonic())
    card = re.sub(r"[^A-Za-z0-9]+", "-", readings[0].name).strip("-").lower()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"nvml_reading_{card}.json").write_text(json.dumps({
        "host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "readings": [r.to_dict() for r in readings], "xid_events_waited": [e.__dict__ for e in events],
        "unsupported_fields": sorted({k for r in readings for k, v in r.to_dict().items() if v is None}),
        "assessment": verdict.to_dict(), "read_ms_per_reading_all_gpus": per_read_ms}, indent=1) + "\n")
