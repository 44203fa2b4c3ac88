"""Load without confounds: one server at a time, L0's modes switched per
request on that one server.

(a) **Mode cost** — for each model (SmolLM2, and a tiny random model where
    the model step is so cheap that L0's own per-step cost shows) and each
    checkpoint store (SQLite, Redis), one ``l0 serve``; at each concurrency,
    rounds of three runs with ``l0_action`` off (no key: no checkpoint) /
    observe / stop (keyed: checkpointed), the order rotated every round, all
    requests ``ignore_eos`` with the same ``max_tokens`` so every run decodes
    the same number of tokens. Throughput (tokens/s), p50/p99 inter-token
    latency, and the checkpoint writer's lag sampled from ``/l0/metrics``
    during the run (max) and after it (does it recover), with snapshots
    dropped. Ratios observe/off and stop/off per round, then the median.
(b) **Plugin fixed cost** — vanilla vLLM's server vs ``l0 serve`` (requests
    with L0 off), one server up at a time, alternated over rounds.

Writes ``bench/results/bench_load.json``.

    .venv/bin/python bench/bench_load.py                 # everything (~25 min on 2 cores)
    .venv/bin/python bench/bench_load.py --models tiny --levels 1,8 --rounds 1   # a quick look
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))
sys.path.insert(0, str(ROOT / "tests"))

ARGS = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0"]
MODES = ("off", "observe", "stop")


def one_stream(url, model, prompt, max_tokens, xargs):
    """(tokens, chunk arrival times) of one streamed chat."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "ignore_eos": True, "return_token_ids": True, "vllm_xargs": xargs}
    times, tokens = [], 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if line.startswith("data: {"):
                n = sum(len(c.get("token_ids") or []) for c in json.loads(line[6:]).get("choices", []))
                if n:
                    tokens += n
                    times.append(time.perf_counter())
    return tokens, times


class LagSampler:
    """The checkpoint writer's lag and drops from /l0/metrics, every 0.2 s."""

    def __init__(self, url: str) -> None:
        self.url, self.samples, self._stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> tuple[float, float]:
        import httpx
        try:
            text = httpx.get(self.url + "/l0/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0.0, 0.0
        get = lambda name: sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)", text, re.M))  # noqa: E731
        return get("l0_checkpoint_lag"), get("l0_checkpoint_dropped_total")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.read()[0])
            self._stop.wait(0.2)

    def __enter__(self):
        self.dropped0 = self.read()[1]
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def measure(srv, model, prompts, conc, max_tokens, mode, sample_lag):
    xargs = {"l0_action": mode}
    jobs = [(prompts[i % len(prompts)], dict(xargs, l0_key=f"load-{mode}-{conc}-{i}-{time.time_ns()}")
             if mode != "off" else xargs) for i in range(conc)]
    lag = LagSampler(srv.url) if sample_lag else None
    if lag:
        lag.__enter__()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        res = list(pool.map(lambda j: one_stream(srv.url, model, j[0], max_tokens, j[1]), jobs))
    wall = time.perf_counter() - t0
    out = {"tokens": sum(r[0] for r in res), "wall_s": round(wall, 3)}
    gaps = sorted(b - a for _, t in res for a, b in zip(t, t[1:]))
    out["tokens_per_s"] = round(out["tokens"] / wall, 2)
    out["itl_p50_ms"] = round(1000 * statistics.median(gaps), 2) if gaps else None
    out["itl_p99_ms"] = round(1000 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], 2) if gaps else None
    out["complete"] = all(r[0] == max_tokens for r in res)
    if lag:
        lag.__exit__()
        time.sleep(1.0)
        after, dropped = lag.read()
        out["ckpt_lag_max"] = max(lag.samples, default=0.0)
        out["ckpt_lag_after_1s"] = after
        out["ckpt_dropped"] = dropped - lag.dropped0
    return out


def part_a(model_name, model, store_name, store_url, levels, rounds, max_tokens, prompts, tmp, log):
    from l0.engine.server import Server

    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": store_url, "VLLM_CPU_KVCACHE_SPACE": "2"}
    rows = []
    with Server(model, ARGS + ["--max-num-seqs", str(max(levels))], env=env, log_path=tmp / "a.log") as srv:
        measure(srv, model, prompts, 4, 8, "off", False)  # warm-up
        for conc in levels:
            per_round = []
            for r in range(rounds):
                order = MODES[r % 3:] + MODES[:r % 3]
                got = {m: measure(srv, model, prompts, conc, max_tokens, m, True) for m in order}
                per_round.append({"order": list(order), **got,
                                  "observe_over_off": got["observe"]["tokens_per_s"] / got["off"]["tokens_per_s"],
                                  "stop_over_off": got["stop"]["tokens_per_s"] / got["off"]["tokens_per_s"]})
                log(f"  {model_name:>6} {store_name:>6} c={conc:3d} round {r}: " + "  ".join(
                    f"{m} {got[m]['tokens_per_s']:7.1f} tok/s p99 {got[m]['itl_p99_ms']} ms"
                    f" lag {got[m]['ckpt_lag_max']:.0f}" for m in MODES))
            rows.append({"model": model_name, "store": store_name, "concurrency": conc, "rounds": per_round,
                         "observe_over_off_median": statistics.median(x["observe_over_off"] for x in per_round),
                         "stop_over_off_median": statistics.median(x["stop_over_off"] for x in per_round),
                         "ckpt_lag_max": max(max(x[m]["ckpt_lag_max"] for m in MODES) for x in per_round),
                         "ckpt_dropped": sum(x[m]["ckpt_dropped"] for m in MODES for x in per_round),
                         "all_complete": all(x[m]["complete"] for m in MODES for x in per_round)})
    return rows


