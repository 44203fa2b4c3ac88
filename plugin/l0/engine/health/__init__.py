"""Device health: telemetry sources (NVML, scripted), the policy that maps
signals to HEALTHY / DEGRADED / FAILED, and the assessment. Pure Python; the
NVML binding is imported lazily by :class:`~l0.engine.health.telemetry.NvmlSource`."""
