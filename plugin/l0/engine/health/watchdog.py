"""Stuck-decode watchdog: the serving loop beats, a thread watches.

``Heartbeat.beat(in_flight)`` is what the serving loop calls once per step
(from ``apply()``: a clock read and three stores, no lock, no device sync).
:class:`Watchdog` runs in its own daemon thread: when requests are in flight
and no beat came for ``stall_timeout_s`` it declares a stall once per episode:
logs every thread's Python stack, runs the ``on_stall`` callbacks (flush
checkpoints, flip health, exit if configured), and clears when beats resume.

``stall_timeout_s`` adapts: ``max(floor_s, factor × p99 of recent step
intervals)`` (intervals while idle are not steps and are not counted).

A starved step is not a stall: the time the stepping thread spent runnable
but waiting for a CPU (Linux's ``/proc/self/task/<tid>/schedstat``, read by
the watchdog's thread, never on the decode path) is not counted against the
timeout. A decode loop that hangs (blocked on a lock, a dead peer, a device
that stopped answering) waits for nothing of the kind, and is declared at its
timeout as before; one that only shares its cores with a busier neighbour
(seen in CI: a 38 s step on a 2-core machine beside a 27-request batch) is
not, so its replica is not drained and its streams are not cut. Where the
file cannot be read, every second counts.

The clock is injectable, and :meth:`Watchdog.check` can be driven by hand, so
tests never sleep.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger("l0.watchdog")


class Heartbeat:
    """Written by the serving loop, read by the watchdog (plain attribute
    stores: atomic under the GIL, and a torn read only delays a verdict)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window: int = 512) -> None:
        self.clock = clock
        self.last = clock()
        self.in_flight = 0
        self._busy = 0  # in_flight at the last beat (step intervals are counted between busy beats)
        self._began: float | None = None  # when the current step began (between_steps), if the host says
        self.tid: int | None = None  # the stepping thread's native id (its CPU wait is read by the watchdog)
        self.steps = 0
        self.intervals: deque[float] = deque(maxlen=window)

    def beat(self, in_flight: int) -> None:
        now = self.clock()
        if self.tid is None:
            self.tid = threading.get_native_id()
        if self._began is not None:
            # The host marks step starts (V2): a step is its start to its
            # logits, so an idle gap before it is never counted as a step.
            if in_flight > 0:
                self.intervals.append(now - self._began)
            self._began = None
        elif self._busy > 0 and in_flight > 0:
            self.intervals.append(now - self.last)
        self.last = now
        self.in_flight = self._busy = in_flight
        self.steps += 1

    def idle(self) -> None:
        """No request in flight (the batch emptied): nothing can be stuck."""
        self.in_flight = self._busy = 0
        self.last = self.clock()

    def between_steps(self) -> None:
        """A step began and its logits have not reached L0 yet (vLLM's V2
        runner: ``apply_staged_writes``). Counted as not in flight: an
        engine step that only hands over finished requests looks the same,
        runs nothing and is followed by nothing (V2 has no removal hook), so
        counting it would call every idle engine stalled. A stall is still
        seen where decode loops hang: after the logits (the host waits on the
        sampled tokens). Step intervals are then measured from here to the
        step's logits, so an idle engine's gap is never taken for a step."""
        self.in_flight = 0
        self._began = self.clock()

    def p99_interval(self) -> float | None:
        if len(self.intervals) < 8:
            return None
        xs = sorted(self.intervals)
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def thread_stacks() -> str:
    """Every thread's Python stack, as one text block (``--- thread NAME
    (IDENT) ---`` and its frames, most recent call first). Read as
    :mod:`faulthandler` reads a crashed process's, without the interpreter's
    thread-list lock: ``sys._current_frames()`` takes that lock while holding
    the GIL, and on CPython 3.11 a thread being started at that moment left
    every thread of the process waiting on the GIL for good (seen: a test
    process hung in ``Thread.start`` while a watchdog reported a stall). A
    stall report must not hang the engine it reports on."""
    import faulthandler
    import re
    import tempfile

    names = {t.ident: t.name for t in threading.enumerate()}
    with tempfile.TemporaryFile(mode="w+") as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        text = f.read()

    def header(m: re.Match) -> str:
        ident = int(m.group(1), 16)
        return f"--- thread {names.get(ident, '?')} ({ident}) ---"
    return re.sub(r"^(?:Current thread|Thread) (0x[0-9a-f]+) \(most recent call first\):$", header, text,
                  flags=re.M)


