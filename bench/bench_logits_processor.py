"""L0's own host cost per decode step, in-process: the real L0LogitsProcessor
(observe mode, fused CPU detect kernel) driven the way vLLM's CPU engine
drives it, at batch 1/8/32/64 over SmolLM2's 49152-token vocabulary, with
non-repeating outputs (nothing fires). Complements bench (b), whose
end-to-end ratio on this shared 2-core machine is within its own noise: here
the number is L0's time per step, to set against the engine's step time.

    .venv/bin/python bench/bench_logits_processor.py [--engine-step-ms 320]

``--engine-step-ms``: a decode step of the engine to compare with (default
50: SmolLM2 at batch 1 on these CPUs, 1024 tokens in ~51 s in
bench_checkpoint.py; larger batches take longer steps, so this is the
conservative side). Writes bench/results/bench_logits_processor.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

VOCAB = 49152


def make_lp(batch: int, store: str = "off"):
    os.environ["L0_ACTION"] = "observe"
    os.environ["L0_CHECKPOINT_STORE"] = store
    from l0.engine.models import prepare_smollm2
    from l0.engine.vllm import logits_processor as mod
    mod.server_config.cache_clear()
    model = str(prepare_smollm2())
    cfg = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=max(batch, 1)),
        model_config=SimpleNamespace(get_vocab_size=lambda: VOCAB, tokenizer=model, tokenizer_revision=None,
                                     trust_remote_code=False, logits_processors=None, model=model))
    return mod.L0LogitsProcessor(cfg, torch.device("cpu"), False)


def drive(lp, batch: int, steps: int, xargs=lambda i: {"l0_action": "observe"}, pause_s: float = 0.0) -> float:
    """Drive ``lp`` the way vLLM's CPU engine does: ``batch`` requests added
    at once, 64 warm-up steps (so every ring is full), then ``steps`` timed
    steps of non-repeating tokens (nothing fires). ``pause_s`` between steps
    stands for the engine's own work. Returns L0's seconds per step."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    rng = random.Random(0)
    outs = [[] for _ in range(batch)]
    added = []
    for i in range(batch):
        p = SamplingParams(max_tokens=100000, extra_args=xargs(i))
        p.update_from_generation_config({}, eos_token_id=2)
        added.append((i, p, [1, 2, 3], outs[i]))
    lp.update_state(BatchUpdate(batch_size=batch, removed=[], added=added, moved=[]))
    logits = torch.zeros(batch, VOCAB)
    for _ in range(64):  # history, so each step sees a full-length ring
        for o in outs:
            o.append(rng.randrange(VOCAB))
        lp.update_state(None)
        lp.apply(logits)
    spent = 0.0
    for _ in range(steps):
        for o in outs:
            o.append(rng.randrange(VOCAB))
        t0 = time.perf_counter()
        lp.update_state(None)
        lp.apply(logits)
        spent += time.perf_counter() - t0
        if pause_s:
            time.sleep(pause_s)
    return spent / steps


def run(batch: int, steps: int, store: str = "off") -> dict:
    lp = make_lp(batch, store)

    def xargs(i):
        x = {"l0_action": "observe"}
        if store != "off":
            x["l0_key"] = f"bench-{i}"
        return x
    spent = drive(lp, batch, steps, xargs) * steps
    row = {"batch": batch, "l0_ms_per_step": spent / steps * 1e3, "backend": lp.det.backend}
    if lp.ckpt is not None:
        w = lp.ckpt.writer
        cpu0 = w.cpu_s
        w.flush()
        lp.ckpt.close()
        row.update(checkpoint_store=store.split(":")[0], checkpoint_every=lp.cfg.checkpoint.every,
                   records_written=w.written, writer_cpu_ms_per_step=w.cpu_s / (steps + 64) * 1e3,
                   writer_cpu_ms_unflushed=(w.cpu_s - cpu0) * 1e3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--engine-step-ms", type=float, default=50.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_logits_processor.json"))
    ns = ap.parse_args()
    rows = []
    for batch in (1, 8, 32, 64):
        row = run(batch, ns.steps)
        row["share_of_engine_step"] = row["l0_ms_per_step"] / ns.engine_step_ms
        rows.append(row)
        print(f"batch {batch:>3}: L0 host time {row['l0_ms_per_step']:.3f} ms/step ({row['backend']})"
              f" = {row['share_of_engine_step'] * 100:.3f}% of a {ns.engine_step_ms:g} ms engine step", flush=True)
    import tempfile
    store = f"sqlite://{tempfile.mkdtemp(prefix='l0-bench-')}/ck.sqlite3"
    row = run(32, ns.steps, store)
    total = row["l0_ms_per_step"] + row["writer_cpu_ms_per_step"]
    row["share_of_engine_step"] = total / ns.engine_step_ms
    rows.append(row)
    print(f"batch  32 + checkpoints (every {row['checkpoint_every']}, sqlite): serving-loop "
          f"{row['l0_ms_per_step']:.3f} ms/step + writer thread {row['writer_cpu_ms_per_step']:.3f} ms CPU/step "
          f"= {row['share_of_engine_step'] * 100:.3f}% of a {ns.engine_step_ms:g} ms engine step "
          f"({row['records_written']} records written)", flush=True)
    meta = {"host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "engine_step_ms": ns.engine_step_ms, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    Path(ns.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("wrote", ns.out)


if __name__ == "__main__":
    main()
