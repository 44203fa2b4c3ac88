import dataclasses

import pytest

from l0.engine.config import (ERR_ACTION, DetectorParams, OptionError, ServerConfig, load_server_config,
                       params_from_xargs)

SERVER = ServerConfig(action="stop").check()


def test_defaults_apply_when_no_xargs():
    opts = params_from_xargs(None, SERVER)
    assert opts.action == "stop" and opts.params == SERVER.defaults and opts.key is None


def test_overrides_are_coerced():
    opts = params_from_xargs({"l0_action": "penalize", "l0_max_period": "64", "l0_near_threshold": 0.9,
                              "l0_key": "abc-1", "other_processor_arg": [1, 2]}, SERVER)
    assert opts.action == "penalize" and opts.key == "abc-1"
    assert opts.params.max_period == 64 and opts.params.near_threshold == 0.9


@pytest.mark.parametrize("xargs,msg", [
    ({"l0_max_period": 513}, "l0_max_period=513 is out of range; allowed: 1 <= l0_max_period <= 512"),
    ({"l0_min_repeats": 65}, "l0_min_repeats=65 is out of range"),
    ({"l0_near_threshold": 0.2}, "l0_near_threshold=0.2 is out of range"),
    ({"l0_min_period": True}, "must be an integer"),
    ({"l0_min_period": 2.5}, "must be an integer"),
    ({"l0_action": "nuke"}, ERR_ACTION.format(value="nuke")),
    ({"l0_min_period": 10, "l0_max_period": 5}, "l0_min_period (10) must be <= l0_max_period (5)"),
    ({"l0_key": "x" * 129}, "l0_key must be"),
    ({"l0_penalty": 0}, "l0_penalty=0.0 is out of range"),
    ({"l0_typo": 1}, "unknown option 'l0_typo'"),
])
def test_bad_options_name_the_option_and_range(xargs, msg):
    with pytest.raises(OptionError) as err:
        params_from_xargs(xargs, SERVER)
    assert msg in str(err.value)
    assert isinstance(err.value, ValueError)  # vLLM turns ValueError into HTTP 400


def test_yaml_config_and_env_action(tmp_path, monkeypatch):
    f = tmp_path / "l0.yaml"
    f.write_text("l0:\n  action: penalize\n  max_period_cap: 2048\n  detector:\n    max_period: 1024\n")
    monkeypatch.delenv("L0_ACTION", raising=False)
    cfg = load_server_config(f)
    assert cfg.action == "penalize" and cfg.max_period_cap == 2048 and cfg.defaults.max_period == 1024
    monkeypatch.setenv("L0_ACTION", "observe")
    assert load_server_config(f).action == "observe"


