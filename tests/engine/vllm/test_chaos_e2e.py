"""The chaos run of bench/chaos.py, CI-sized: three `l0 serve` replicas sharing
one real Redis, concurrent greedy streams through ``l0.wrap(AsyncOpenAI)``,
and one fault of each kind in turn (SIGKILL + restart, SIGSTOP/SIGCONT of an
engine, a scripted Xid 79, a Redis restart, a Redis outage, a proxy cutting
every stream). Every stream must complete token for token as the
uninterrupted reference run, nothing lost, nothing duplicated.
(The 100-fault run: ``.venv/bin/python bench/chaos.py``.)
"""
from __future__ import annotations

import pytest

from services import load_bench

pytestmark = [pytest.mark.vllm, pytest.mark.redis]


def test_one_fault_of_each_kind_loses_nothing(tmp_path):
    pytest.importorskip("openai")
    doc = load_bench("chaos").main(["--faults", "6", "--cycle", "--concurrency", "6", "--prompts", "6",
                                    "--max-tokens", "48", "--interval-s", "4", "--freeze-s", "9", "--outage-s", "6",
                                    "--inter-token-s", "6", "--out", str(tmp_path / "chaos.json")])
    total = doc["total"]
    assert [f["kind"] for f in doc["faults"]] == ["kill", "freeze", "xid", "redis_restart", "redis_outage", "cut"]
    assert total["streams_started"] > 0
    assert total["completed"] == total["identical"] == total["streams_started"], doc["not_identical"]
    assert total["lost_tokens"] == total["duplicated_tokens"] == total["errors_surfaced"] == 0
    assert total["streams_with_a_failure"] > 0  # the faults did reach streams
    # Every replica that was killed or failed went down and came back.
    for i in {f["replica"] for f in doc["faults"] if f["kind"] in ("kill", "xid")}:
        states = [s for _, s in doc["health_timeline"][str(i)]]
        assert states[-1] == "healthy" and ("down" in states or "failed" in states)
