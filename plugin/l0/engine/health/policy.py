"""The device policy: which telemetry signal makes a GPU DEGRADED or FAILED.

Loaded from ``configs/device_policy.yaml`` (``L0_DEVICE_POLICY`` to point
elsewhere), whose comments cite NVIDIA's documentation for each entry.
Contract: :func:`load_policy` raises ``ValueError`` naming the bad key or
value; it never returns a partial policy.
"""
from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class Level(enum.IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    FAILED = 2

    @classmethod
    def parse(cls, value: Any, where: str) -> "Level":
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise ValueError(f"l0: {where}: {value!r} is not healthy, degraded or failed") from None


@dataclass(frozen=True)
class DevicePolicy:
    xid: Mapping[int, Level] = field(default_factory=dict)
    xid_default: Level = Level.DEGRADED          # an Xid the table does not name
    xid_window_s: float = 300.0                  # how long an Xid keeps its effect
    ecc_uncorrected: Level = Level.FAILED        # volatile uncorrected ECC count > 0
    retired_pages_pending: Level = Level.DEGRADED
    row_remap_pending: Level = Level.DEGRADED
    row_remap_failure: Level = Level.FAILED
    gpu_lost: Level = Level.FAILED               # NVML: GPU lost / reset required
    recovery_action: Mapping[str, Level] = field(default_factory=dict)
    clock_events: Mapping[str, Level] = field(default_factory=dict)
    temperature_degraded_c: float = 87.0
    temperature_failed_c: float = 95.0


_LEVEL_KEYS = ("xid_default", "ecc_uncorrected", "retired_pages_pending", "row_remap_pending",
               "row_remap_failure", "gpu_lost")


def default_policy_path() -> Path:
    """``configs/device_policy.yaml`` in a checkout, or the copy shipped in the wheel."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "configs" / "device_policy.yaml", here.parents[4] / "configs" / "device_policy.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("l0: configs/device_policy.yaml not found next to the package or the checkout")


def _mapping(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"l0: {what} must be a mapping")
    return dict(value)


def policy_from_dict(doc: Mapping[str, Any], where: str = "device policy") -> DevicePolicy:
    """Raises ValueError naming the first bad entry."""
    doc = _mapping(_mapping(doc, where).get("device_policy", doc), where)
    known = {f for f in DevicePolicy.__dataclass_fields__}
    unknown = sorted(set(doc) - known, key=str)
    if unknown:
        raise ValueError(f"l0: {where}: unknown key {unknown[0]!r}")
    kw: dict[str, Any] = {}
    for k in _LEVEL_KEYS:
        if k in doc:
            kw[k] = Level.parse(doc[k], f"{where}: {k}")
    xid = {}
    for code, level in _mapping(doc.get("xid"), f"{where}: xid").items():
        try:
            if isinstance(code, (bool, float)):
                raise TypeError
            code = int(code)
        except (TypeError, ValueError):
            raise ValueError(f"l0: {where}: xid code {code!r} is not an integer") from None
        xid[code] = Level.parse(level, f"{where}: xid {code}")
    kw["xid"] = xid
    for k in ("recovery_action", "clock_events"):
        kw[k] = {str(name): Level.parse(v, f"{where}: {k}.{name}")
                 for name, v in _mapping(doc.get(k), f"{where}: {k}").items()}
    for k in ("xid_window_s", "temperature_degraded_c", "temperature_failed_c"):
        if k in doc:
            v = doc[k]
            try:
                if isinstance(v, bool):
                    raise TypeError
                kw[k] = float(v)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"l0: {where}: {k} must be a number") from None
            if not math.isfinite(kw[k]):
                raise ValueError(f"l0: {where}: {k} must be a finite number")
    return DevicePolicy(**kw)


def load_policy(path: str | os.PathLike | None = None) -> DevicePolicy:
    import yaml

    path = Path(path or os.environ.get("L0_DEVICE_POLICY") or default_policy_path())
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"l0: {path} is not valid YAML: {str(exc)[:300]}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"l0: {path} must be a mapping")
    return policy_from_dict(doc, str(path))
