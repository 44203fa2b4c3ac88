"""L0 in a real tritonserver (2.51, from the nvidia-pytriton wheel, loopback):
the example repository `configs/triton` — the deterministic looper LLM, L0's
ensemble step after it, and L0's BLS wrapper around it — over gRPC streaming
(tritonclient) and HTTP `generate_stream`.

One server for the module; its repository is a copy of `configs/triton` with
the BLS response timeout lowered to 3 s (the upstream-error test waits it out).
The stub-kill test reloads models, so it runs last.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from l0.engine.config import ServerConfig
from l0.engine.ops.detect_reference import scan
from l0.engine.triton.guard import parse_options

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[3]
PROMPT = [5, 6, 7]
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    from l0.engine.triton.server import TritonServer

    tmp = tmp_path_factory.mktemp("triton")
    repo = tmp / "repo"
    shutil.copytree(ROOT / "configs" / "triton", repo)
    cfg = repo / "l0_bls" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"response_timeout_s" value { string_value: "30" }',
                                           '"response_timeout_s" value { string_value: "3" }'))
    ts = TritonServer(repo, log_path=tmp / "triton.log").start()
    yield ts
    ts.stop()


# -- clients ---------------------------------------------------------------------
def _inputs(mode: str, options: dict | None = None, max_tokens: int = MAX_TOKENS):
    import tritonclient.grpc as g

    def t(name, arr, dtype):
        x = g.InferInput(name, list(arr.shape), dtype)
        x.set_data_from_numpy(arr)
        return x
    ins = [t("input_ids", np.array(PROMPT, dtype=np.int64), "INT64"),
           t("max_tokens", np.array([max_tokens], dtype=np.int32), "INT32"),
           t("mode", np.array([mode.encode()], dtype=np.object_), "BYTES")]
    if options is not None:
        ins.append(t("l0_options", np.array([json.dumps(options).encode()], dtype=np.object_), "BYTES"))
    return ins


def grpc_stream(ts, model: str, mode: str, request_id: str, options_tensor: dict | None = None,
                parameters: dict | None = None, max_tokens: int = MAX_TOKENS) -> dict:
    """Every response of one streamed request: ids, texts, events, stopped
    flags, the error (if any), and whether a final flag arrived."""
    import tritonclient.grpc as g

    out = {"ids": [], "text": "", "events": [], "stopped": [], "error": None, "final": False, "responses": 0}
    q: queue.Queue = queue.Queue()
    client = g.InferenceServerClient(ts.grpc_url)
    client.start_stream(callback=lambda result=None, error=None: q.put((result, error)))
    try:
        client.async_stream_infer(model, _inputs(mode, options_tensor, max_tokens), request_id=request_id,
                                  parameters=parameters or {}, enable_empty_final_response=True)
        while True:
            result, error = q.get(timeout=60)
            if error is not None:
                out["error"] = str(error)
                break
            out["responses"] += 1
            ids = result.as_numpy("output_ids") if model != "looper" else result.as_numpy("token_ids")
            if ids is not None:
                out["ids"] += ids.tolist()
                text = result.as_numpy("output_text" if model != "looper" else "text_output")
                out["text"] += b"".join(text.reshape(-1)).decode() if text is not None else ""
            ev = None if model == "looper" else result.as_numpy("l0_event")
            if ev is not None and ev[0]:
                out["events"].append(json.loads(ev[0]))
            st = None if model == "looper" else result.as_numpy("l0_stopped")
            if st is not None:
                out["stopped"].append(bool(st[0]))
            params = result.get_response(as_json=True).get("parameters", {})
            if params.get("triton_final_response", {}).get("bool_param"):
                out["final"] = True
                break
    finally:
        client.stop_stream()
        client.close()
    return out


def http_stream(ts, model: str, body: dict) -> tuple[int, list[dict]]:
    with httpx.stream("POST", f"{ts.http_url}/v2/models/{model}/generate_stream", json=body, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        return r.status_code, chunks


def _ids(chunk: dict) -> list[int]:
    v = chunk.get("output_ids", [])
    return v if isinstance(v, list) else [v]


@pytest.fixture(scope="module")
def looper_runs(triton):
    """The LLM alone, per mode: the ground truth L0 must pass through."""
    return {m: grpc_stream(triton, "looper", m, f"truth-{m}") for m in ("normal", "loop")}


def _expected_cut(ids: list[int]) -> int:
    at = scan(ids, parse_options(None, ServerConfig(action="stop")).params, 512)
    assert at is not None
    return at[0]


# -- streaming through the ensemble and BLS --------------------------------------------
@pytest.mark.parametrize("model", ["l0_ensemble", "l0_bls"])
def test_a_normal_stream_is_untouched(triton, looper_runs, model):
    truth = looper_runs["normal"]
    got = grpc_stream(triton, model, "normal", f"{model}-normal")
    assert len(truth["ids"]) == MAX_TOKENS
    assert got["ids"] == truth["ids"] and got["text"] == truth["text"]  # byte for byte
    assert got["events"] == [] and not any(got["stopped"]) and got["final"] and got["error"] is None


@pytest.mark.parametrize("model", ["l0_ensemble", "l0_bls"])
def test_a_looping_stream_is_stopped_with_the_reason(triton, looper_runs, model):
    truth = looper_runs["loop"]
    at = _expected_cut(truth["ids"])
    got = grpc_stream(triton, model, "loop", f"{model}-loop")
    assert got["ids"] == truth["ids"][:at] and got["text"] == "".join(f" w{t}" for t in truth["ids"][:at])
    assert got["events"] == [{"event": "l0.intervention", "kind": "loop", "period": 5, "token_index": at - 1,
                              "action": "stop"}]
    assert got["stopped"][-1] is True and got["final"] and got["error"] is None
    if model == "l0_bls":  # BLS ends the stream at the verdict: nothing after it
        assert got["responses"] == at  # one per token, the last one carries the final flag


def test_observe_passes_everything_and_reports(triton, looper_runs):
    truth = looper_runs["loop"]
    got = grpc_stream(triton, "l0_bls", "loop", "bls-observe", options_tensor={"l0_action": "observe"})
    assert got["ids"] == truth["ids"] and got["events"][0]["action"] == "observe"
    assert not any(got["stopped"])


def test_http_generate_stream_through_both(triton, looper_runs):
    truth = looper_runs["loop"]
    at = _expected_cut(truth["ids"])
    for model in ("l0_ensemble", "l0_bls"):
        code, chunks = http_stream(triton, model, {"id": f"http-{model}", "input_ids": PROMPT,
                                                   "max_tokens": MAX_TOKENS, "mode": "loop"})
        assert code == 200
        ids = [t for c in chunks for t in _ids(c)]
        assert ids == truth["ids"][:at]
        events = [json.loads(c["l0_event"]) for c in chunks if c.get("l0_event")]
        assert [e["token_index"] for e in events] == [at - 1]
    code, chunks = http_stream(triton, "l0_ensemble", {"id": "http-normal", "input_ids": PROMPT,
                                                       "max_tokens": MAX_TOKENS, "mode": "normal"})
    assert code == 200 and [t for c in chunks for t in _ids(c)] == looper_runs["normal"]["ids"]


# -- errors ------------------------------------------------------------------------
def test_an_upstream_error_reaches_the_client(triton, looper_runs):
    first5 = looper_runs["normal"]["ids"][:5]  # error:5 = the normal stream's first 5 tokens, then an error
    got = grpc_stream(triton, "l0_ensemble", "error:5", "ens-error")
    # The ensemble fails the request as soon as the LLM's error arrives, which
    # may overtake the L0 step's last responses: a prefix reaches the client.
    assert got["ids"] == first5[:len(got["ids"])]
    assert got["error"] == "in ensemble 'l0_ensemble', looper: simulated failure after 5 tokens"
    # BLS: Triton 2.51 never hands a BLS caller an error sent with the final
    # flag; L0's response timeout ends the stream instead of hanging it.
    got = grpc_stream(triton, "l0_bls", "error:5", "bls-error")
    assert got["ids"] == first5 and "l0: the LLM (looper) sent nothing for 3 s" in got["error"]
    # ... and the model still serves.
    assert grpc_stream(triton, "l0_bls", "normal", "bls-after-error")["final"]


def test_bad_options_get_an_error_naming_the_option(triton):
    got = grpc_stream(triton, "l0_ensemble", "normal", "ens-bad", parameters={"l0_min_repeats": 99999})
    assert "l0: option l0_min_repeats=99999 is out of range" in got["error"] and got["ids"] == []
    got = grpc_stream(triton, "l0_bls", "normal", "bls-bad", options_tensor={"l0_action": "penalize"})
    assert "l0_action='penalize' needs the LLM's logits" in got["error"]
    got = grpc_stream(triton, "l0_bls", "normal", "bls-bad2", options_tensor={"l0_nope": 1})
    assert "unknown option 'l0_nope'" in got["error"]
    code, chunks = http_stream(triton, "l0_bls", {"input_ids": PROMPT, "mode": "normal", "l0_action": "bogus"})
    assert code == 400 and "l0_action='bogus' is not one of" in chunks[0]["error"]
    code, chunks = http_stream(triton, "l0_ensemble", {"input_ids": PROMPT, "mode": "normal"})  # no id
    assert "has no id" in chunks[0]["error"]


# -- the dead stub ------------------------------------------------------------------
def _probe(ts, *extra: str) -> tuple[int, list[dict]]:
    argv = [sys.executable, "-m", "l0.cli", "triton-probe", ts.http_url, "--model", "l0_step",
            "--model", "l0_bls", "--model", "looper",
            "--payload", 'looper={"input_ids": [1], "max_tokens": 1}',
            # l0_bls answers the probe itself, but Triton wants its required inputs first
            "--payload", 'l0_bls={"input_ids": [1], "l0_probe": true}', *extra]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    return p.returncode, [json.loads(x) for x in p.stdout.splitlines() if x.strip()]


def _stub_pid(ts, model: str) -> int:
    # This server's stub only: its argv names the model file in this repository.
    out = subprocess.run(["pgrep", "-f", f"triton_python_backend_stub {ts.repo}/{model}/1/model.py"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_a_killed_stub_is_found_and_reloaded_by_the_probe(triton, looper_runs):
    rc, res = _probe(triton)
    assert rc == 0 and [r["status"] for r in res] == ["ok", "ok", "ok"]
    os.kill(_stub_pid(triton, "l0_step"), signal.SIGKILL)
    time.sleep(1.0)
    # Triton still calls the model READY, yet every request fails.
    assert httpx.get(f"{triton.http_url}/v2/models/l0_step/ready").status_code == 200
    # (2 tokens: each LLM response becomes a request the dead stub fails after
    # ~1 s, and a probe would queue behind all of them.)
    assert "is not healthy" in grpc_stream(triton, "l0_ensemble", "normal", "after-kill", max_tokens=2)["error"]
    rc, res = _probe(triton)
    assert rc == 1 and res[0]["status"] == "dead" and "is not healthy" in res[0]["detail"], res
    assert [r["status"] for r in res[1:]] == ["ok", "ok"]
    rc, res = _probe(triton, "--reload")
    assert rc == 0 and [r["status"] for r in res] == ["reloaded", "ok", "ok"]
    got = grpc_stream(triton, "l0_ensemble", "normal", "after-reload")  # the ensemble came back too
    assert got["ids"] == looper_runs["normal"]["ids"] and got["final"]
