"""The engine-side health monitor: one daemon thread per engine process that
runs the watchdog, polls device telemetry, and publishes the engine's status
document (:mod:`l0.engine.health.status`) for the HTTP server.

Started by the logits processor; never touches the decode path beyond the
heartbeat the processor beats. Telemetry: ``L0_TELEMETRY_SCRIPT`` (scripted),
else NVML when present, else off (one log line).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

from l0.engine.config import HealthConfig
from l0.engine.health.assess import DeviceHealth
from l0.engine.health.policy import load_policy
from l0.engine.health.status import write_status
from l0.engine.health.telemetry import open_source
from l0.engine.health.watchdog import Heartbeat, Watchdog

log = logging.getLogger("l0.engine.health")


class EngineMonitor:
    def __init__(self, cfg: HealthConfig, heartbeat: Heartbeat, status_dir: str | None,
                 flush: Callable[[], None] | None = None, counters: Callable[[], dict] | None = None) -> None:
        self.cfg = cfg
        self.hb = heartbeat
        self.status_dir = status_dir
        self.flush = flush
        self.counters = counters or (lambda: {})
        self.watchdog = Watchdog(heartbeat, floor_s=cfg.stall_floor_s, factor=cfg.stall_factor,
                                 fixed_timeout_s=cfg.stall_timeout_s, on_stall=[self._on_stall])
        self.device = DeviceHealth(load_policy())
        self.source = open_source()
        self.readings: list = []
        self.assessment = self.device.assess([], time.monotonic())
        self._lock = threading.Lock()  # DeviceHealth is fed from two threads
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="l0-health", daemon=True)
        self._events_thread = None
        if self.source is not None:
            self._events_thread = threading.Thread(target=self._events, name="l0-xid-events", daemon=True)

    def start(self) -> "EngineMonitor":
        self._thread.start()
        if self._events_thread is not None:
            self._events_thread.start()
        return self

    def _events(self) -> None:
        # Blocking wait with a timeout in its own thread, so an Xid is seen at once.
        while not self._stop.is_set():
            try:
                events = self.source.wait_events(1.0)
            except Exception as exc:
                log.warning("l0: Xid event wait failed: %s", exc)
                self._stop.wait(1.0)
                continue
            if events:
                for e in events:
                    log.error("l0: Xid %d on gpu %d", e.xid, e.gpu)
                with self._lock:
                    self.device.add_events(events)
                self._assess()
                self.publish()  # an Xid is news now, not at the next tick

    def _assess(self) -> None:
        if self.source is not None:
            try:
                self.readings = self.source.read()
            except Exception as exc:
                log.warning("l0: telemetry read failed: %s", exc)
        with self._lock:
            self.assessment = self.device.assess(self.readings, time.monotonic())

    def _run(self) -> None:
        last_read = 0.0
        while not self._stop.wait(self.cfg.status_interval_s):
            self.watchdog.check()
            now = time.monotonic()
            if now - last_read >= self.cfg.telemetry_interval_s:
                last_read = now
                self._assess()
            self.publish()

    def publish(self) -> None:
        if not self.status_dir:
            return
        doc = {"in_flight": self.hb.in_flight, "steps": self.hb.steps,
               "heartbeat_age_s": self.watchdog.heartbeat_age_s(), "cpu_wait_s": round(self.watchdog.starved_s, 3),
               "stall_timeout_s": self.watchdog.stall_timeout_s,
               "stalled": self.watchdog.stalled, "stalls": self.watchdog.stalls,
               "device": self.assessment.to_dict(), "telemetry": getattr(self.source, "name", None),
               "gpus": [r.to_dict() for r in self.readings],
               "xid_counts": [{"gpu": g, "xid": x, "count": n} for (g, x), n in list(self.device.xid_counts.items())],
               "counters": self.counters()}
        try:
            write_status(self.status_dir, doc)
        except OSError as exc:
            log.warning("l0: cannot publish status to %s: %s", self.status_dir, exc)

    def _on_stall(self, age: float) -> None:
        if self.flush is not None:
            self.flush()
        self.publish()  # the HTTP server sees the stall now, not a tick later
        if self.cfg.on_stall == "exit":
            log.error("l0: on_stall=exit: terminating the engine process %d so it is restarted", os.getpid())
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.source is not None:
            self.source.close()
        if self.status_dir:  # a stopped monitor must not leave a verdict behind
            from pathlib import Path
            (Path(self.status_dir) / f"engine-{os.getpid()}.json").unlink(missing_ok=True)
