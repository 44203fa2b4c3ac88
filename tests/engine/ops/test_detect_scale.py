"""The detect op at serving sizes on a GPU (marker ``gpu``; part of ``make gpu-check``).

For batch 1, 64, 256 x max_period 64, 512, 2048, 4096, streams of 2·P+300
tokens over a 49152-token vocabulary (so every ring wraps and a loop of
period exactly P fires), eight adversarial patterns (period 1, period = P,
a loop broken at its last token, blank runs, near-loops whose counter is a
number, template echoes, random text, loops of random period up to P), idle
steps, and swaps/moves/reconfigures mid-stream:

* the CUDA kernel and the torch backend on CUDA agree on every slot and step
  (the whole stream up to P = 512, its first ``TORCH_STEPS`` beyond: the torch
  backend is launch-bound at ~2 ms a step);
* both agree with the fused CPU kernel (itself proven equal to the reference
  on the CPU) on every slot and step, when a C compiler is there;
* both agree with the plain-Python reference on slots 0-7 (every pattern and
  every host op) for as many steps as the reference affords: it costs
  ~5 ms per slot-step at P=4096, so the reference runs in worker processes,
  in parallel with the GPU work, within ``REF_BUDGET_S`` each.

And a hypothesis test: random short streams at random slots of a full-size
batch, every backend against the reference.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time

import pytest
import torch
from hypothesis import given, settings, strategies as st

import detect_streams as ds
from l0.engine.config import DetectorParams
from l0.engine.ops import make_detector
from l0.engine.ops.detect_reference import ReferenceDetector

pytestmark = pytest.mark.gpu

BATCHES = (1, 64, 256)
PERIODS = (64, 512, 2048, 4096)
REF_SLOTS = 8
TORCH_STEPS = 1200
REF_BUDGET_S = float(os.environ.get("L0_REF_BUDGET_S", "25"))
# Reference cost per slot-step, ms (measured: 0.08 at P=64, 0.6 at 512, 4.9 at 4096).
_REF_MS = {64: 0.1, 512: 0.7, 2048: 2.6, 4096: 5.2}
_CLASSES = ds.classes()


def _ref_upto(n: int, P: int, T: int) -> int:
    slots = min(n, REF_SLOTS)
    return min(T, int(REF_BUDGET_S * 1e3 / (_REF_MS[P] * slots)))


@pytest.fixture(scope="module")
def references():
    """Every configuration's reference replay, started at once in a pool of
    worker processes (spawned: they never touch CUDA)."""
    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=min(len(BATCHES) * len(PERIODS), os.cpu_count() or 2),
                                  mp_context=ctx)
    futures = {}
    for P in sorted(PERIODS, reverse=True):  # the longest first
        for n in BATCHES:
            _, _, T = ds.batch(n, P)
            futures[(n, P)] = pool.submit(ds.reference_job, n, P, 0, list(range(min(n, REF_SLOTS))),
                                          _ref_upto(n, P, T))
    yield futures
    pool.shutdown(cancel_futures=True)


def _run(backend: str, device: str, n: int, P: int, streams, ops, T: int):
    """Per step results [T, n] (kind, period, next) of one backend, kept on its device."""
    det = make_detector(n, P, _CLASSES, device=device, backend=backend)
    for s in range(n):
        det.configure(s, *ds.params_for(s, P))
    toks = torch.tensor(streams, dtype=torch.int64).t().contiguous().to(device)  # [T, n]
    kinds = torch.empty(T, n, dtype=torch.int32, device=device)
    periods = torch.empty(T, n, dtype=torch.int32, device=device)
    nexts = torch.empty(T, n, dtype=torch.int64, device=device)
    for t in range(T):
        ds.apply_ops(det, ops.get(t, []), P)
        res = det.step(toks[t])
        kinds[t].copy_(res.kind)
        periods[t].copy_(res.period)
        nexts[t].copy_(res.next_token)
    positions = [det.position(s) for s in range(n)]
    return kinds.cpu(), periods.cpu(), nexts.cpu(), positions


def _first_mismatch(a, b, what):
    bad = (a != b).nonzero()
    if len(bad):
        t, s = bad[0].tolist()
        return f"{what}: first mismatch at step {t}, slot {s} (pattern {ds.PATTERNS[s % 8]}): {a[t, s]} != {b[t, s]}"
    return None


@pytest.mark.parametrize("P", PERIODS)
@pytest.mark.parametrize("n", BATCHES)
def test_detect_at_scale(references, n, P):
    streams, ops, T = ds.batch(n, P)
    cuda = _run("cuda", "cuda", n, P, streams, ops, T)
    # The torch backend launches ~150 kernels a step (~2 ms on an H100): it
    # replays the whole stream up to P = 512 and the first TORCH_STEPS beyond.
    Tt = T if P <= 512 else TORCH_STEPS
    torch_cuda = _run("torch", "cuda", n, P, [x[:Tt] for x in streams], ops, Tt)
    for i, what in enumerate(("kind", "period", "next_token")):
        msg = _first_mismatch(cuda[i][:Tt], torch_cuda[i], f"cuda kernel vs torch-cuda {what}")
        assert msg is None, msg
    if Tt == T:
        assert cuda[3] == torch_cuda[3]
    from l0.engine.ops import detect_cpu
    if detect_cpu.available():
        cpu = _run("cpu", "cpu", n, P, streams, ops, T)
        for i, what in enumerate(("kind", "period", "next_token")):
            msg = _first_mismatch(cuda[i], cpu[i], f"cuda kernel vs cpu kernel {what}")
            assert msg is None, msg
        assert cuda[3] == cpu[3]
    ref = references[(n, P)].result(timeout=REF_BUDGET_S * 6)
    for s, cols in ref.items():
        upto = len(cols[0])
        for i, what in enumerate(("kind", "period", "next_token")):
            got = cuda[i][:upto, s].tolist()
            if got != cols[i]:
                t = next(j for j, (x, y) in enumerate(zip(got, cols[i])) if x != y)
                pytest.fail(f"cuda kernel vs reference {what}: slot {s} ({ds.PATTERNS[s % 8]}) step {t}: "
                            f"{got[t]} != {cols[i][t]}")
    # The patterns did fire: loops, near-loops, no-progress and (at P >= 512) the period-P loop.
    fired = set(cuda[0].flatten().tolist())
    if n >= 8:
        assert {1, 2, 3} <= fired, fired
    if n >= 16:  # slot 9 keeps its period-P stream from start to end
        assert (cuda[1][:, 9] == P).any(), "the period-P loop never fired"


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(BATCHES), st.sampled_from(PERIODS),
       st.lists(st.lists(st.sampled_from([5, 105, 106, 201, 1001, 1002, 1003, 1004, 30000, -1]),
                         min_size=1, max_size=40), min_size=1, max_size=3),
       st.integers(0, 2**31 - 1))
def test_hypothesis_full_batch_equals_reference(n, P, streams, seed):
    import random
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(n), k=min(n, len(streams))))
    prm = DetectorParams(min_period=1, max_period=P, min_repeats=rng.choice([2, 3]), min_span=rng.choice([1, 6]),
                         near_threshold=0.75, near_min_repeats=3, near_min_span=8, near_min_content=0.2,
                         echo_ngram=rng.choice([0, 3]), echo_threshold=0.7, echo_min_span=12,
                         echo_min_content=0.1, max_blank_run=rng.choice([0, 3]))
    ref = ReferenceDetector(n, P, _CLASSES)
    dets = [make_detector(n, P, _CLASSES, device="cuda", backend=b) for b in ("cuda", "torch")]
    for s in slots:
        ref.configure(s, prm)
        for d in dets:
            d.configure(s, prm)
    T = max(len(x) for x in streams)
    for t in range(T):
        toks = [-1] * n
        for s, x in zip(slots, streams):
            toks[s] = x[t] if t < len(x) else -1
        want = ref.step(toks)
        dev = torch.tensor(toks, dtype=torch.int64, device="cuda")
        for d in dets:
            r = d.step(dev)
            got = (r.kind.tolist(), r.period.tolist(), r.next_token.tolist())
            assert got == tuple(want), f"{d.backend} step {t}"
