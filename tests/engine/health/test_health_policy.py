"""Device policy, scripted telemetry and the assessment (no GPU needed)."""
import json

import pytest

from l0.engine.health.assess import DeviceHealth
from l0.engine.health.policy import Level, load_policy, policy_from_dict
from l0.engine.health.telemetry import GpuReading, ScriptedSource, open_source


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_shipped_policy_loads_and_names_the_issue_xids():
    p = load_policy()
    for code in (48, 64, 74, 79, 95, 119, 120):
        assert p.xid[code] == Level.FAILED, code
    for code in (63, 92, 94):
        assert p.xid[code] == Level.DEGRADED, code
    assert p.clock_events["hw_thermal_slowdown"] == Level.DEGRADED
    assert p.clock_events["sw_power_cap"] == Level.HEALTHY
    assert p.recovery_action["node_reboot"] == Level.FAILED


def test_bad_policy_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        policy_from_dict({"colour": 1})
    with pytest.raises(ValueError, match="xid 79: 'dead' is not healthy"):
        policy_from_dict({"xid": {79: "dead"}})
    with pytest.raises(ValueError, match="xid code 'x' is not an integer"):
        policy_from_dict({"xid": {"x": "failed"}})


def test_scripted_timeline_degraded_recovers_failed_latches(tmp_path):
    clock = Clock()
    script = {"gpus": [{"index": 0, "name": "scripted H100", "temperature_c": 40.0}],
              "timeline": [{"at_s": 1, "gpu": 0, "set": {"clock_events": ["hw_thermal_slowdown"]}},
                           {"at_s": 2, "gpu": 0, "set": {"clock_events": []}},
                           {"at_s": 3, "gpu": 0, "xid": 79}]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(script))
    src = ScriptedSource.from_file(path, clock=clock)
    health = DeviceHealth(load_policy())

    def at(t):
        clock.t = 1000.0 + t
        health.add_events(src.wait_events(0))
        return health.assess(src.read(), clock.t)

    assert at(0.5).level == Level.HEALTHY
    a = at(1.5)
    assert a.level == Level.DEGRADED and a.reasons == ("gpu 0: clocks slowed (hw_thermal_slowdown)",)
    assert at(2.5).level == Level.HEALTHY            # recovered
    a = at(3.1)
    assert a.level == Level.FAILED and "gpu 0: Xid 79" in a.reasons
    assert at(10_000).level == Level.FAILED          # latched, even after the Xid window
    assert health.xid_counts == {(0, 79): 1}


def test_reading_signals():
    health = DeviceHealth(load_policy())
    r = GpuReading(0, ecc_uncorrected=2)
    assert health.assess([r], 0).reasons == ("gpu 0: 2 uncorrected ECC error(s)",)
    h2 = DeviceHealth(load_policy())
    assert h2.assess([GpuReading(1, row_remap_pending=True, temperature_c=90)], 0).level == Level.DEGRADED


def test_open_source_picks_the_script(monkeypatch, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("gpus:\n  - {index: 0, name: fake}\n")
    monkeypatch.setenv("L0_TELEMETRY_SCRIPT", str(path))
    src = open_source()
    assert src.name == "scripted" and src.read()[0].name == "fake"
    monkeypatch.delenv("L0_TELEMETRY_SCRIPT")
    other = open_source()  # NVML where a GPU and nvidia-ml-py are; else off, with one log line
    assert other is None or other.name == "nvml"


def test_unknown_script_field_is_refused():
    with pytest.raises(ValueError, match="unknown field 'voltage'"):
        ScriptedSource({"timeline": [{"at_s": 0, "set": {"voltage": 1}}]})
