"""Structured outputs on the real engine (vLLM CPU build, SmolLM2, greedy): L0
never breaks a grammar, and a loop or an exhausted budget in a JSON answer ends
in valid, closed JSON.

One ``l0 serve`` for the module (action stop, tool calls through the JSON-schema
grammar). The JSON prompt set is ``tests/data/json_prompts.json`` with answers
recorded with L0 off (``smollm2_json.jsonl``, ``build_json_set.py``).
"""
from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from l0.client.stream import stream_chat
from services import settled_record

pytestmark = pytest.mark.vllm

DATA = Path(__file__).resolve().parents[2] / "data"
PROMPTS = {r["id"]: r for r in json.loads((DATA / "json_prompts.json").read_text())}
RECORDED = [json.loads(line) for line in (DATA / "smollm2_json.jsonl").read_text().splitlines() if line.strip()]
CLEAN = [r for r in RECORDED if r["label"] == "clean"]
RUNAWAY = [r for r in RECORDED if r["label"] == "runaway"]
PLANETS = {"type": "object", "properties": {"planets": {"type": "array", "items": {
    "type": "object", "properties": {"index": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["index", "name"]}}}, "required": ["planets"]}
PLANETS_PROMPT = "List the planets of the solar system as JSON with their index."
CLOSE_MARGIN = 8  # the server default


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    model = str(prepare_smollm2())
    tmp = tmp_path_factory.mktemp("structured")
    args = ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--max-model-len", "2048",
            "--enforce-eager", "--max-num-seqs", "64", "--seed", "0",
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    # Named/required tool choice through vLLM's JSON-schema grammar (hermes
    # otherwise serves them with a structural tag around its native format).
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": f"sqlite://{tmp}/ck.db",
           "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0",
           "VLLM_CPU_KVCACHE_SPACE": "2"}  # one batch of planets, runaways, room and budget jobs
    with Server(model, args, env=env, log_path=tmp / "server.log") as srv:
        srv.model, srv.log, srv.store = model, tmp / "server.log", f"sqlite://{tmp}/ck.db"
        yield srv


@pytest.fixture(scope="module")
def tokenizer(server):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(server.model)


