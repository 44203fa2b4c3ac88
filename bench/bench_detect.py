"""Bench (c): one detection step at batch 1/64/256 x max_period 64/512/2048.

Side by side in one run: L0's fused cpu kernel and its torch backend on the
CPU vs vLLM's own ``check_sequence_repetition`` run once per request as its
scheduler does (1024-token non-repeating outputs, min_count 3,
max_pattern_size = max_period), and the CUDA backends when a GPU is present.
Token ids are uniform over a 49152 vocabulary in which every 10th id counts as
a number (real text has digits; a number token takes the kernel's slower
near-match path), every id as content. Prints a table and writes
``bench/results/bench_detect.json`` (``--out`` to change).

    .venv/bin/python bench/bench_detect.py
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

from l0.engine.config import DetectorParams  # noqa: E402
from l0.engine.ops import make_detector  # noqa: E402
from l0.engine.vocab import TokenClasses  # noqa: E402

HISTORY = 1024
VOCAB = 49152
CLASSES = TokenClasses(content=None, blank=[i in (220, 198) for i in range(VOCAB)],
                       number=[i % 10 == 0 for i in range(VOCAB)])


def time_l0(batch, max_period, device, backend, steps):
    det = make_detector(batch, max_period, CLASSES, device=device, backend=backend)
    prm = DetectorParams(max_period=max_period)
    for s in range(batch):
        det.configure(s, prm)
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(0, VOCAB, (HISTORY + steps, batch), generator=gen).to(device)
    for t in range(min(HISTORY, 64)):  # warm-up (the step cost does not depend on history)
        det.step(toks[t])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for t in range(steps):
        det.step(toks[HISTORY + t])
    sync()
    return (time.perf_counter() - t0) / steps * 1e3


def time_vllm(batch, max_period, steps):
    try:
        from vllm.sampling_params import RepetitionDetectionParams
        from vllm.v1.core.sched.utils import check_sequence_repetition
    except Exception:
        return None
    rng = random.Random(0)
    outs = [[rng.randrange(VOCAB) for _ in range(HISTORY)] for _ in range(batch)]
    prm = RepetitionDetectionParams(max_pattern_size=max_period, min_count=3)
    t0 = time.perf_counter()
    for _ in range(steps):
        for o in outs:
            check_sequence_repetition(o, prm)
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_detect.json"))
    ap.add_argument("--steps", type=int, default=30)
    ns = ap.parse_args()
    gpu = torch.cuda.is_available()
    from l0.engine.ops import detect_cpu
    have_cpu_kernel = detect_cpu.available()
    rows = []
    print(f"{'batch':>5} {'max_p':>5} {'cpu-kernel ms':>13} {'torch-cpu ms':>12} {'vllm ms':>9} "
          f"{'vllm/kernel':>11} {'vllm/torch':>10}" + ("  torch-cuda ms  cuda-kernel ms" if gpu else ""))
    for batch in (1, 64, 256):
        for max_p in (64, 512, 2048):
            row = {"batch": batch, "max_period": max_p,
                   "l0_cpu_kernel_ms": (time_l0(batch, max_p, "cpu", "cpu", ns.steps * 10)
                                        if have_cpu_kernel else None),
                   "l0_torch_cpu_ms": time_l0(batch, max_p, "cpu", "torch", ns.steps),
                   "vllm_check_ms": time_vllm(batch, max_p, max(3, ns.steps // 3))}
            v, k, tc = row["vllm_check_ms"], row["l0_cpu_kernel_ms"], row["l0_torch_cpu_ms"]
            row["ratio_vllm_over_l0_cpu_kernel"] = v / k if v and k else None
            row["ratio_vllm_over_l0_torch_cpu"] = v / tc if v else None
            nan = float("nan")
            line = (f"{batch:>5} {max_p:>5} {k or nan:>13.4f} {tc:>12.3f} {v if v is not None else nan:>9.3f} "
                    f"{row['ratio_vllm_over_l0_cpu_kernel'] or nan:>11.1f} "
                    f"{row['ratio_vllm_over_l0_torch_cpu'] or nan:>10.1f}")
            if gpu:
                row["l0_torch_cuda_ms"] = time_l0(batch, max_p, "cuda", "torch", ns.steps)
                try:
                    row["l0_cuda_kernel_ms"] = time_l0(batch, max_p, "cuda", "cuda", ns.steps)
                except RuntimeError as exc:
                    row["l0_cuda_kernel_ms"] = None
                    row["cuda_error"] = str(exc)
                line += f"  {row['l0_torch_cuda_ms']:>13.3f}  {row['l0_cuda_kernel_ms'] or nan:>14.3f}"
            print(line, flush=True)
            rows.append(row)
    meta = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if gpu else None, "history_tokens": HISTORY,
            "cpu_kernel": have_cpu_kernel, "number_token_fraction": 0.1,
            "steps": ns.steps, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    Path(ns.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("wrote", ns.out)


if __name__ == "__main__":
    main()
