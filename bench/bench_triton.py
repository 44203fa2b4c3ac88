"""What L0's Triton step adds per token, in one run on one real tritonserver:
the looper LLM streamed directly vs through L0's ensemble step vs through
L0's BLS wrapper, over gRPC streaming, N concurrent streams of T tokens of a
normal (never-looping) output, the looper's own pacing set to ``--delay-ms``
(0 = the worst case: nothing but the hop and L0's work per token).

Per configuration: tokens/s over all streams, and the per-token gap a
client sees (time between consecutive tokens of one stream: p50, p99);
ratios against the LLM alone. Rounds alternate the order of configurations.

    .venv/bin/python bench/bench_triton.py [--streams 8] [--tokens 256] [--rounds 3]
        [--python-env .venv-triton --python-env .venv-triton-torch]

L0's detect backend inside Triton is whatever the stub's Python environment
allows: the tests' `.venv-triton` has no torch (the plain-Python reference);
`make triton-torch` builds `.venv-triton-torch`, which also sees the main
environment's torch (the fused C kernel), as a Triton image with torch would.

Writes bench/results/bench_triton.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

# (label, model, request parameters, l0_options tensor)
CONFIGS = (("llm alone", "looper", {}, None),
           ("ensemble, L0 off", "l0_ensemble", {"l0_action": "off"}, None),
           ("ensemble, L0 stop", "l0_ensemble", {}, None),
           ("bls, L0 off", "l0_bls", {}, {"l0_action": "off"}),
           ("bls, L0 stop", "l0_bls", {}, None))


def one_stream(url: str, model: str, prompt: list[int], tokens: int, rid: str, params: dict,
               options: dict | None) -> list[float]:
    """Arrival times of every token of one stream."""
    import tritonclient.grpc as g

    q: queue.Queue = queue.Queue()
    client = g.InferenceServerClient(url)
    client.start_stream(callback=lambda result=None, error=None: q.put((time.perf_counter(), result, error)))
    ins = []
    for name, arr, dtype in (("input_ids", np.array(prompt, dtype=np.int64), "INT64"),
                             ("max_tokens", np.array([tokens], dtype=np.int32), "INT32"),
                             ("mode", np.array([b"normal"], dtype=np.object_), "BYTES"),
                             *([("l0_options", np.array([json.dumps(options).encode()], dtype=np.object_), "BYTES")]
                               if options else [])):
        x = g.InferInput(name, list(arr.shape), dtype)
        x.set_data_from_numpy(arr)
        ins.append(x)
    out_name = "token_ids" if model == "looper" else "output_ids"
    arrivals = []
    client.async_stream_infer(model, ins, request_id=rid, parameters=params, enable_empty_final_response=True)
    try:
        while True:
            try:
                t, result, error = q.get(timeout=60)
            except queue.Empty:
                raise RuntimeError(f"{model} {rid}: no response for 60 s after {len(arrivals)} tokens") from None
            if error is not None:
                raise RuntimeError(f"{model}: {error}")
            ids = result.as_numpy(out_name)
            if ids is not None:
                arrivals += [t] * len(ids)
            if result.get_response(as_json=True)["parameters"].get("triton_final_response", {}).get("bool_param"):
                break
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    if len(arrivals) != tokens:
        raise RuntimeError(f"{model}: {len(arrivals)} tokens, expected {tokens}")
    return arrivals


def run_config(url: str, config: tuple, streams: int, tokens: int, tag: str) -> dict:
    _, model, params, options = config
    results: list = [None] * streams
    errors: list = []

    def work(i):
        try:
            # Unique ids: the ensemble step keys streams by request id.
            rid = f"{tag}-{CONFIGS.index(config)}-{i}"
            results[i] = one_stream(url, model, [11, 12, 13 + i], tokens, rid, params, options)
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    gaps = sorted(b - a for arr in results for a, b in zip(arr, arr[1:]))
    return {"tokens_per_s": streams * tokens / wall, "gap_p50_ms": gaps[len(gaps) // 2] * 1e3,
            "gap_p99_ms": gaps[int(0.99 * (len(gaps) - 1))] * 1e3, "gap_mean_ms": statistics.fmean(gaps) * 1e3}


def bench_env(ns, python_env: Path | None) -> dict:
    """Every configuration on one tritonserver whose stub runs ``python_env``."""
    import subprocess

    from l0.engine.triton.server import TritonServer, default_python_env

    env = python_env or default_python_env()
    probe = subprocess.run([str(env / "bin" / "python"), "-c",
                            "from l0.engine.triton.guard import make_stream_detector as m; "
                            "print(m(512, None, 'cpu', 'auto').backend)"], capture_output=True, text=True)
    backend = probe.stdout.strip() or f"unknown: {probe.stderr.strip()[-200:]}"
    print(f"Triton Python environment {env}: L0 detect backend {backend}")
    tmp = Path(tempfile.mkdtemp(prefix="l0-bench-triton-"))
    repo = tmp / "repo"
    shutil.copytree(ROOT / "configs" / "triton", repo)
    cfg = repo / "looper" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"delay_ms" value { string_value: "1" }',
                                           f'"delay_ms" value {{ string_value: "{ns.delay_ms:g}" }}'))
    rows = {c[0]: [] for c in CONFIGS}
    with TritonServer(repo, log_path=tmp / "triton.log", python_env=env) as ts:
        for c in CONFIGS:  # warm-up
            run_config(ts.grpc_url, c, 2, 32, "warm")
        for r in range(ns.rounds):
            order = CONFIGS if r % 2 == 0 else tuple(reversed(CONFIGS))
            for c in order:
                rows[c[0]].append(run_config(ts.grpc_url, c, ns.streams, ns.tokens, f"r{r}"))
                x = rows[c[0]][-1]
                print(f"  round {r} {c[0]:>18}: {x['tokens_per_s']:8.0f} tok/s, gap p50 {x['gap_p50_ms']:.3f} ms, "
                      f"p99 {x['gap_p99_ms']:.3f} ms", flush=True)
    summary = {}
    for c in CONFIGS:
        summary[c[0]] = {k: statistics.median(x[k] for x in rows[c[0]]) for k in rows[c[0]][0]}
    base = summary["llm alone"]
    for c in CONFIGS[1:]:
        s = summary[c[0]]
        s["throughput_ratio_vs_llm_alone"] = s["tokens_per_s"] / base["tokens_per_s"]
        s["added_gap_p50_ms"] = s["gap_p50_ms"] - base["gap_p50_ms"]
        print(f"{c[0]:>18}: throughput x{s['throughput_ratio_vs_llm_alone']:.3f} of the LLM alone, per-token gap "
              f"p50 {s['gap_p50_ms']:.3f} ms (+{s['added_gap_p50_ms']:.3f}), p99 {s['gap_p99_ms']:.3f} ms "
              f"(LLM alone {base['gap_p50_ms']:.3f} / {base['gap_p99_ms']:.3f})")
    return {"python_env": str(env), "detect_backend": backend, "rounds": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--python-env", action="append", default=[],
                    help="Triton stub Python environment(s) to measure (default: the tests' one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_triton.json"))
    ns = ap.parse_args()
    envs = [Path(p) for p in ns.python_env] or [None]
    runs = [bench_env(ns, e) for e in envs]
    out = {"runs": runs,
           "meta": {"host": platform.node(), "device": "cpu (2 cores shared by client, server and stubs)",
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0)",
                    "streams": ns.streams, "tokens": ns.tokens, "looper_delay_ms": ns.delay_ms}}
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", ns.out)


if __name__ == "__main__":
    main()
