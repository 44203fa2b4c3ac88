"""L0's own threads yield the CPU to the engine's.

The engine's hot threads (the decode loop, torch's intra-op pool) and L0's
background threads (checkpoint writer and finisher, health monitor) share
the host's cores; where they are oversubscribed (a CPU engine, a host with
few cores per GPU) every slice L0 takes is taken from a decode step. A
background thread calls :func:`lower_priority` once as it starts: on Linux
a thread is a task with its own nice value, so the scheduler prefers the
engine's threads while L0's still run whenever a core is free. (The health
monitor keeps its priority: it is the watchdog, and its status document must
stay fresh on a busy host.)
"""
from __future__ import annotations

import os
import threading

BACKGROUND_NICE = 10


def lower_priority(nice: int = BACKGROUND_NICE) -> bool:
    """Raise the calling thread's nice value by ``nice``; False where the OS
    has no per-thread priority (or refuses): the thread runs as before."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
        return True
    except (AttributeError, OSError):
        return False
