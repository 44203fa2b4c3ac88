"""The soak of bench/soak.py, CI-sized: one `l0 serve` and its SQLite store
under steady load (greedy keyed streams through ``l0.wrap``) for two minutes
with a fault every 10 s (proxy cut, client cancel, the database locked by
another process, the engine frozen), and checks what a long run needs:
every stream complete and identical, the writer's lag back after every
store fault and 0 at the end, the store bounded by its TTL, file
descriptors flat, nothing left in the server's temp directory after it
stops. (The 30-minute run, RSS included: ``.venv/bin/python bench/soak.py``,
results in bench/results/soak.json.)
"""
from __future__ import annotations

import pytest

from services import load_bench

pytestmark = pytest.mark.vllm


def test_a_short_soak_keeps_the_store_bounded_the_lag_recovering_and_the_temp_dir_clean(tmp_path):
    pytest.importorskip("openai")
    pytest.importorskip("psutil")
    doc = load_bench("soak").main(["--minutes", "2", "--warmup-s", "30", "--fault-every-s", "10",
                                   "--sample-s", "2", "--ttl-s", "20", "--lock-s", "3", "--freeze-s", "2",
                                   "--concurrency", "6", "--max-tokens", "48", "--out", str(tmp_path / "soak.json")])
    v, streams, writer = doc["verdict"], doc["streams"], doc["writer"]
    assert [f["kind"] for f in doc["faults"]][:4] == ["cut", "cancel", "store_lock", "freeze"]
    assert streams["errors"] == 0, streams["error_examples"]
    assert streams["completed"] == streams["identical"] > 0 and streams["cancelled"] > 0
    # the database was locked: writes waited, the lag grew past its level before, and came back after each
    locks = [f for f in doc["faults"] if f["kind"] == "store_lock"]
    assert locks and all(f["lag_peak"] > f["lag_before"] and f["lag_recovered_s"] is not None for f in locks)
    assert writer["dropped_total"] == 0 and writer["lag_end"] == 0
    st = doc["store"]
    assert v["store_bounded"], (f"rows span {st['rows_span_s_max']} s of writes (bound {st['rows_span_s_bound']}), "
                                f"WAL {st['wal_bytes_max']} B (cap {st['wal_bytes_cap']})", st)
    assert v["fds_flat"], doc["processes"]
    assert doc["temp_dir_leftovers"] == []     # the status directory and vLLM's temp files went with the server