def max_depth(value) -> int:
    """Containers nested at the deepest point of a JSON value."""
    if isinstance(value, dict):
        return 1 + max((max_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((max_depth(v) for v in value), default=0)
    return 0


def valid(text: str, schema: dict) -> bool:
    import jsonschema
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def ask(server, row_or_prompt, max_tokens: int, action: str, key: str | None = None):
    """One greedy streamed chat with a JSON-schema response format (a prompt
    string: the planets schema)."""
    row = row_or_prompt if isinstance(row_or_prompt, dict) else {"id": "planets", "prompt": row_or_prompt,
                                                                 "schema": PLANETS}
    xargs = {"l0_action": action}
    if key:
        xargs["l0_key"] = key
    return stream_chat(server.url, server.model, row["prompt"], max_tokens, xargs,
                       response_format={"type": "json_schema",
                                        "json_schema": {"name": row["id"], "schema": row["schema"]}})


def interventions(server, key=None) -> list[dict]:
    lines = [json.loads(line[line.index("{"):]) for line in server.log.read_text().splitlines()
             if '"event": "l0.intervention"' in line]
    return [x for x in lines if key is None or x["key"] == key]


# -- a loop in a JSON answer ----------------------------------------------------

def test_planets_loop_ends_in_valid_closed_json(server, decoded):
    from l0.engine.checkpoint import open_store

    off, on = decoded["planets"]
    assert off.status == 200 and off.finish_reason == "length" and len(off.token_ids) == 600
    assert not valid(off.text, PLANETS)
    assert on.status == 200 and on.finish_reason == "stop"
    assert valid(on.text, PLANETS), on.text[-200:]
    assert len(on.token_ids) <= 300  # far fewer than L0 off's 600
    n = len(on.token_ids)
    # The loop fired inside a record: close mode wrote the shortest valid end.
    lines = interventions(server, "planets-1")
    assert [(x["action"], x.get("reason"), x.get("closed")) for x in lines] == [
        ("close", "loop", None), ("stop", None, "loop")]
    assert lines[0]["kind"] == "near_loop" and lines[0]["depth"] == 3 and lines[1]["token_index"] == n - 1
    # The checkpoint record says so too: closed on a loop, at which token
    # (written off the decode path: wait for the writer to land it).
    rec = settled_record(open_store(server.store).get, "planets-1", ready=lambda rec: bool(rec.interventions))
    assert rec is not None and rec.interventions[0] == lines[0]
    # Everything before close mode began is what L0 off wrote.
    assert on.token_ids[:lines[0]["token_index"]] == off.token_ids[:lines[0]["token_index"]]


def call_tool(server, action: str):
    """One greedy non-streamed chat whose named tool call takes the planets
    schema (600 tokens at most); the response's JSON."""
    import httpx

    tools = [{"type": "function", "function": {"name": "record_planets", "description": "Record planets",
                                               "parameters": PLANETS}}]
    body = {"model": server.model, "messages": [{"role": "user", "content": PLANETS_PROMPT}],
            "temperature": 0, "max_tokens": 600, "tools": tools, "vllm_xargs": {"l0_action": action},
            "tool_choice": {"type": "function", "function": {"name": "record_planets"}}}
    resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=600)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_tool_call_arguments_that_loop_are_closed(decoded):
    off, on = decoded["tool"]
    assert off["choices"][0]["finish_reason"] == "length" and off["usage"]["completion_tokens"] == 600
    choice = on["choices"][0]
    assert choice["finish_reason"] == "stop"
    args = choice["message"]["tool_calls"][0]["function"]["arguments"]
    assert valid(args, PLANETS), args[-200:]
    assert on["usage"]["completion_tokens"] <= 300


def test_json_runaways_end_valid(decoded):
    """Recorded runaways (each ran to 1024 tokens with L0 off; the first 16 of
    the set here, all of them in bench/bench_structured.py): L0 stop ends
    every one early with JSON that validates against its schema."""
    rows = RUNAWAY[:16]
    got = decoded["runaways"]
    bad = {r["id"]: g.text[-120:] for r, g in zip(rows, got)
           if g.finish_reason != "stop" or not valid(g.text, PROMPTS[r["id"]]["schema"])}
    assert not bad
    assert max(len(g.token_ids) for g in got) < 1024


# -- the budget -------------------------------------------------------------------

def margin(tokenizer, row) -> int:
    from l0.engine import jsonstate
    return jsonstate.schema_margin(PROMPTS[row["id"]]["schema"],
                                   lambda t: tokenizer.encode(t, add_special_tokens=False), CLOSE_MARGIN)


def feasible(tokenizer) -> list[dict]:
    """Clean answers long enough that half their length still holds the
    schema's minimal instance (a budget below that can't be saved)."""
    return [r for r in CLEAN if math.ceil(0.5 * len(r["token_ids"])) >= margin(tokenizer, r) + 2]


def budget_jobs(tokenizer) -> tuple[list[dict], list[tuple]]:
    rows = feasible(tokenizer)
    return rows, [(PROMPTS[r["id"]], math.ceil(frac * len(r["token_ids"])), action)
                  for r in rows for frac in (0.5, 0.8) for action in ("off", "stop")]


def room_jobs(tokenizer) -> list[tuple]:
    """Each clean answer at 1024 tokens, and at a budget that leaves more than
    the row's close margin (plus one per container and the stop token) after
    its natural end."""
    jobs = []
    for r in CLEAN:
        depth = max_depth(json.loads(r["text"]))
        jobs += [(PROMPTS[r["id"]], 1024, "stop"),
                 (PROMPTS[r["id"]], len(r["token_ids"]) + margin(tokenizer, r) + depth + 2, "stop")]
    return jobs


@pytest.fixture(scope="module")
def decoded(server, tokenizer):
    """The long runs of this module's tests, all in flight at once (the 600-token
    runs of L0 off bound the time; greedy: a request's tokens do not depend on
    what else is in the batch): group -> results in job order."""
    groups = {
        "planets": [lambda: ask(server, PLANETS_PROMPT, 600, "off"),
                    lambda: ask(server, PLANETS_PROMPT, 600, "stop", "planets-1")],
        "tool": [lambda: call_tool(server, "off"), lambda: call_tool(server, "stop")],
        "runaways": [lambda r=r: ask(server, PROMPTS[r["id"]], 1024, "stop") for r in RUNAWAY[:16]],
        "room": [lambda job=job: ask(server, *job) for job in room_jobs(tokenizer)],
        "budget": [lambda job=job: ask(server, *job) for job in budget_jobs(tokenizer)[1]],
    }
    with ThreadPoolExecutor(max_workers=sum(len(fs) for fs in groups.values())) as pool:
        futs = {name: [pool.submit(f) for f in fs] for name, fs in groups.items()}
        return {name: [f.result() for f in fs] for name, fs in futs.items()}


@pytest.fixture(scope="module")
def budget_runs(decoded, tokenizer):
    rows, jobs = budget_jobs(tokenizer)
    return rows, jobs, decoded["budget"]


def test_the_budget_set_is_large_enough(tokenizer):
    assert len(CLEAN) >= 12 and len(feasible(tokenizer)) >= 12


@pytest.mark.parametrize("frac", [0.5, 0.8])
def test_tight_budgets_end_valid_with_l0_and_never_without(budget_runs, frac):
    rows, jobs, got = budget_runs
    on = [(job, g) for job, g in zip(jobs, got) if job[2] == "stop" and job[1] == math.ceil(
        frac * len(next(r for r in rows if r["id"] == job[0]["id"])["token_ids"]))]
    off = [(job, g) for job, g in zip(jobs, got) if job[2] == "off" and job[1] == math.ceil(
        frac * len(next(r for r in rows if r["id"] == job[0]["id"])["token_ids"]))]
    assert len(on) == len(off) == len(rows)
    bad = {job[0]["id"]: g.text[-100:] for job, g in on if not valid(g.text, job[0]["schema"])}
    assert not bad
    assert all(g.finish_reason == "stop" and len(g.token_ids) <= job[1] for job, g in on)
    assert sum(valid(g.text, job[0]["schema"]) for job, g in off) == 0  # cut by max_tokens: never valid


def test_answers_that_finish_with_room_left_are_unchanged(decoded, tokenizer):
    """At 1024 tokens, and at a budget that leaves more than the row's close
    margin (plus one per container and the stop token) after the answer's
    natural end, every clean answer is byte-identical to L0 off's recording."""
    jobs = room_jobs(tokenizer)
    got = decoded["room"]
    for (row, budget, action), g in zip(jobs, got):
        rec = next(r for r in CLEAN if r["id"] == row["id"])
        assert g.token_ids == rec["token_ids"], (row["id"], budget, action)
        assert g.finish_reason == "stop"


# -- grammars that are not JSON: never broken ---------------------------------------

COLORS = r"((red|green|blue), )+(red|green|blue)\."
GRAMMAR_CASES = {
    "regex": ("List colors.", {"regex": COLORS}, COLORS),
    "ebnf": ("List colors.", {"grammar": 'root ::= color (", " color)* "."\ncolor ::= "red" | "green" | "blue"'},
             r"(red|green|blue)(, (red|green|blue))*\."),
    # A choice and a regex that force a repetition: L0 sees a loop but the
    # grammar allows nothing else; it must let it finish.
    "choice": ("Laugh out loud.", {"choice": ["ha " * 60 + "ha!", "ho " * 60 + "ho!"]}, r"(ha ){60}ha!|(ho ){60}ho!"),
    "forced_regex": ("Say ab many times.", {"regex": r"(ab ){40}ab\."}, r"(ab ){40}ab\."),
}


@pytest.mark.parametrize("case", sorted(GRAMMAR_CASES))
def test_grammar_rows_are_never_broken(server, case):
    import httpx

    prompt, so, pattern = GRAMMAR_CASES[case]

    def call(action):
        body = {"model": server.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": 160, "structured_outputs": so, "vllm_xargs": {"l0_action": action, "l0_key": case}}
        resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=600)
        assert resp.status_code == 200, resp.text  # never a 500
        return resp.json()["choices"][0]

    with ThreadPoolExecutor(2) as pool:
        off, on = pool.map(call, ("off", "stop"))
    assert on["finish_reason"] == "stop"
    assert re.fullmatch(pattern, on["message"]["content"]), on["message"]["content"][-100:]
    lines = interventions(server, case)
    if case in ("regex", "ebnf"):
        # The model loops to max_tokens without L0; with it the stop token is
        # masked (the grammar needs its "."), so L0 penalizes the loop instead
        # and the stop lands as soon as the grammar allows it.
        assert off["finish_reason"] == "length"
        assert lines[0]["action"] == "penalize" and lines[0]["reason"] == "grammar"
        assert lines[-1]["action"] == "stop"
    else:
        assert on["message"]["content"] == off["message"]["content"]
        assert all(x["reason"] == "grammar" for x in lines if x["action"] == "penalize")
