"""Every input an operator or a client can hand L0, fuzzed (hypothesis): a
bad one gets L0's own error with a message (OptionError / ValueError), never
another exception — on a server that other exception is a 500, a dead
health monitor, or a start-up traceback instead of a refusal.

The same inputs against a running server: tests/engine/vllm/test_compat_e2e.py.
"""
from __future__ import annotations

import json
import logging

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l0.engine.config import KNOWN_OPTIONS, OptionError, ServerConfig, load_server_config, params_from_xargs
from l0.engine.health.policy import policy_from_dict
from l0.engine.health.telemetry import ScriptedSource, check_script

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["", "stop", "off", "observe", "penalize", "1e9",
                                                           "-1", "true", "nan", "x" * 5000, "\x00", "ä¸­"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)


def _doc_keys(known: list[str]):
    """Mappings whose keys are mostly the real ones, with values of any shape."""
    return st.dictionaries(st.one_of(st.sampled_from(known), st.text(max_size=12)), VALUES, max_size=5)


CONFIG_KEYS = ["action", "penalty", "max_period_cap", "close_margin", "close_at_budget", "detector",
               "json_detector", "checkpoint", "health", "l0"]
SECTION = {"detector": ["min_period", "max_period", "min_repeats", "min_span", "near_threshold"],
           "json_detector": ["min_span", "near_threshold"],
           "checkpoint": ["store", "every", "ttl_s", "assign_keys", "enabled"],
           "health": ["stall_timeout_s", "stall_floor_s", "on_stall", "retry_after_s", "enabled"]}


@st.composite
def config_docs(draw):
    doc = draw(_doc_keys(CONFIG_KEYS))
    for name, keys in SECTION.items():
        if draw(st.booleans()):
            doc[name] = draw(st.one_of(_doc_keys(keys), VALUES))
    return {"l0": doc} if draw(st.booleans()) else doc


@FUZZ
@given(doc=config_docs())
def test_config_files_load_or_are_refused_by_name(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cfg") / "l0.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        cfg = load_server_config(path)
    except OptionError as exc:
        assert str(exc).startswith("l0: ")
    else:
        assert isinstance(cfg, ServerConfig)


@pytest.mark.parametrize("text", ["l0: [", "- 1\n- 2\n", "l0: 3\n", "\x00", "a: b: c", "{{{{", "l0:\n  detector: 7\n"])
def test_config_files_that_are_not_yaml_mappings_are_refused(tmp_path, text):
    path = tmp_path / "l0.yaml"
    path.write_text(text)
    with pytest.raises(OptionError, match="^l0: "):
        load_server_config(path)


@FUZZ
@given(xargs=st.dictionaries(st.one_of(st.sampled_from(KNOWN_OPTIONS), st.text(max_size=12).map("l0_{}".format)),
                             VALUES, max_size=4), as_json=st.booleans())
def test_request_options_parse_or_are_refused_by_name(xargs, as_json):
    try:
        params_from_xargs(xargs, ServerConfig(), as_json)
    except OptionError as exc:
        assert str(exc).startswith("l0: ")


GPU_FIELDS = ["index", "name", "uuid", "temperature_c", "power_w", "memory_used_bytes", "ecc_uncorrected",
              "retired_pages_pending", "row_remap_failure", "recovery_action", "clock_events", "lost", "errors"]


@st.composite
def telemetry_scripts(draw):
    doc = draw(_doc_keys(["gpus", "timeline"]))
    if draw(st.booleans()):
        doc["gpus"] = draw(st.lists(st.one_of(_doc_keys(GPU_FIELDS), VALUES), max_size=3))
    if draw(st.booleans()):
        doc["timeline"] = draw(st.lists(st.one_of(_doc_keys(["at_s", "gpu", "xid", "set"]), VALUES), max_size=3))
    return doc if draw(st.integers(0, 9)) else draw(VALUES)


@FUZZ
@given(doc=telemetry_scripts())
def test_telemetry_scripts_load_or_are_refused_by_name(doc):
    try:
        src = ScriptedSource(doc)
    except ValueError as exc:
        assert str(exc).startswith("l0: telemetry script")
        with pytest.raises(ValueError):
            check_script(doc)
    else:
        assert all(r.index >= 0 for r in src.read())
        src.wait_events(0)


def test_a_bad_script_rewritten_into_a_running_source_is_ignored(tmp_path, caplog):
    """The monitor thread calls read()/wait_events(): a bad rewrite must not
    raise there (it would end device health monitoring for good)."""
    path = tmp_path / "telemetry.json"
    path.write_text(json.dumps({"gpus": [{"index": 0, "name": "scripted GPU", "temperature_c": 40}]}))
    src = ScriptedSource.from_file(path)
    caplog.set_level(logging.WARNING, logger="l0")
    for n, bad in enumerate([[1, 2], {"gpus": "x"}, {"gpus": [{"temperature_c": "hot"}]},
                             {"timeline": [{"gpu": 0, "xid": 79}]}, {"timeline": [{"at_s": "soon"}]},
                             {"gpus": [{"index": -1}]}, "{not json"]):
        path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        import os
        os.utime(path, ns=(n + 1, n + 1))  # a new version even within the clock's resolution
        assert [r.temperature_c for r in src.read()] == [40]  # the script in force stays
        assert src.wait_events(0) == []
    assert sum("not reloaded" in r.getMessage() for r in caplog.records) == 7


@FUZZ
@given(doc=st.one_of(_doc_keys(["xid", "ecc_uncorrected", "temperature_c", "clock_events", "recovery_action",
                                "device_policy"]), st.dictionaries(st.just("xid"), VALUES, max_size=1)))
def test_device_policies_load_or_are_refused_by_name(doc):
    try:
        policy_from_dict(doc)
    except ValueError as exc:
        assert str(exc).startswith("l0: ")
