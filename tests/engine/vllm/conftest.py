"""Two things every test here gets.

In-process processors start the engine's health monitor as vLLM's would:
one daemon thread each, which an engine process ends with itself. A test
process builds dozens, so each test stops the ones it started (left running,
their stall reports ran beside every later test: one hung a CI run).

The client's default timeouts are five times L0's (300 s to a first token,
150 s between tokens) unless a test sets its own. These servers share two
cores with another module's server: beside test_serve_e2e's batch a step
once took 38 s, and CI runs met client timeouts in tests not about them,
whose extra attempt changed what they assert (a cancel test counted two
attempts; an ``l0.run`` fallback gave up at 30 s). Tests about timeouts, and
the chaos and soak benches, pass theirs explicitly."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def stop_started_monitors(monkeypatch):
    try:
        from l0.engine.health.monitor import EngineMonitor
    except ImportError:  # the light install: no engine here
        yield
        return
    started = []
    real_start = EngineMonitor.start

    def start(self):
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(EngineMonitor, "start", start)
    yield
    for monitor in started:
        monitor.stop()


PATIENT = (300.0, 150.0)   # (first_token_s, inter_token_s)


@pytest.fixture(autouse=True)
def patient_client_timeouts(monkeypatch):
    try:
        from l0.client.retry import Timeouts
    except ImportError:
        yield
        return
    # the dataclass's own __init__ defaults: every Timeouts() the client builds
    # for a caller who gave none (l0.wrap, l0.run, l0.structured) gets them
    assert Timeouts.__init__.__defaults__ == (60.0, 30.0), Timeouts.__init__.__defaults__
    monkeypatch.setattr(Timeouts.__init__, "__defaults__", PATIENT)
    yield