def test_yaml_unknown_key_refused(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("l0:\n  detector:\n    max_periodd: 3\n")
    with pytest.raises(OptionError, match="unknown detector key 'max_periodd'"):
        load_server_config(f)


def test_shipped_config_loads(monkeypatch):
    from pathlib import Path
    monkeypatch.delenv("L0_ACTION", raising=False)
    cfg = load_server_config(Path(__file__).resolve().parents[2] / "configs" / "l0.yaml")
    assert cfg.action == "stop" and cfg.defaults == DetectorParams()


def test_installed_default_is_observe(monkeypatch):
    monkeypatch.delenv("L0_ACTION", raising=False)
    monkeypatch.delenv("L0_CONFIG", raising=False)
    assert load_server_config().action == "observe"
    assert dataclasses.replace(SERVER).max_period_cap == 512


@pytest.mark.parametrize("text,msg", [
    ("l0:\n  backend: tpu\n", "backend 'tpu' is not one of auto, torch, cpu, cuda, reference"),
    ("l0:\n  action: halt\n", "l0_action='halt' is not one of"),
    ("l0:\n  max_period_cap: 9000\n", "max_period_cap=9000 is out of range"),
    ("l0:\n  detector:\n    max_period: 1024\n", "l0_max_period=1024 is out of range; allowed: 1 <= l0_max_period <= 512"),
])
def test_bad_server_config_refused(tmp_path, monkeypatch, text, msg):
    monkeypatch.delenv("L0_ACTION", raising=False)
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(OptionError) as err:
        load_server_config(f)
    assert msg in str(err.value)


def test_checkpoint_section(tmp_path, monkeypatch):
    from l0.engine.config import OptionError, load_server_config
    monkeypatch.delenv("L0_CHECKPOINT_STORE", raising=False)
    monkeypatch.delenv("L0_ACTION", raising=False)
    f = tmp_path / "l0.yaml"
    f.write_text("l0:\n  checkpoint:\n    store: redis://127.0.0.1:6379/0\n    every: 8\n    ttl_s: 60\n"
                 "    retention: delete\n    assign_keys: true\n")
    cp = load_server_config(f).checkpoint
    assert (cp.store, cp.every, cp.ttl_s, cp.retention) == ("redis://127.0.0.1:6379/0", 8, 60, "delete")
    assert cp.assign_keys is True
    monkeypatch.setenv("L0_CHECKPOINT_STORE", "off")
    assert not load_server_config(f).checkpoint.enabled
    for bad, msg in [("every: 0", "checkpoint.every=0 is out of range"), ("retention: forever", "retention"),
                     ("assign_keys: sometimes", "checkpoint.assign_keys=.sometimes. must be true or false"),
                     ("colour: red", "unknown checkpoint key 'colour'")]:
        f.write_text(f"l0:\n  checkpoint:\n    {bad}\n")
        with pytest.raises(OptionError, match=msg):
            load_server_config(f)


def test_resume_from_option():
    from l0.engine.config import OptionError, ServerConfig, params_from_xargs
    assert params_from_xargs({"l0_resume_from": 12}, ServerConfig()).resume_from == 12
    with pytest.raises(OptionError, match="l0_resume_from=-1 is out of range"):
        params_from_xargs({"l0_resume_from": -1}, ServerConfig())


def test_json_rows_get_their_own_detector_defaults(tmp_path, monkeypatch):
    from l0.engine.config import JSON_OVERRIDES, OptionError, ServerConfig, load_server_config, params_from_xargs
    monkeypatch.delenv("L0_ACTION", raising=False)
    server = ServerConfig()
    plain, as_json = params_from_xargs({}, server), params_from_xargs({}, server, json=True)
    assert plain.params == server.defaults
    assert {k: getattr(as_json.params, k) for k in JSON_OVERRIDES} == JSON_OVERRIDES
    # A request still overrides either.
    assert params_from_xargs({"l0_near_threshold": 0.95}, server, json=True).params.near_threshold == 0.95
    f = tmp_path / "l0.yaml"
    f.write_text("l0:\n  detector:\n    min_span: 30\n  json_detector:\n    near_min_span: 100\n")
    cfg = load_server_config(f)
    assert cfg.defaults.min_span == 30 and cfg.defaults.near_min_span == 192
    assert cfg.json_defaults.min_span == 30 and cfg.json_defaults.near_min_span == 100
    assert cfg.json_defaults.near_threshold == 1.0
    f.write_text("l0:\n  json_detector:\n    colour: red\n")
    with pytest.raises(OptionError, match="unknown json_detector key 'colour'"):
        load_server_config(f)


def test_close_at_budget_option_and_config(tmp_path, monkeypatch):
    from l0.engine.config import ERR_BOOL, OptionError, ServerConfig, load_server_config, params_from_xargs
    monkeypatch.delenv("L0_ACTION", raising=False)
    server = ServerConfig()
    assert params_from_xargs({}, server).close_at_budget is True
    for value, want in [(False, False), ("false", False), (0, False), ("1", True), (True, True)]:
        assert params_from_xargs({"l0_close_at_budget": value}, server).close_at_budget is want
    with pytest.raises(OptionError, match=ERR_BOOL.format(name="l0_close_at_budget", value="maybe")
                       .replace("(", r"\(").replace(")", r"\)")):
        params_from_xargs({"l0_close_at_budget": "maybe"}, server)
    f = tmp_path / "l0.yaml"
    f.write_text("l0:\n  close_at_budget: false\n  close_margin: 12\n")
    cfg = load_server_config(f)
    assert cfg.close_at_budget is False and cfg.close_margin == 12
    assert params_from_xargs({}, cfg).close_at_budget is False
    f.write_text("l0:\n  close_margin: -1\n")
    with pytest.raises(OptionError, match="close_margin=-1 is out of range"):
        load_server_config(f)
