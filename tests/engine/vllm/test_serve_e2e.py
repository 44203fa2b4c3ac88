"""`l0 serve` against the real engine (vLLM CPU build, SmolLM2-135M-Instruct,
greedy), over HTTP streaming, on the labelled set in tests/data.

One server for the module. Each prompt runs with L0 off and with L0 stop in
the same session, so both sides see the same engine build and numerics.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from l0.engine.config import ERR_RANGE
from l0.client.stream import stream_chat

pytestmark = pytest.mark.vllm

DATA = Path(__file__).resolve().parents[2] / "data" / "smollm2_labelled.jsonl"
MAX_TOKENS = 1024
ROWS = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
RUNAWAY = [r for r in ROWS if r["label"] == "runaway"]
FINISHED = [r for r in ROWS if r["label"] == "finished"]
# Outputs the current default parameters get wrong, kept in the set on purpose
# (see docs/limits.md). The tests below fail if one of them starts
# passing, so this list can only shrink.
KNOWN_MISSED_RUNAWAY: set[str] = set()
KNOWN_CHANGED_FINISHED: set[str] = set()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    model = str(prepare_smollm2())
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--max-model-len", "2048",
            "--enforce-eager", "--max-num-seqs", "64", "--seed", "0"]
    store = f"sqlite://{tmp_path_factory.mktemp('ck')}/ck.db"
    # KV for the whole labelled set at once, both ways (about 45k tokens; 3 GiB holds 70k)
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": store, "VLLM_CPU_KVCACHE_SPACE": "3"}
    with Server(model, args, env=env, log_path=log) as srv:
        srv.model = model
        srv.log = log
        yield srv


def _run_all(server, *jobs):
    """Each ``(rows, xargs)`` job's rows, every job at once (one batch of the
    server's 64 sequences, the rest queued: greedy decoding gives a request
    the same tokens whatever else is in the batch). Keys: the row id for the
    first job, ``<id>-<action>`` for the others (no two requests in flight
    share one). One dict of results per job."""
    with ThreadPoolExecutor(max_workers=sum(len(rows) for rows, _ in jobs)) as pool:
        futs = [{r["id"]: pool.submit(stream_chat, server.url, server.model, r["prompt"], MAX_TOKENS,
                                      dict(xargs, l0_key=r["id"] if j == 0 else f"{r['id']}-{xargs['l0_action']}"))
                 for r in rows} for j, (rows, xargs) in enumerate(jobs)]
        return [{k: f.result() for k, f in fs.items()} for fs in futs]


OBSERVED = ("p00", "p20", "p01", "p14")


@pytest.fixture(scope="module")
def runs(server):
    # stop, off and a sample in observe side by side: the off run's runaways decode 1024 tokens
    # each, and the others fit beside them in the batch (or take the places the stopped ones free)
    sample = [r for r in ROWS if r["id"] in OBSERVED]
    on, off, obs = _run_all(server, (ROWS, {"l0_action": "stop"}), (ROWS, {"l0_action": "off"}),
                            (sample, {"l0_action": "observe"}))
    return off, on, obs


def test_labels_still_hold_with_l0_off(runs):
    off, _, _ = runs
    for r in ROWS:
        got = off[r["id"]]
        expected = "length" if r["label"] == "runaway" else "stop"
        assert got.finish_reason == expected, (r["id"], got.finish_reason)


def test_every_runaway_is_stopped(runs):
    off, on, _ = runs
    stopped, missed = {}, set()
    for r in RUNAWAY:
        got, ref = on[r["id"]], off[r["id"]]
        if got.finish_reason == "length":
            missed.add(r["id"])
            continue
        assert got.finish_reason == "stop", r["id"]
        n = len(got.token_ids)
        assert n < MAX_TOKENS, r["id"]
        # Everything before the forced stop token is exactly what L0-off produced.
        assert got.token_ids[:-1] == ref.token_ids[:n - 1], r["id"]
        stopped[r["id"]] = n
    assert missed == KNOWN_MISSED_RUNAWAY, f"missed runaways: {sorted(missed)}"
    print("stopped at", stopped)


def test_finished_outputs_unchanged(runs):
    off, on, _ = runs
    changed = {r["id"] for r in FINISHED if on[r["id"]].token_ids != off[r["id"]].token_ids}
    assert changed == KNOWN_CHANGED_FINISHED, f"changed finished outputs: {sorted(changed)}"


def test_pluto_stopped_well_before_max_tokens(runs):
    _, on, _ = runs
    got = on["p00"]
    assert got.finish_reason == "stop"
    assert len(got.token_ids) <= MAX_TOKENS // 3
    assert got.text.count("Pluto") >= 10


def test_count_to_50_identical(runs):
    off, on, _ = runs
    assert on["p01"].token_ids == off["p01"].token_ids
    assert on["p01"].finish_reason == "stop"


def test_observe_changes_nothing(server, runs):
    off, _, obs = runs
    for rid in OBSERVED:
        assert obs[rid].token_ids == off[rid].token_ids, rid


def test_intervention_logged_once_per_request(server, runs):
    lines = [json.loads(line[line.index("{"):]) for line in server.log.read_text().splitlines()
             if '"event": "l0.intervention"' in line]
    stop_lines = [x for x in lines if x["action"] == "stop"]
    keys = [x["key"] for x in stop_lines]
    assert len(keys) == len(set(keys))
    pluto = [x for x in stop_lines if x["key"] == "p00"][0]
    assert pluto["kind"] in ("loop", "near_loop") and pluto["period"] > 0
    assert pluto["token_index"] == len(runs[1]["p00"].token_ids) - 1


@pytest.mark.parametrize("xargs,fragment", [
    ({"l0_max_period": 100000}, ERR_RANGE.format(name="l0_max_period", value=100000, lo=1, hi=512)),
    ({"l0_action": "explode"}, "l0_action='explode' is not one of"),
    ({"l0_near_threshold": "high"}, "l0_near_threshold='high' must be a number"),
    ({"l0_min_period": 9, "l0_max_period": 4}, "must be <= l0_max_period"),
    ({"l0_bogus": 1}, "unknown option 'l0_bogus'"),
    ({"l0_key": "has space"}, "l0_key must be"),
], ids=["max_period_over_cap", "bad_action", "threshold_not_number", "period_order", "unknown", "bad_key"])
def test_bad_xargs_get_http_400(server, xargs, fragment):
    import httpx

    got = stream_chat(server.url, server.model, "hi", 4, xargs)  # streaming
    assert got.status == 400
    assert fragment in got.error
    resp = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "model": server.model, "prompt": "hi", "max_tokens": 4, "vllm_xargs": xargs})
    assert resp.status_code == 400 and fragment in resp.json()["error"]["message"]
