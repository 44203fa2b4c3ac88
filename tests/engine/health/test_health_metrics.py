"""/l0/metrics text: valid Prometheus exposition with the documented names."""
from prometheus_client.parser import text_string_to_metric_families

from l0.engine.health.metrics import SERIES, render
from l0.engine.health.policy import Level

DOC = {"pid": 42, "in_flight": 3, "steps": 1200, "heartbeat_age_s": 0.02, "cpu_wait_s": 0.5,
       "stall_timeout_s": 30.0,
       "stalled": False, "stalls": 1, "device": {"level": "degraded", "reasons": ["gpu 0: clocks slowed"]},
       "gpus": [{"index": 0, "temperature_c": 81.0, "power_w": 350.5, "memory_used_bytes": 1024,
                 "ecc_uncorrected": 0, "lost": False, "clock_events": ["hw_thermal_slowdown"]}],
       "xid_counts": [{"gpu": 0, "xid": 79, "count": 2}],
       "counters": {"interventions": {"loop": 5, "near_loop": 2}, "checkpoints_written": 17, "checkpoint_lag": 0,
                    "checkpoint_failures": 1, "checkpoint_dropped": 0,
                    "starvation": {"le": [0.05, 1.0, "+Inf"], "cumulative": [7, 9, 10], "sum": 12.5, "count": 10,
                                   "worst_s": 9.5}}}


def test_render_parses_and_carries_the_values():
    text = render([DOC], Level.DEGRADED)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus_client strips _total from counter family names
    names = {n[:-6] if SERIES[n][0] == "counter" else n for n in SERIES}
    assert names <= set(fams)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert got[("l0_health_state", ())] == 1
    assert got[("l0_interventions_total", (("engine", "42"), ("kind", "loop")))] == 5
    assert got[("l0_xid_events_total", (("engine", "42"), ("gpu", "0"), ("xid", "79")))] == 2
    assert got[("l0_gpu_clock_event", (("engine", "42"), ("gpu", "0"), ("reason", "hw_thermal_slowdown")))] == 1
    assert got[("l0_checkpoints_written_total", (("engine", "42"),))] == 17
    assert got[("l0_watchdog_stalled", (("engine", "42"),))] == 0
    assert got[("l0_heartbeat_cpu_wait_seconds", (("engine", "42"),))] == 0.5
    assert got[("l0_request_starvation_seconds_bucket", (("engine", "42"), ("le", "0.05")))] == 7
    assert got[("l0_request_starvation_seconds_bucket", (("engine", "42"), ("le", "1")))] == 9
    assert got[("l0_request_starvation_seconds_bucket", (("engine", "42"), ("le", "+Inf")))] == 10
    assert got[("l0_request_starvation_seconds_count", (("engine", "42"),))] == 10
    assert got[("l0_request_starvation_seconds_sum", (("engine", "42"),))] == 12.5
    assert got[("l0_request_starvation_worst_seconds", (("engine", "42"),))] == 9.5
    assert fams["l0_request_starvation_seconds"].type == "histogram"


def test_no_engines_still_valid():
    fams = list(text_string_to_metric_families(render([], None)))
    assert all(not f.samples for f in fams)
