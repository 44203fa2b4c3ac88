"""The watchdog's verdicts on a hand-driven clock (no sleeping)."""
import logging

import pytest

from l0.engine.health.watchdog import Heartbeat, Watchdog


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
    wd = Watchdog(hb, fixed_timeout_s=2.0, on_stall=[stalls.append], on_recover=[lambda: recoveries.append(1)])
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
    wd = Watchdog(hb, fixed_timeout_s=1.0)
    hb.beat(1)
    hb.idle()
    clock.t = 100.0
    assert not wd.check()


def test_timeout_adapts_to_observed_steps_with_a_floor():
    clock = Clock()
    hb = Heartbeat(clock)
    wd = Watchdog(hb, floor_s=5.0, factor=10.0)
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
    wd = Watchdog(hb, fixed_timeout_s=1.0, on_stall=[lambda age: 1 / 0, seen.append])
    hb.beat(1)
    clock.t = 5.0
    assert wd.check() and seen == [5.0]


def test_between_steps_is_not_in_flight_and_keeps_the_step_statistics():
    """Model Runner V2 has no removal hook: a step that only hands finished
    requests over calls ``apply_staged_writes`` (between_steps) and nothing
    after; it must not read as a stall. A hang after the logits still does."""
    from l0.engine.health.watchdog import Heartbeat, Watchdog
    now = [0.0]
    hb = Heartbeat(clock=lambda: now[0])
    wd = Watchdog(hb, floor_s=30.0)
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
