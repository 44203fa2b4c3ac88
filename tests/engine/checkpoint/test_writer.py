"""The background writer: never blocks the caller, coalesces, survives outages."""
from __future__ import annotations

import logging
import threading

import pytest

from l0.contract import ModelIdentity, Record
from l0.engine.checkpoint import open_store
from l0.engine.checkpoint.writer import CheckpointWriter
from services import RedisProcess

MODEL = ModelIdentity("m", "t")


def rec(key, n, finished=False):
    return Record(key=key, model=MODEL, prompt_ids=(1,), output_ids=tuple(range(n)), finished=finished)


class GatedStore:
    """A real SQLite store whose writes wait on a gate (the test's seam for a
    slow store)."""

    def __init__(self, inner):
        self.inner, self.url = inner, inner.url
        self.gate = threading.Event()
        self.entered = threading.Event()

    def get(self, key):
        return self.inner.get(key)

    def put_many(self, records):
        self.entered.set()
        self.gate.wait()
        self.inner.put_many(records)

    def delete(self, key):
        self.inner.delete(key)

    def close(self):
        self.inner.close()


def test_writes_and_deletes(tmp_path):
    store = open_store(f"sqlite://{tmp_path}/w.db", 60)
    w = CheckpointWriter(lambda: store)
    w.offer(rec("a", 3))
    w.offer(rec("b", 1))
    assert w.flush()
    assert store.get("a").output_ids == (0, 1, 2) and store.get("b").output_ids == (0,)
    w.delete("a")
    assert w.flush()
    assert store.get("a") is None
    assert (w.lag, w.failures) == (0, 0)
    w.close()


def test_slow_store_never_blocks_and_snapshots_coalesce(tmp_path):
    store = GatedStore(open_store(f"sqlite://{tmp_path}/s.db", 60))
    w = CheckpointWriter(lambda: store)
    w.offer(rec("a", 1))
    assert store.entered.wait(5)  # the writer thread is now stuck in put_many
    for n in range(2, 202):  # the serving loop keeps offering; none of these wait
        w.offer(rec("a", n))
        w.offer(rec("b", n))
    assert w.coalesced == 2 * 200 - 2
    assert w.lag == 401
    store.gate.set()
    assert w.flush()
    assert store.get("a").output_ids == tuple(range(201)) and store.get("b").output_ids == tuple(range(201))
    assert w.lag == 0
    w.close()


def test_bounded_pending_drops_finished_first(tmp_path):
    store = GatedStore(open_store(f"sqlite://{tmp_path}/d.db", 60))
    w = CheckpointWriter(lambda: store, max_pending=3)
    w.offer(rec("x", 1))
    assert store.entered.wait(5)
    w.offer(rec("a", 1))
    w.offer(rec("f", 1, finished=True))
    w.offer(rec("b", 1))
    w.offer(rec("c", 1))  # full: the finished one goes first
    assert w.dropped == 1
    store.gate.set()
    assert w.flush()
    assert store.get("f") is None and all(store.get(k) for k in "xabc")
    w.close()


@pytest.mark.redis
def test_redis_outage_serving_continues_then_writes_resume(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="l0.engine.checkpoint")
    redis = RedisProcess(tmp_path).start()
    store = open_store(redis.url, 60)
    w = CheckpointWriter(lambda: store, backoff_s=(0.05, 0.2))
    w.offer(rec("a", 1))
    assert w.flush()
    redis.stop()
    for n in range(2, 50):
        w.offer(rec("a", n))
    # the writer fails, keeps the newest snapshot, and says so once
    for _ in range(100):
        if w.failures >= 2:
            break
        threading.Event().wait(0.05)
    assert w.failures >= 2 and w.lag == 48
    warnings = [r for r in caplog.records if "checkpoint store unavailable" in r.getMessage()]
    assert len(warnings) == 1
    redis.start()  # same port
    assert w.flush(30)
    assert store.get("a").output_ids == tuple(range(49)) and w.lag == 0
    w.close()
    redis.stop()
