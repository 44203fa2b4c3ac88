"""What the long benches (chaos.py, soak.py) share: a run's clock and log
lines, a server's process tree, and where a result goes."""
from __future__ import annotations

import json
import time
from pathlib import Path


class Run:
    """Seconds since the run began (``now``) and log lines stamped with them."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def log(self, msg: str) -> None:
        print(f"[{self.now():8.2f}] {msg}", flush=True)


def proc_tree(pid: int) -> list:
    """``pid``'s process and all its descendants (psutil), [] once it is gone."""
    import psutil
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def write_result(doc: dict, out: str | Path) -> Path:
    """Writes ``doc`` as indented JSON to ``out`` (its folder made) and says so."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", out)
    return out
