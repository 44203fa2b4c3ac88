"""From readings and Xid events to one health level with reasons.

:class:`DeviceHealth` keeps the recent Xid events (``policy.xid_window_s``)
and assesses each new set of readings. FAILED latches: a GPU that failed is
not trusted again until the process restarts (the orchestrator's job), so
``assess`` never goes back from FAILED. DEGRADED clears when its signal does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from l0.engine.health.policy import DevicePolicy, Level
from l0.engine.health.telemetry import GpuReading, XidEvent


@dataclass(frozen=True)
class Assessment:
    level: Level
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"level": self.level.name.lower(), "reasons": list(self.reasons)}


def assess_reading(r: GpuReading, policy: DevicePolicy) -> list[tuple[Level, str]]:
    """Every (level, reason) a single GPU reading triggers."""
    out: list[tuple[Level, str]] = []
    g = f"gpu {r.index}"
    if r.lost:
        out.append((policy.gpu_lost, f"{g}: lost (NVML: GPU is lost / reset required)"))
    if r.ecc_uncorrected:
        out.append((policy.ecc_uncorrected, f"{g}: {r.ecc_uncorrected} uncorrected ECC error(s)"))
    if r.retired_pages_pending:
        out.append((policy.retired_pages_pending, f"{g}: retired pages pending"))
    if r.row_remap_pending:
        out.append((policy.row_remap_pending, f"{g}: row remapping pending"))
    if r.row_remap_failure:
        out.append((policy.row_remap_failure, f"{g}: row remapping failed"))
    if r.recovery_action and r.recovery_action != "none":
        out.append((policy.recovery_action.get(r.recovery_action, Level.FAILED),
                    f"{g}: recovery action {r.recovery_action}"))
    for reason in r.clock_events:
        level = policy.clock_events.get(reason, Level.HEALTHY)
        if level:
            out.append((level, f"{g}: clocks slowed ({reason})"))
    if r.temperature_c is not None:
        if r.temperature_c >= policy.temperature_failed_c:
            out.append((Level.FAILED, f"{g}: temperature {r.temperature_c:g} C"))
        elif r.temperature_c >= policy.temperature_degraded_c:
            out.append((Level.DEGRADED, f"{g}: temperature {r.temperature_c:g} C"))
    return out


@dataclass
class DeviceHealth:
    policy: DevicePolicy
    xids: list[XidEvent] = field(default_factory=list)
    latched: list[str] = field(default_factory=list)  # reasons that made it FAILED
    xid_counts: dict[tuple[int, int], int] = field(default_factory=dict)  # (gpu, xid) -> count

    def add_events(self, events: list[XidEvent]) -> None:
        for e in events:
            self.xids.append(e)
            self.xid_counts[(e.gpu, e.xid)] = self.xid_counts.get((e.gpu, e.xid), 0) + 1

    def assess(self, readings: list[GpuReading], now: float) -> Assessment:
        self.xids = [e for e in self.xids if now - e.at <= self.policy.xid_window_s]
        found: list[tuple[Level, str]] = []
        for r in readings:
            found += assess_reading(r, self.policy)
        for e in self.xids:
            level = self.policy.xid.get(e.xid, self.policy.xid_default)
            found.append((level, f"gpu {e.gpu}: Xid {e.xid}"))
        for level, why in found:
            if level == Level.FAILED and why not in self.latched:
                self.latched.append(why)
        if self.latched:
            return Assessment(Level.FAILED, tuple(self.latched))
        worst = max((lvl for lvl, _ in found), default=Level.HEALTHY)
        return Assessment(worst, tuple(why for lvl, why in found if lvl > Level.HEALTHY))
