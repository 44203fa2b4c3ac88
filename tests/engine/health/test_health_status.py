"""Engine status documents and the replica's combined health. Documents are
written under the pids of real live processes (read_status drops dead ones)."""
import os
import subprocess
import sys
import time

import pytest

from l0.engine.health.policy import Level
from l0.engine.health.status import (OWNER, STALE_S, combine, make_status_dir, read_status, remove_status_dir,
                                     sweep_status_dirs, write_status)


@pytest.fixture
def pids():
    """Two live processes standing in for engines; killed by the test or at the end."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)]
    yield sorted(p.pid for p in procs), procs
    for p in procs:
        p.kill()
        p.wait()


def test_write_read_and_combine(tmp_path, pids):
    (a, b), _ = pids
    write_status(tmp_path, {"in_flight": 2, "stalled": False, "device": {"level": "healthy", "reasons": []}}, pid=a)
    write_status(tmp_path, {"in_flight": 0, "stalled": False,
                            "device": {"level": "degraded", "reasons": ["gpu 0: clocks slowed (hw_slowdown)"]}}, pid=b)
    docs = read_status(tmp_path)
    assert [d["pid"] for d in docs] == [a, b]
    h = combine(docs)
    assert h.level == Level.DEGRADED and h.reasons == (f"engine {b}: gpu 0: clocks slowed (hw_slowdown)",)
    assert h.to_dict()["status"] == "degraded"


def test_stalled_stale_and_missing_engines_fail(tmp_path):
    write_status(tmp_path, {"in_flight": 1, "stalled": True, "heartbeat_age_s": 12.5})  # this process
    h = combine(read_status(tmp_path))
    assert h.level == Level.FAILED and "stalled (12.5 s without a step)" in h.reasons[0]
    doc = {"pid": 2, "in_flight": 3, "published": 100.0}
    assert combine([doc], now=111.0).level == Level.FAILED           # frozen: not refreshed
    assert combine([dict(doc, in_flight=0)], now=111.0).level == Level.HEALTHY  # idle: fine
    # Not frozen before the engine's own stall timeout (its status thread can be starved
    # on a busy host while the decode loop moves), frozen after it.
    slow = dict(doc, stall_timeout_s=30.0)
    assert combine([slow], now=129.0).level == Level.HEALTHY
    h = combine([slow], now=131.0)
    assert h.level == Level.FAILED and h.reasons == ("engine 2: status not refreshed for 31.0 s with requests "
                                                     "in flight (frozen)",)
    assert combine([dict(doc, stall_timeout_s="?")], now=111.0).level == Level.FAILED   # unreadable: the floor
    assert combine([]).reasons == ("no engine has published its status",)


def test_unreadable_documents_are_skipped(tmp_path):
    (tmp_path / f"engine-{os.getpid()}.json").write_text("{half")
    (tmp_path / "engine-x.json").write_text("{}")
    assert read_status(tmp_path) == []
    write_status(tmp_path, {"in_flight": 0})
    assert [d["pid"] for d in read_status(tmp_path)] == [os.getpid()]


def test_a_dead_engines_document_is_dropped_not_inherited(tmp_path, pids):
    """A restarted server reusing the directory: the old engine's FAILED
    verdict (e.g. a latched Xid) must not fail the new one."""
    (dead, live), procs = pids
    failed = {"in_flight": 1, "stalled": False, "device": {"level": "failed", "reasons": ["gpu 0: Xid 79"]}}
    write_status(tmp_path, failed, pid=dead)
    write_status(tmp_path, {"in_flight": 0, "device": {"level": "healthy", "reasons": []}}, pid=live)
    assert combine(read_status(tmp_path)).level == Level.FAILED
    p = next(p for p in procs if p.pid == dead)
    p.kill()
    p.wait()
    assert [d["pid"] for d in read_status(tmp_path)] == [live]
    assert combine(read_status(tmp_path)).level == Level.HEALTHY
    assert not (tmp_path / f"engine-{dead}.json").exists()


# -- the directory's lifecycle: made owned by the server's pid, removed at its exit, swept after a SIGKILL --

def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_only_the_owner_removes_its_directory(tmp_path):
    mine = make_status_dir(tmp_path)
    assert (tmp_path / os.path.basename(mine) / OWNER).read_text() == str(os.getpid())
    theirs = make_status_dir(tmp_path)
    (tmp_path / os.path.basename(theirs) / OWNER).write_text(str(_dead_pid()))
    assert remove_status_dir(theirs) is False and os.path.isdir(theirs)
    assert remove_status_dir(mine) is True and not os.path.exists(mine)
    assert remove_status_dir(None) is False


def test_the_sweep_removes_the_directories_of_dead_servers_only(tmp_path):
    live = make_status_dir(tmp_path)                       # this process: alive
    killed = make_status_dir(tmp_path)                     # its server was SIGKILLed
    (tmp_path / os.path.basename(killed) / OWNER).write_text(str(_dead_pid()))
    old = tmp_path / "l0-status-legacy-old"                # no owner file: made by an older l0
    old.mkdir()
    (old / f"engine-{_dead_pid()}.json").write_text("{}")
    recent = tmp_path / "l0-status-legacy-recent"
    recent.mkdir()
    busy = tmp_path / "l0-status-legacy-busy"              # an engine of it still runs
    busy.mkdir()
    (busy / f"engine-{os.getpid()}.json").write_text("{}")
    other = tmp_path / "not-ours"
    other.mkdir()
    now = time.time() + 0.0
    past = now - STALE_S - 5
    for d in (old, busy):
        os.utime(d, (past, past))
    gone = sweep_status_dirs(tmp_path, now=now)
    assert sorted(p.name for p in gone) == sorted([os.path.basename(killed), old.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [os.path.basename(live), recent.name, busy.name, other.name])