def cpu_wait_s(tid: int) -> float | None:
    """Seconds thread ``tid`` of this process has spent runnable and waiting
    for a CPU since it started (the second field of Linux's
    ``/proc/self/task/<tid>/schedstat``, in ns); None where that is not
    readable (another OS, a kernel without scheduler statistics, a thread
    that has ended)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class Watchdog:
    """``check()`` gives one verdict: stalled when requests are in flight and
    the time since the last beat, less the time the stepping thread waited
    for a CPU meanwhile (``cpu_wait``: seconds so far for a thread id, or
    None), exceeds ``stall_timeout_s``. The wait is summed between checks,
    so the part before the first check after a beat counts as a stall's."""

    def __init__(self, heartbeat: Heartbeat, *, floor_s: float = 30.0, factor: float = 10.0,
                 fixed_timeout_s: float | None = None, check_every_s: float = 0.25,
                 on_stall: list[Callable[[float], None]] | None = None,
                 on_recover: list[Callable[[], None]] | None = None,
                 cpu_wait: Callable[[int], float | None] = cpu_wait_s) -> None:
        self.hb = heartbeat
        self.cpu_wait = cpu_wait
        self.starved_s = 0.0   # of the time since the last beat, what the stepping thread waited for a CPU
        self._mark: float | None = None     # hb.last when starved_s began
        self._wait_at: float | None = None  # the thread's CPU wait at the last check
        # (age, starved, timeout) of the current gap while the wait excuses it:
        # logged when its step comes back, never if it is declared a stall first
        self._excused: tuple[float, float, float] | None = None
        self.floor_s, self.factor, self.fixed = floor_s, factor, fixed_timeout_s
        self.check_every_s = check_every_s
        self.on_stall = list(on_stall or [])
        self.on_recover = list(on_recover or [])
        self.stalled = False
        self.stalls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stall_timeout_s(self) -> float:
        if self.fixed is not None:
            return self.fixed
        p99 = self.hb.p99_interval()
        return self.floor_s if p99 is None else max(self.floor_s, self.factor * p99)

    def heartbeat_age_s(self) -> float:
        return self.hb.clock() - self.hb.last

    def _starved(self) -> float:
        """The stepping thread's CPU wait since the last beat (or idle), summed
        over the checks since then."""
        tid = self.hb.tid
        wait = None if tid is None else self.cpu_wait(tid)
        if self.hb.last != self._mark:   # a beat since the last check: a new gap begins
            if self._excused is not None:
                # Logged at the gap's end, once: a warning as it crossed the timeout
                # read "oversubscribed" beside a hang that a few ms of wait had
                # excused for one check (a CI health test's freeze: "0.0 s of it").
                age, starved, timeout = self._excused
                log.warning("l0: a starved step, not a stall: a step took over %.1f s, %.1f s of it waiting for a "
                            "CPU (timeout %.1f s): the host's cores are oversubscribed", age, starved, timeout)
            self._excused = None
            self._mark, self.starved_s = self.hb.last, 0.0
        elif wait is not None and self._wait_at is not None:
            self.starved_s += max(0.0, wait - self._wait_at)
        self._wait_at = wait
        return self.starved_s

    def check(self) -> bool:
        """One verdict; returns whether the engine is stalled now."""
        age = self.heartbeat_age_s()
        starved = self._starved()
        stuck = self.hb.in_flight > 0 and age - starved > self.stall_timeout_s
        if stuck:
            self._excused = None
        elif self.hb.in_flight > 0 and age > self.stall_timeout_s:
            self._excused = (age, starved, self.stall_timeout_s)
        if stuck and not self.stalled:
            self.stalled = True
            self.stalls += 1
            log.error("l0: decode loop stalled: %d request(s) in flight, no step for %.1f s (%.1f s of it waiting "
                      "for a CPU; timeout %.1f s); thread stacks follow\n%s", self.hb.in_flight, age, starved,
                      self.stall_timeout_s, thread_stacks())
            for fn in self.on_stall:
                try:
                    fn(age)
                except Exception:  # a failing callback must not kill the watchdog
                    log.exception("l0: on_stall callback failed")
        elif not stuck and self.stalled:
            self.stalled = False
            log.warning("l0: decode loop moving again")
            for fn in self.on_recover:
                try:
                    fn()
                except Exception:
                    log.exception("l0: on_recover callback failed")
        return self.stalled

    def start(self) -> "Watchdog":
        self._thread = threading.Thread(target=self._run, name="l0-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.check_every_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
