"""Engine status documents and the replica's combined health."""
from l0.health.policy import Level
from l0.health.status import combine, read_status, write_status


def test_write_read_and_combine(tmp_path):
    write_status(tmp_path, {"in_flight": 2, "stalled": False, "device": {"level": "healthy", "reasons": []}}, pid=11)
    write_status(tmp_path, {"in_flight": 0, "stalled": False,
                            "device": {"level": "degraded", "reasons": ["gpu 0: clocks slowed (hw_slowdown)"]}}, pid=12)
    docs = read_status(tmp_path)
    assert [d["pid"] for d in docs] == [11, 12]
    h = combine(docs)
    assert h.level == Level.DEGRADED and h.reasons == ("engine 12: gpu 0: clocks slowed (hw_slowdown)",)
    assert h.to_dict()["status"] == "degraded"


def test_stalled_stale_and_missing_engines_fail(tmp_path):
    write_status(tmp_path, {"in_flight": 1, "stalled": True, "heartbeat_age_s": 12.5}, pid=1)
    h = combine(read_status(tmp_path))
    assert h.level == Level.FAILED and "stalled (12.5 s without a step)" in h.reasons[0]
    doc = {"pid": 2, "in_flight": 3, "published": 100.0}
    assert combine([doc], now=111.0).level == Level.FAILED           # frozen: not refreshed
    assert combine([dict(doc, in_flight=0)], now=111.0).level == Level.HEALTHY  # idle: fine
    assert combine([]).reasons == ("no engine has published its status",)


def test_unreadable_documents_are_skipped(tmp_path):
    (tmp_path / "engine-9.json").write_text("{half")
    write_status(tmp_path, {"in_flight": 0}, pid=10)
    assert [d["pid"] for d in read_status(tmp_path)] == [10]
