"""L0 in a real Model Runner V2 engine, on this CPU.

vLLM's CPU build falls back to the V1 runner because Triton has no CPU
backend here; V2's Triton kernels run in Triton's interpreter instead
(``TRITON_INTERPRET=1``), and a test-only ``sitecustomize``
(``tests/engine/vllm/v2_cpu/``) answers vLLM's "is Triton usable" check. The model
runner, its sampler, its logits-processor loader and L0 are the real ones;
only the kernels run slowly (about 8 tokens/s for a batch of four).

One offline engine (SmolLM2, greedy), L0 named as ``l0 serve`` names it
(the entry point is installed too and stands down). Checked against the
labelled set, which was recorded under the V1 runner with L0 off: runaways
are stopped with every token before the stop equal to the recording;
finished answers are identical; the Pluto list is stopped at the same token
as under V1; the frontend validator refuses a bad option; the keyed
request's record is finished with its ids, by the finisher thread.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DATA = HERE.parents[1] / "data" / "smollm2_labelled.jsonl"
ROWS = {r["id"]: r for r in map(json.loads, DATA.read_text().splitlines()) if r}
# Two runaways, two short finished answers, and one with L0 off.
PICK = {"p00": "stop", "p20": "stop", "p14": "stop", "p11": "off"}
MAX_TOKENS = 400


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory):
    from l0.engine.models import prepare_smollm2
    work = tmp_path_factory.mktemp("v2")
    store = f"sqlite://{work}/ck.sqlite3"
    spec = {"model": str(prepare_smollm2()), "logits_processors": ["l0.vllm:L0LogitsProcessor"], "store": store,
            "records": ["v2-p00"],
            "bad": {"range": {"l0_max_period": 100000}, "unknown": {"l0_bogus": 1}},
            "requests": [{"id": i, "prompt": ROWS[i]["prompt"], "max_tokens": MAX_TOKENS,
                          "xargs": {"l0_action": a, "l0_key": f"v2-{i}"}} for i, a in PICK.items()]}
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_USE_V2_MODEL_RUNNER="1", TRITON_INTERPRET="1", L0_TEST_TRITON_CPU="1",
               L0_ACTION="stop", L0_CHECKPOINT_STORE=store,
               PYTHONPATH=os.pathsep.join([str(HERE / "v2_cpu"), str(ROOT / "plugin"),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("L0_CONFIG", None)
    for _attempt in range(2):
        proc = subprocess.run([sys.executable, str(HERE / "v2_engine_run.py"), str(work / "spec.json")],
                              capture_output=True, text=True, timeout=900, env=env, cwd=work)
        log = proc.stdout + proc.stderr
        # vLLM's start-up profile run samples logits from a dummy forward pass
        # (no request, before L0 sees any); now and then a row is all NaN,
        # where a GPU's argmax returns an index and Triton's interpreter
        # raises. That start is retried once; nothing after it is.
        if not (proc.returncode and "All-NaN slice encountered" in log and "_dummy_sampler_run" in log):
            break
    (work / "engine.log").write_text(log)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, log[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])
    out["log"] = log
    out["by_id"] = {r["id"]: r for r in out["results"]}
    return out


def test_the_engine_ran_model_runner_v2_with_l0(v2_run):
    log = v2_run["log"]
    assert "Using V2 Model Runner" in log
    assert log.count("l0: logits processor on tp rank 0: v2 runner") == 1  # the entry point stood down


def test_runaways_are_stopped_where_the_v1_runner_stops_them(v2_run):
    by_id = v2_run["by_id"]
    for rid in ("p00", "p20"):
        got, ref = by_id[rid], ROWS[rid]["token_ids"]
        n = len(got["token_ids"])
        assert got["finish_reason"] == "stop" and n < MAX_TOKENS, rid
        assert got["token_ids"][:-1] == ref[:n - 1], rid  # everything before the stop, as recorded under V1
    dec = json.JSONDecoder()
    events = [dec.raw_decode(ln, ln.index('{"event"'))[0] for ln in v2_run["log"].splitlines()
              if '{"event": "l0.intervention"' in ln and not ln.startswith("RESULT ")]
    pluto = [e for e in events if e["key"] == "v2-p00"]
    assert pluto and pluto[0]["action"] == "stop" and pluto[0]["kind"] == "near_loop"
    # docs/engine.md, under V1: {"kind": "near_loop", "period": 5, "token_index": 237, "action": "stop"}
    assert (pluto[0]["period"], pluto[0]["token_index"]) == (5, 237)
    assert len(by_id["p00"]["token_ids"]) == 238


def test_finished_answers_and_l0_off_are_unchanged(v2_run):
    by_id = v2_run["by_id"]
    for rid in ("p14", "p11"):
        got = by_id[rid]
        assert got["finish_reason"] == "stop"
        assert got["token_ids"] == ROWS[rid]["token_ids"][:len(got["token_ids"])], rid
        assert got["token_ids"][-1] == 2 or len(got["token_ids"]) == len(ROWS[rid]["token_ids"])


def test_the_v2_frontend_refuses_a_bad_option(v2_run):
    errors = v2_run["errors"]
    assert "l0_max_period=100000 is out of range" in errors["range"]
    assert "l0_bogus" in errors["unknown"]


def test_the_keyed_record_is_finished_by_the_engine(v2_run):
    rec = v2_run["records"]["v2-p00"]
    assert rec is not None and rec["finished"] and rec["finish_reason"] == "stop"
    assert rec["output_ids"] == v2_run["by_id"]["p00"]["token_ids"]
    assert [i["action"] for i in rec["interventions"]] == ["stop"]
