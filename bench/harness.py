"""What the long benches (chaos.py, soak.py) share: a run's clock and log
lines, and a server's process tree."""
from __future__ import annotations

import time


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
