"""The watchdog's verdicts on a hand-driven clock (no sleeping), the
stepping thread's CPU wait given by hand too; and that wait read for real
from a thread starved by processes pinned to its core."""
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from l0.engine.health.watchdog import Heartbeat, Watchdog, cpu_wait_s


def no_wait(tid):
    return 0.0   # the stepping thread never waited for a CPU


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_stall_declared_once_with_stacks_then_cleared(caplog):
    caplog.set_level(logging.WARNING, logger="l0.watchdog")
    clock = Clock()
    hb = Heartbeat(clock)
    stalls, recoveries = [], []
    wd = Watchdog(hb, fixed_timeout_s=2.0, on_stall=[stalls.append], on_recover=[lambda: recoveries.append(1)],
                  cpu_wait=no_wait)
    hb.beat(3)
    clock.t = 1.9
    assert not wd.check()
    clock.t = 2.5
    assert wd.check() and stalls == [2.5]
    clock.t = 9.0
    assert wd.check() and len(stalls) == 1           # one episode, one declaration
    assert "decode loop stalled" in caplog.text and "--- thread MainThread" in caplog.text
    hb.beat(3)
    assert not wd.check() and recoveries == [1] and wd.stalls == 1


def test_idle_engine_is_never_stalled():
    clock = Clock()
    hb = Heartbeat(clock)
    wd = Watchdog(hb, fixed_timeout_s=1.0, cpu_wait=no_wait)
    hb.beat(1)
    hb.idle()
    clock.t = 100.0
    assert not wd.check()


def test_timeout_adapts_to_observed_steps_with_a_floor():
    clock = Clock()
    hb = Heartbeat(clock)
    wd = Watchdog(hb, floor_s=5.0, factor=10.0, cpu_wait=no_wait)
    assert wd.stall_timeout_s == 5.0                 # too few steps seen: the floor
    for i in range(100):
        clock.t += 0.02 if i % 50 else 2.0          # steps of 20 ms, two slow ones of 2 s
        hb.beat(4)
    assert wd.stall_timeout_s == pytest.approx(20.0)  # 10 x p99 (2 s) beats the floor
    hb.intervals.clear()
    for _ in range(100):
        clock.t += 0.02
        hb.beat(4)
    assert wd.stall_timeout_s == 5.0                 # 10 x 20 ms < floor


def test_failing_callback_does_not_kill_the_watchdog():
    clock = Clock()
    hb = Heartbeat(clock)
    seen = []
    wd = Watchdog(hb, fixed_timeout_s=1.0, on_stall=[lambda age: 1 / 0, seen.append], cpu_wait=no_wait)
    hb.beat(1)
    clock.t = 5.0
    assert wd.check() and seen == [5.0]


def test_between_steps_is_not_in_flight_and_keeps_the_step_statistics():
    """Model Runner V2 has no removal hook: a step that only hands finished
    requests over calls ``apply_staged_writes`` (between_steps) and nothing
    after; it must not read as a stall. A hang after the logits still does."""
    now = [0.0]
    hb = Heartbeat(clock=lambda: now[0])
    wd = Watchdog(hb, floor_s=30.0, cpu_wait=no_wait)
    for _ in range(10):
        hb.between_steps()
        now[0] += 0.01
        hb.beat(4)
    assert len(hb.intervals) == 10 and hb.intervals[-1] == pytest.approx(0.01)
    hb.between_steps()  # the last step: finished requests handed over, nothing runs
    now[0] += 100.0
    assert hb.in_flight == 0 and wd.check() is False
    hb.between_steps()  # a new request, after the idle gap
    now[0] += 0.01
    hb.beat(2)  # its logits, then the host hangs waiting for the device
    assert max(hb.intervals) == pytest.approx(0.01)  # the idle gap is no step
    now[0] += 31.0
    assert wd.check() is True


def test_a_starved_step_is_not_a_stall_a_hung_one_is(caplog):
    """The time the stepping thread waited for a CPU is not counted: a step
    starved by a busier neighbour is not declared (a warning says so, once,
    when the step comes back); the same gap with the thread waiting for
    nothing is, and a gap declared a stall gets no such warning. The wait is
    summed between checks and starts over at each beat."""
    caplog.set_level(logging.WARNING, logger="l0.watchdog")
    clock, wait = Clock(), {"s": 0.0}
    hb = Heartbeat(clock)
    wd = Watchdog(hb, fixed_timeout_s=2.0, cpu_wait=lambda tid: wait["s"])
    hb.beat(1)
    assert hb.tid is not None
    assert not wd.check() and wd.starved_s == 0.0        # the first check after a beat: the baseline
    for _ in range(10):                                  # 10 s without a step, 9 of them waiting for a CPU
        clock.t += 1.0
        wait["s"] += 0.9
        assert not wd.check()
    assert wd.starved_s == pytest.approx(9.0) and wd.heartbeat_age_s() == 10.0
    assert "a starved step" not in caplog.text           # not yet: the step has not come back
    hb.beat(1)                                           # it does: one warning, with the gap's figures
    assert not wd.check() and wd.starved_s == 0.0
    assert caplog.text.count("a starved step, not a stall") == 1 and "stalled" not in caplog.text
    assert "a step took over 10.0 s, 9.0 s of it waiting for a CPU (timeout 2.0 s)" in caplog.text
    clock.t += 2.1                                       # past the timeout, 0.2 s of it waiting: excused, for now
    wait["s"] += 0.2
    assert not wd.check()
    clock.t += 1.0                                       # then 1 s more, given the CPU: 2.9 s its own
    assert wd.check() and wd.stalls == 1
    hb.beat(1)                                           # a step: the count starts over
    assert not wd.check() and wd.starved_s == 0.0
    assert caplog.text.count("a starved step, not a stall") == 1   # the declared gap was no starved step
    clock.t += 2.5                                       # hung: no wait for a CPU at all
    assert wd.check() and wd.stalls == 2


def test_an_unreadable_cpu_wait_counts_every_second():
    clock = Clock()
    hb = Heartbeat(clock)
    wd = Watchdog(hb, fixed_timeout_s=2.0, cpu_wait=lambda tid: None)
    hb.beat(1)
    wd.check()
    clock.t = 2.5
    assert wd.check() and wd.starved_s == 0.0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or cpu_wait_s(threading.get_native_id()) is None,
                    reason="needs Linux's per-thread scheduler statistics (/proc/self/task/<tid>/schedstat)")
def test_cpu_wait_is_read_for_a_real_starved_thread():
    """A thread pinned to one core beside two busy processes pinned there
    too gets about a third of it: most of its wall time is CPU wait. (Only
    that it is a real share is asserted, far below the third expected.)"""
    core = sorted(os.sched_getaffinity(0))[0]
    hog = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(2)]
    out = {}

    def busy():
        os.sched_setaffinity(0, {core})   # this thread only
        tid = threading.get_native_id()
        w0, t0 = cpu_wait_s(tid), time.monotonic()
        while time.monotonic() - t0 < 1.5:
            pass
        out["wait"], out["wall"] = cpu_wait_s(tid) - w0, time.monotonic() - t0
    try:
        time.sleep(0.2)   # the hogs are running
        t = threading.Thread(target=busy)
        t.start()
        t.join(30)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert out["wall"] >= 1.5 and out["wait"] >= 0.25 * out["wall"], out
    assert cpu_wait_s(10 ** 9) is None   # no such thread