def part_b(model_name, model, levels, rounds, max_tokens, prompts, tmp, log):
    """vanilla vs l0 serve, one server up at a time, order alternated."""
    from l0.engine.server import Server

    rows = []
    for r in range(rounds):
        order = ["vanilla", "l0"] if r % 2 == 0 else ["l0", "vanilla"]
        got = {}
        for name in order:
            env = {"L0_ACTION": "off", "L0_CHECKPOINT_STORE": "off", "VLLM_CPU_KVCACHE_SPACE": "2"}
            with Server(model, ARGS + ["--max-num-seqs", str(max(levels))], env=env, with_l0=(name == "l0"),
                        log_path=tmp / f"b-{name}.log") as srv:
                measure(srv, model, prompts, 4, 8, "off", False)
                got[name] = {c: measure(srv, model, prompts, c, max_tokens, "off", False) for c in levels}
        for c in levels:
            ratio = got["l0"][c]["tokens_per_s"] / got["vanilla"][c]["tokens_per_s"]
            rows.append({"model": model_name, "round": r, "order": order, "concurrency": c,
                         "vanilla": got["vanilla"][c], "l0_serve": got["l0"][c], "l0_over_vanilla": ratio})
            log(f"  {model_name:>6} c={c:3d} round {r}: vanilla {got['vanilla'][c]['tokens_per_s']:7.1f} "
                f"l0 serve {got['l0'][c]['tokens_per_s']:7.1f} tok/s  ratio {ratio:.3f}")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--stores", default="sqlite,redis")
    ap.add_argument("--levels", default="1,8,32,64")
    ap.add_argument("--tiny-levels", default="1,8,32,64,128,256", help="the tiny model goes further")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parts", default="ab")
    ap.add_argument("--b-models", default=None, help="models for part (b) (default: --models)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_load.json"))
    ns = ap.parse_args(argv)
    from l0.engine.models import prepare_smollm2, prepare_tiny
    from services import RedisProcess

    models = {"tiny": prepare_tiny, "smollm2": prepare_smollm2}
    prompts = json.loads((ROOT / "tests" / "data" / "prompts.json").read_text())
    log = lambda m: print(m, flush=True)  # noqa: E731
    doc = {"meta": {"host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": "cpu (2 cores)",
                    "max_tokens": ns.max_tokens, "rounds": ns.rounds,
                    "note": "one server up at a time; modes switched per request; ignore_eos"}, "a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="l0-load-") as d:
        tmp = Path(d)
        redis = RedisProcess(tmp).start()
        try:
            for name in ns.models.split(","):
                model = str(models[name]())
                levels = [int(x) for x in (ns.tiny_levels if name == "tiny" else ns.levels).split(",")]
                if "a" in ns.parts:
                    for store in ns.stores.split(","):
                        url = redis.url if store == "redis" else f"sqlite://{tmp}/ck-{name}.db"
                        log(f"(a) {name}, checkpoints on {store}")
                        doc["a"] += part_a(name, model, store, url, levels, ns.rounds, ns.max_tokens, prompts, tmp,
                                           log)
                if "b" in ns.parts and name in (ns.b_models or ns.models).split(","):
                    log(f"(b) {name}: vanilla vLLM vs l0 serve, one at a time")
                    doc["b"] += part_b(name, model, [x for x in levels if x <= 64], ns.rounds, ns.max_tokens,
                                       prompts, tmp, log)
        finally:
            redis.stop()
    for row in doc["a"]:
        print(f"{row['model']:>8} {row['store']:>6} c={row['concurrency']:3d}: observe/off "
              f"{row['observe_over_off_median']:.3f}  stop/off {row['stop_over_off_median']:.3f}  "
              f"writer lag max {row['ckpt_lag_max']:.0f}, dropped {row['ckpt_dropped']:.0f}, "
              f"complete {row['all_complete']}")
    out = Path(ns.out)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
