"""In-process processors start the engine's health monitor as vLLM's would:
one daemon thread each, which an engine process ends with itself. A test
process builds dozens, so each test stops the ones it started (left running,
their stall reports ran beside every later test: one hung a CI run)."""
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

