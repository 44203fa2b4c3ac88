"""Engine → HTTP-server status, across processes.

vLLM runs the serving loop (where L0's watchdog and telemetry live) in engine
processes and the HTTP routes in the API-server process. Each engine
publishes one small JSON document, ``engine-<pid>.json`` in a status
directory shared by both (``L0_STATUS_DIR``; ``l0 serve`` makes one per
server), rewritten atomically every ``interval`` by the watchdog thread. The
API server reads them all and combines them with :func:`combine`.

A document that stops being refreshed while its engine had requests in flight
means the engine process is frozen hard enough that even the watchdog thread
can't run (e.g. the GIL held in native code) — that is itself a stall.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l0.engine.health.policy import Level


def write_status(directory: str | os.PathLike, doc: dict[str, Any], pid: int | None = None) -> Path:
    """Atomically (re)write this engine's document; ``doc`` gains ``pid`` and
    ``published`` (wall clock)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pid = os.getpid() if pid is None else pid
    doc = dict(doc, pid=pid, published=time.time())
    path = d / f"engine-{pid}.json"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".engine-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


PREFIX = "l0-status-"
OWNER = "owner.pid"          # the pid of the server that made the directory (l0 serve execs vLLM: same pid)
STALE_S = 60.0               # a directory without an owner file is swept once this old and unused


def make_status_dir(root: str | os.PathLike | None = None) -> str:
    """A fresh status directory for the server this process becomes (under
    the temp directory), owned by this pid: :func:`remove_status_dir` at exit
    and :func:`sweep_status_dirs` after a SIGKILL remove it."""
    d = tempfile.mkdtemp(prefix=PREFIX, dir=root)
    (Path(d) / OWNER).write_text(str(os.getpid()))
    return d


def remove_status_dir(directory: str | os.PathLike | None) -> bool:
    """Remove ``directory`` when this process owns it (the server's exit; its
    engines have stopped by then). True when removed."""
    if not directory:
        return False
    d = Path(directory)
    try:
        if int((d / OWNER).read_text()) != os.getpid():
            return False
    except (OSError, ValueError):
        return False
    shutil.rmtree(d, ignore_errors=True)
    return not d.exists()


def sweep_status_dirs(root: str | os.PathLike | None = None, now: float | None = None) -> list[Path]:
    """Remove the status directories of servers that are gone (SIGKILL, OOM:
    no exit handler ran): those whose owner pid is dead, and those without an
    owner file (made before it existed) whose engines are all dead and which
    nothing touched for :data:`STALE_S`. Returns what was removed."""
    base = Path(root or tempfile.gettempdir())
    now = time.time() if now is None else now
    gone = []
    for d in base.glob(PREFIX + "*"):
        try:
            if not d.is_dir():
                continue
            owner = d / OWNER
            if owner.is_file():
                dead = not _alive(int(owner.read_text()))
            else:
                pids = [int(p.stem.split("-", 1)[1]) for p in d.glob("engine-*.json")]
                dead = not any(_alive(pid) for pid in pids) and now - d.stat().st_mtime > STALE_S
        except (OSError, ValueError):
            continue
        if dead:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def read_status(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every live engine's document in the directory. Unreadable ones are
    skipped (a writer may be replacing it this instant); documents of engine
    processes that no longer exist are removed — a restarted server reusing
    the directory must not inherit a dead engine's verdict (the directory is
    per host, so pids are this host's)."""
    out = []
    for path in sorted(Path(directory).glob("engine-*.json")):
        try:
            pid = int(path.stem.split("-", 1)[1])
        except ValueError:
            continue
        if not _alive(pid):
            path.unlink(missing_ok=True)
            continue
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


@dataclass(frozen=True)
class ReplicaHealth:
    level: Level
    reasons: tuple[str, ...]
    engines: tuple[dict, ...]

    def to_dict(self) -> dict:
        return {"status": self.level.name.lower(), "reasons": list(self.reasons), "engines": list(self.engines)}


def _number(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def combine(docs: list[dict[str, Any]], now: float | None = None, stale_after_s: float = 10.0,
            require_engine: bool = True) -> ReplicaHealth:
    """One health for the replica. Each doc may carry ``device`` ({level,
    reasons}), ``stalled`` (bool), ``in_flight`` (int), ``published`` and
    ``stall_timeout_s``. An engine with requests in flight whose document is
    older than both ``stale_after_s`` and its own ``stall_timeout_s`` is
    frozen."""
    now = time.time() if now is None else now
    level, reasons = Level.HEALTHY, []
    if not docs and require_engine:
        return ReplicaHealth(Level.FAILED, ("no engine has published its status",), ())
    for d in docs:
        who = f"engine {d.get('pid', '?')}"
        age = now - float(d.get("published", 0.0))
        if d.get("stalled"):
            level = Level.FAILED
            reasons.append(f"{who}: decode loop stalled ({d.get('heartbeat_age_s', 0):.1f} s without a step)")
        # Frozen: the document stopped refreshing for longer than the engine's own stall
        # timeout. Not sooner: the status thread shares the engine's cores, and on a busy
        # host (a neighbour loading a model: seen in the wrap tests) it can miss 10 s of ticks while
        # the decode loop is still moving; the watchdog would not call that a stall either.
        elif age > max(stale_after_s, _number(d.get("stall_timeout_s"))) and d.get("in_flight", 0) > 0:
            level = Level.FAILED
            reasons.append(f"{who}: status not refreshed for {age:.1f} s with requests in flight (frozen)")
        dev = d.get("device") or {}
        dev_level = Level.parse(dev.get("level", "healthy"), f"{who} device level")
        if dev_level > Level.HEALTHY:
            level = max(level, dev_level)
            reasons += [f"{who}: {r}" for r in dev.get("reasons", [])]
    return ReplicaHealth(level, tuple(reasons), tuple(docs))
