"""The load bench (bench/bench_load.py), CI-sized: one `l0 serve` of the tiny
model with checkpoints on a real Redis, L0 off / observe / stop per request
at concurrency 1 and 64. Behaviour only (speed is the bench's): every
request decodes all its tokens in every mode, and the checkpoint writer has
caught up one second after each run, nothing dropped.
(The full run: ``.venv/bin/python bench/bench_load.py``.)
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.redis]

BENCH = Path(__file__).resolve().parents[3] / "bench" / "bench_load.py"


def test_every_mode_decodes_everything_and_the_writer_keeps_up(tmp_path):
    spec = importlib.util.spec_from_file_location("l0_bench_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "load.json"
    mod.main(["--models", "tiny", "--stores", "redis", "--tiny-levels", "1,64", "--rounds", "1", "--parts", "a",
              "--max-tokens", "24", "--out", str(out)])
    rows = json.loads(out.read_text())["a"]
    assert [r["concurrency"] for r in rows] == [1, 64]
    for row in rows:
        assert row["all_complete"], row
        assert row["ckpt_dropped"] == 0
        for mode in ("off", "observe", "stop"):
            got = row["rounds"][0][mode]
            assert got["tokens"] == 24 * row["concurrency"]
            assert got["ckpt_lag_after_1s"] == 0, (mode, got)
