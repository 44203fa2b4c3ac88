"""Telemetry sources: where GPU readings and Xid events come from.

One :class:`TelemetrySource` protocol, two implementations:

* :class:`NvmlSource` — the real one (``nvidia-ml-py``, imported on first
  use). Xid events come from an NVML event set, waited on with a timeout by
  the caller's thread; readings are polled.
* :class:`ScriptedSource` — a timeline (JSON or YAML) of readings and events,
  played against an injected clock. Drives the same assessment, health and
  HTTP code on machines without a GPU (``L0_TELEMETRY_SCRIPT=path``).

Contract: ``read()`` returns one :class:`GpuReading` per local GPU and never
raises for a single failed field (the field stays None and the error is in
``errors``); a GPU that can't be reached at all reads as ``lost=True``.
``wait_events(timeout_s)`` returns the Xid events since the last call,
waiting at most ``timeout_s`` when there are none.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

log = logging.getLogger("l0.engine.health")


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str = ""
    name: str = ""
    temperature_c: float | None = None
    power_w: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    ecc_uncorrected: int | None = None        # volatile total since the driver loaded
    retired_pages_pending: bool | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    recovery_action: str | None = None        # none | gpu_reset | node_reboot | drain_p2p | drain_and_reset
    clock_events: tuple[str, ...] = ()
    lost: bool = False
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["clock_events"] = list(self.clock_events)
        d["errors"] = list(self.errors)
        return d


@dataclass(frozen=True)
class XidEvent:
    gpu: int
    xid: int
    at: float  # the source clock's time


class TelemetrySource(Protocol):
    name: str

    def read(self) -> list[GpuReading]: ...

    def wait_events(self, timeout_s: float) -> list[XidEvent]: ...

    def close(self) -> None: ...


_READING_FIELDS = set(GpuReading.__dataclass_fields__) - {"index"}
_NUMBER, _COUNT, _FLAG, _TEXT, _TEXTS = "a number", "a whole number >= 0", "true or false", "a string", \
    "a list of strings"
_FIELD_KINDS = {"uuid": _TEXT, "name": _TEXT, "temperature_c": _NUMBER, "power_w": _NUMBER,
                "memory_used_bytes": _COUNT, "memory_total_bytes": _COUNT, "ecc_uncorrected": _COUNT,
                "retired_pages_pending": _FLAG, "row_remap_pending": _FLAG, "row_remap_failure": _FLAG,
                "recovery_action": _TEXT, "clock_events": _TEXTS, "lost": _FLAG, "errors": _TEXTS}
_MAX_SCRIPT_ENTRIES = 10_000


def _is(kind: str, v: Any, nullable: bool = True) -> bool:
    import math
    if v is None:
        return nullable
    if kind == _NUMBER:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == _COUNT:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63
    if kind == _FLAG:
        return isinstance(v, bool)
    if kind == _TEXT:
        return isinstance(v, str) and len(v) <= 1024
    return isinstance(v, list) and len(v) <= 64 and all(isinstance(x, str) and len(x) <= 256 for x in v)


def check_script(doc: Any) -> dict:
    """Check a telemetry script (see :class:`ScriptedSource`) and return it.
    Raises ValueError naming the first bad part: a script is operator input,
    and a bad one must be refused at start and ignored on reload, never
    kill the health monitor."""
    where = "l0: telemetry script"
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must be a mapping with 'gpus' and/or 'timeline'")
    unknown = set(doc) - {"gpus", "timeline"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(map(str, unknown))[0]!r}")

    def gpu_index(v, at):
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1024):
            raise ValueError(f"{where}: {at} must be a GPU index 0-1023, not {v!r}")

    def fields(d, at):
        for k, v in d.items():
            if k not in _FIELD_KINDS:
                raise ValueError(f"{where}: unknown field {k!r} at {at}")
            if not _is(_FIELD_KINDS[k], v, nullable=k not in ("clock_events", "errors", "lost")):
                raise ValueError(f"{where}: {k} at {at} must be {_FIELD_KINDS[k]}, not {v!r}"[:300])

    gpus = doc.get("gpus")
    if gpus is not None:
        if not isinstance(gpus, list) or len(gpus) > 1024:
            raise ValueError(f"{where}: 'gpus' must be a list of at most 1024 GPUs")
        for i, g in enumerate(gpus):
            if not isinstance(g, dict):
                raise ValueError(f"{where}: gpus[{i}] must be a mapping")
            gpu_index(g.get("index", 0), f"gpus[{i}].index")
            fields({k: v for k, v in g.items() if k != "index"}, f"gpus[{i}]")
    timeline = doc.get("timeline")
    if timeline is not None:
        if not isinstance(timeline, list) or len(timeline) > _MAX_SCRIPT_ENTRIES:
            raise ValueError(f"{where}: 'timeline' must be a list of at most {_MAX_SCRIPT_ENTRIES} entries")
        for i, e in enumerate(timeline):
            at = f"timeline[{i}]"
            if not isinstance(e, dict):
                raise ValueError(f"{where}: {at} must be a mapping")
            unknown = set(e) - {"at_s", "gpu", "set", "xid"}
            if unknown:
                raise ValueError(f"{where}: unknown key {sorted(map(str, unknown))[0]!r} at {at}")
            if not _is(_NUMBER, e.get("at_s"), nullable=False) or not 0 <= e["at_s"] <= 1e9:
                raise ValueError(f"{where}: {at}.at_s must be a number of seconds 0-1e9")
            gpu_index(e.get("gpu", 0), f"{at}.gpu")
            if "set" in e:
                if not isinstance(e["set"], dict):
                    raise ValueError(f"{where}: {at}.set must be a mapping")
                fields(e["set"], at)
            if "xid" in e and not (isinstance(e["xid"], int) and not isinstance(e["xid"], bool)
                                   and 0 <= e["xid"] < 1 << 16):
                raise ValueError(f"{where}: {at}.xid must be an Xid code 0-65535")
    return doc


class ScriptedSource:
    """Readings and Xid events from a timeline::

        {"gpus": [{"index": 0, "name": "scripted H100", "temperature_c": 40}],
         "timeline": [{"at_s": 5, "gpu": 0, "set": {"clock_events": ["hw_thermal_slowdown"]}},
                      {"at_s": 9, "gpu": 0, "xid": 79}]}

    ``at_s`` counts from the source's creation (or from ``start``), on the
    injected ``clock``. Entries take effect in order once their time has come.
    Made with :meth:`from_file`, the source watches the file: rewriting it
    loads the new script and restarts its clock (how tests and drills inject
    a fault into a running server).
    """

    name = "scripted"

    def __init__(self, doc: dict, clock: Callable[[], float] = time.monotonic, start: float | None = None) -> None:
        self._clock = clock
        self._cv = threading.Condition()
        self._path: Path | None = None
        self._mtime = None
        self._rejected = None  # the mtime of a version refused on reload
        self._load(doc, clock() if start is None else start)

    def _load(self, doc: dict, t0: float) -> None:
        doc = check_script(doc)
        gpus = doc.get("gpus") or [{"index": 0}]
        self._gpus = {}
        for g in gpus:
            g = dict(g)
            for k in ("clock_events", "errors"):
                if k in g:
                    g[k] = tuple(g[k])
            self._gpus[int(g.get("index", 0))] = GpuReading(**{"index": int(g.pop("index", 0)), **g})
        self._timeline = sorted(doc.get("timeline") or [], key=lambda e: float(e["at_s"]))
        self._t0 = t0
        self._next = 0
        self._events: list[XidEvent] = []

    @staticmethod
    def _parse(path: Path) -> dict:
        text = path.read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml
            try:
                return yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"l0: telemetry script {path}: not YAML: {exc}") from None
        return json.loads(text) if text.strip() else {}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kw) -> "ScriptedSource":
        path = Path(path)
        src = cls(cls._parse(path), **kw)
        src._path, src._mtime = path, path.stat().st_mtime_ns
        return src

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
            if mtime == self._mtime:
                return
            doc = check_script(self._parse(self._path))
        except (OSError, ValueError, RecursionError) as exc:
            # Mid-rewrite, or bad content: keep the script in force, say so
            # once per version of the file (checked again when it changes).
            if not isinstance(exc, OSError) and self._rejected != mtime:
                self._rejected = mtime
                log.warning("l0: telemetry script %s not reloaded: %s", self._path, str(exc)[:300])
            return
        self._mtime = mtime
        self._load(doc, self._clock())
        log.warning("l0: telemetry script %s reloaded", self._path)

    def _advance(self) -> None:
        self._reload_if_changed()
        now = self._clock() - self._t0
        while self._next < len(self._timeline) and float(self._timeline[self._next]["at_s"]) <= now:
            e = self._timeline[self._next]
            self._next += 1
            gpu = int(e.get("gpu", 0))
            if "set" in e:
                changes = dict(e["set"])
                if "clock_events" in changes:
                    changes["clock_events"] = tuple(changes["clock_events"])
                self._gpus[gpu] = replace(self._gpus.get(gpu, GpuReading(gpu)), **changes)
            if "xid" in e:
                self._events.append(XidEvent(gpu, int(e["xid"]), self._t0 + float(e["at_s"])))

    def read(self) -> list[GpuReading]:
        with self._cv:
            self._advance()
            return [self._gpus[i] for i in sorted(self._gpus)]

    def wait_events(self, timeout_s: float) -> list[XidEvent]:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                self._advance()
                if self._events or time.monotonic() >= deadline:
                    out, self._events = self._events, []
                    return out
                self._cv.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        pass


_CLOCK_REASONS = {  # NVML clocks-event-reason bits -> L0 names
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
}
_RECOVERY = {0: "none", 1: "gpu_reset", 2: "node_reboot", 3: "drain_p2p", 4: "drain_and_reset"}


class NvmlSource:
    """The real source. Raises ``RuntimeError`` from the constructor when NVML
    can't be loaded (no driver, no ``nvidia-ml-py``)."""

    name = "nvml"

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError:
            raise RuntimeError("l0: NVML telemetry needs nvidia-ml-py: pip install 'l0[nvml]'") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise RuntimeError(f"l0: NVML unavailable: {exc}") from None
        self.nv = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self._events = pynvml.nvmlEventSetCreate()
        for h in self.handles:
            try:
                pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, self._events)
            except pynvml.NVMLError as exc:  # not supported on this card / MIG: readings still work
                log.warning("l0: NVML Xid events unavailable on a GPU: %s", exc)
        self._uuid_index = {}
        for i, h in enumerate(self.handles):
            try:
                self._uuid_index[pynvml.nvmlDeviceGetUUID(h)] = i
            except pynvml.NVMLError:
                pass

    def _field(self, errors: list[str], what: str, fn, *args):
        try:
            return fn(*args)
        except self.nv.NVMLError as exc:
            if isinstance(exc, getattr(self.nv, "NVMLError_NotSupported", ())):
                return None
            errors.append(f"{what}: {exc}")
            return None

    def read(self) -> list[GpuReading]:
        nv = self.nv
        out = []
        for i, h in enumerate(self.handles):
            errors: list[str] = []
            f = lambda what, fn, *a: self._field(errors, what, fn, *a)  # noqa: E731
            lost = False
            temp = f("temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            if any("GPU is lost" in e or "Reset Required" in e for e in errors):
                lost = True
            power = f("power", nv.nvmlDeviceGetPowerUsage, h)
            mem = f("memory", nv.nvmlDeviceGetMemoryInfo, h)
            ecc = f("ecc", nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                    nv.NVML_VOLATILE_ECC)
            pending = f("retired_pages_pending", nv.nvmlDeviceGetRetiredPagesPendingStatus, h)
            rows = f("remapped_rows", nv.nvmlDeviceGetRemappedRows, h)
            reasons = f("clock_events", getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                        or nv.nvmlDeviceGetCurrentClocksThrottleReasons, h)
            action = None
            fid = getattr(nv, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
            if fid is not None:
                vals = f("recovery_action", nv.nvmlDeviceGetFieldValues, h, [fid])
                if vals and vals[0].nvmlReturn == nv.NVML_SUCCESS:
                    action = _RECOVERY.get(int(vals[0].value.uiVal), str(vals[0].value.uiVal))
            out.append(GpuReading(
                index=i, uuid=f("uuid", nv.nvmlDeviceGetUUID, h) or "", name=f("name", nv.nvmlDeviceGetName, h) or "",
                temperature_c=temp, power_w=None if power is None else power / 1000.0,
                memory_used_bytes=None if mem is None else int(mem.used),
                memory_total_bytes=None if mem is None else int(mem.total),
                ecc_uncorrected=ecc, retired_pages_pending=None if pending is None else bool(pending),
                row_remap_pending=None if rows is None else bool(rows[2]),
                row_remap_failure=None if rows is None else bool(rows[3]),
                recovery_action=action,
                clock_events=tuple(n for bit, n in _CLOCK_REASONS.items() if reasons and reasons & bit),
                lost=lost or any("GPU is lost" in e for e in errors), errors=tuple(errors)))
        return out

    def wait_events(self, timeout_s: float) -> list[XidEvent]:
        nv = self.nv
        out = []
        try:
            data = nv.nvmlEventSetWait_v2(self._events, int(timeout_s * 1000))
        except nv.NVMLError:  # timeout (NVML_ERROR_TIMEOUT) or no events
            return out
        idx = self._uuid_index.get(self._field([], "uuid", nv.nvmlDeviceGetUUID, data.device), -1)
        out.append(XidEvent(idx, int(data.eventData), time.monotonic()))
        return out

    def close(self) -> None:
        try:
            self.nv.nvmlEventSetFree(self._events)
            self.nv.nvmlShutdown()
        except Exception:
            pass


def open_source(clock: Callable[[], float] = time.monotonic) -> TelemetrySource | None:
    """``L0_TELEMETRY_SCRIPT`` → scripted; else NVML; else None (one log line)."""
    script = os.environ.get("L0_TELEMETRY_SCRIPT")
    if script:
        return ScriptedSource.from_file(script, clock=clock)
    try:
        return NvmlSource()
    except RuntimeError as exc:
        log.info("l0: device telemetry off (%s)", exc)
        return None
