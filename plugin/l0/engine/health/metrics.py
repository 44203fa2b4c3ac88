"""Prometheus text for ``GET /l0/metrics``, rendered by the HTTP server from
the engines' status documents (:mod:`l0.engine.health.status`).

Why a separate route: vLLM's ``/metrics`` is served by the API-server process
from its own registry, while L0's counters live in the engine processes.
Rendering the engines' published documents here needs no
prometheus-multiprocess directory and no extra port. Every series carries an
``engine`` label (the engine's pid); counters restart with their engine.
"""
from __future__ import annotations

from typing import Any, Iterable

from l0.engine.health.policy import Level

# name -> (type, help)
SERIES = {
    "l0_health_state": ("gauge", "Replica health: 0 healthy, 1 degraded, 2 failed."),
    "l0_device_health_state": ("gauge", "Device health of an engine: 0 healthy, 1 degraded, 2 failed."),
    "l0_interventions_total": ("counter", "Loops / near-loops / no-progress runs detected, by kind."),
    "l0_checkpoints_written_total": ("counter", "Checkpoint records written to the store."),
    "l0_checkpoint_lag": ("gauge", "Snapshots offered since the last successful store write."),
    "l0_checkpoint_failures_total": ("counter", "Failed checkpoint store writes."),
    "l0_checkpoint_dropped_total": ("counter", "Snapshots dropped because the pending queue was full."),
    "l0_watchdog_stalls_total": ("counter", "Decode-loop stalls declared by the watchdog."),
    "l0_watchdog_stalled": ("gauge", "1 while the decode loop is stalled."),
    "l0_heartbeat_age_seconds": ("gauge", "Seconds since the last decode step."),
    "l0_heartbeat_cpu_wait_seconds": ("gauge", "Of those, the seconds the stepping thread waited for a CPU "
                                      "(not counted against the stall timeout)."),
    "l0_stall_timeout_seconds": ("gauge", "The watchdog's current stall timeout."),
    "l0_requests_in_flight": ("gauge", "Requests in the engine's batch at the last step."),
    "l0_decode_steps_total": ("counter", "Decode steps seen by L0."),
    "l0_request_starvation_seconds": ("histogram", "Time between consecutive tokens of one request, "
                                      "measured in the engine (out-of-batch time included)."),
    "l0_request_starvation_worst_seconds": ("gauge", "The longest gap between two tokens of one request so far."),
    "l0_xid_events_total": ("counter", "NVIDIA Xid events, by GPU and code."),
    "l0_gpu_ecc_uncorrected": ("gauge", "Volatile uncorrected ECC error count."),
    "l0_gpu_temperature_celsius": ("gauge", "GPU temperature."),
    "l0_gpu_power_watts": ("gauge", "GPU power draw."),
    "l0_gpu_memory_used_bytes": ("gauge", "GPU memory in use."),
    "l0_gpu_clock_event": ("gauge", "1 while a clock-event (throttle) reason is active."),
    "l0_gpu_lost": ("gauge", "1 when NVML reports the GPU lost."),
}
_LEVEL = {"healthy": 0, "degraded": 1, "failed": 2}


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kw: Any) -> str:
    if not kw:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kw.items()) + "}"


def render(docs: Iterable[dict[str, Any]], replica_level: Level | None) -> str:
    samples: dict[str, list[str]] = {name: [] for name in SERIES}

    def add(name: str, value: Any, _suffix: str = "", **labels: Any) -> None:
        if value is None:
            return
        samples[name].append(f"{name}{_suffix}{_labels(**labels)} {float(value):g}")

    if replica_level is not None:
        add("l0_health_state", int(replica_level))
    for d in docs:
        e = d.get("pid", "?")
        add("l0_device_health_state", _LEVEL.get((d.get("device") or {}).get("level", "healthy"), 0), engine=e)
        c = d.get("counters") or {}
        for kind, n in (c.get("interventions") or {}).items():
            add("l0_interventions_total", n, engine=e, kind=kind)
        add("l0_checkpoints_written_total", c.get("checkpoints_written"), engine=e)
        add("l0_checkpoint_lag", c.get("checkpoint_lag"), engine=e)
        add("l0_checkpoint_failures_total", c.get("checkpoint_failures"), engine=e)
        add("l0_checkpoint_dropped_total", c.get("checkpoint_dropped"), engine=e)
        add("l0_watchdog_stalls_total", d.get("stalls"), engine=e)
        add("l0_watchdog_stalled", int(bool(d.get("stalled"))), engine=e)
        add("l0_heartbeat_age_seconds", d.get("heartbeat_age_s"), engine=e)
        add("l0_heartbeat_cpu_wait_seconds", d.get("cpu_wait_s"), engine=e)
        add("l0_stall_timeout_seconds", d.get("stall_timeout_s"), engine=e)
        add("l0_requests_in_flight", d.get("in_flight"), engine=e)
        add("l0_decode_steps_total", d.get("steps"), engine=e)
        st = c.get("starvation")
        if st:
            for le, n in zip(st["le"], st["cumulative"]):
                add("l0_request_starvation_seconds", n, "_bucket", engine=e, le=le if le == "+Inf" else f"{le:g}")
            add("l0_request_starvation_seconds", st["sum"], "_sum", engine=e)
            add("l0_request_starvation_seconds", st["count"], "_count", engine=e)
            add("l0_request_starvation_worst_seconds", st.get("worst_s"), engine=e)
        for x in d.get("xid_counts") or []:
            add("l0_xid_events_total", x["count"], engine=e, gpu=x["gpu"], xid=x["xid"])
        for g in d.get("gpus") or []:
            i = g.get("index")
            add("l0_gpu_ecc_uncorrected", g.get("ecc_uncorrected"), engine=e, gpu=i)
            add("l0_gpu_temperature_celsius", g.get("temperature_c"), engine=e, gpu=i)
            add("l0_gpu_power_watts", g.get("power_w"), engine=e, gpu=i)
            add("l0_gpu_memory_used_bytes", g.get("memory_used_bytes"), engine=e, gpu=i)
            add("l0_gpu_lost", int(bool(g.get("lost"))), engine=e, gpu=i)
            for reason in g.get("clock_events") or []:
                add("l0_gpu_clock_event", 1, engine=e, gpu=i, reason=reason)
    lines = []
    for name, (kind, help_) in SERIES.items():
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines += samples[name]
    return "\n".join(lines) + "\n"
