"""Where a fleet of `l0 serve` replicas decodes on vLLM's CPU build: every
replica's model on core 0 (vLLM's own binding) or one core each, round-robin
(what ``l0.engine.server.Server`` sets). Measured side by side in one run,
the order alternated: the time for N replicas to start together, and for
S greedy streams of T tokens spread over them. The streams' texts must be
the same either way (the binding changes where, not what, the model runs).

    .venv/bin/python bench/bench_server_cores.py            # 3 replicas, 2 rounds
    .venv/bin/python bench/bench_server_cores.py --rounds 1 --replicas 2

Prints the ratios and writes bench/results/server_cores.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048", "--enforce-eager",
        "--max-num-seqs", "16", "--seed", "0"]


def one_round(model: str, mode: str, ns, tmp: Path) -> dict:
    import httpx

    from l0.engine.server import Server

    env = {"L0_ACTION": "stop"}
    if mode == "core0":
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0"   # what vLLM picks for every server on its own
    servers = [Server(model, ARGS, env=env, log_path=tmp / f"{mode}-{i}.log") for i in range(ns.replicas)]
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.start(), servers))
        start_s = time.monotonic() - t0

        def stream(job):
            srv, i = job
            r = httpx.post(srv.url + "/v1/completions", timeout=600, json={
                "model": model, "prompt": f"Story number {i}:", "max_tokens": ns.tokens, "temperature": 0.0,
                "ignore_eos": True})
            r.raise_for_status()
            return r.json()["choices"][0]["text"]
        jobs = [(servers[i % len(servers)], i) for i in range(ns.streams)]
        t1 = time.monotonic()
        with ThreadPoolExecutor(len(jobs)) as pool:
            texts = list(pool.map(stream, jobs))
        return {"mode": mode, "start_s": round(start_s, 2), "streams_s": round(time.monotonic() - t1, 2),
                "texts": texts}
    finally:
        for s in servers:
            s.stop()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--streams", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs, order alternated")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "server_cores.json"))
    ns = ap.parse_args(argv)
    from l0.engine.models import prepare_smollm2

    model = str(prepare_smollm2())
    rows = []
    with tempfile.TemporaryDirectory(prefix="l0-cores-") as tmp:
        for k in range(ns.rounds):
            for mode in (("spread", "core0") if k % 2 == 0 else ("core0", "spread")):
                row = one_round(model, mode, ns, Path(tmp))
                print(f"round {k} {mode:>6}: {ns.replicas} up in {row['start_s']} s, "
                      f"{ns.streams} streams x {ns.tokens} tokens in {row['streams_s']} s", flush=True)
                rows.append(row)
    texts = {json.dumps(r["texts"]) for r in rows}

    def med(mode, key):
        return statistics.median(r[key] for r in rows if r["mode"] == mode)
    doc = {"meta": {"host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": len(
               os.sched_getaffinity(0)), "replicas": ns.replicas, "streams": ns.streams, "tokens": ns.tokens,
               "rounds": ns.rounds, "model": "SmolLM2-135M-Instruct (float32, vLLM CPU build)"},
           "runs": [{k: v for k, v in r.items() if k != "texts"} for r in rows],
           "same_texts": len(texts) == 1,
           "start_ratio_core0_over_spread": round(med("core0", "start_s") / med("spread", "start_s"), 3),
           "streams_ratio_core0_over_spread": round(med("core0", "streams_s") / med("spread", "streams_s"), 3)}
    print(f"core 0 / spread (medians): start {doc['start_ratio_core0_over_spread']}x, "
          f"streams {doc['streams_ratio_core0_over_spread']}x; same texts: {doc['same_texts']}")
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


if __name__ == "__main__":
    main()
