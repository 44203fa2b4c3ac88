"""The act op: the torch spec's contract on hand-made rows, and (marker ``gpu``)
the fused CUDA kernel equal to it bit for bit on random batches: every dtype,
real vocabulary sizes, grammar masks, every action/latch/min_tokens case."""
from __future__ import annotations

import random

import pytest
import torch

from l0.ops.act import ActCuda, act_torch
from l0.ops.detect import StepResult

V = 16
STOP, PENALIZE, OBSERVE = 2, 3, 1


def slots(n, action=STOP, stop=2, min_tok=0, penalty=10.0, latch=0, device="cpu"):
    d = dict(device=device)
    return dict(latch=torch.full((n,), latch, dtype=torch.int32, **d),
                action=torch.full((n,), action, dtype=torch.int32, **d),
                stop_tok=torch.full((n,), stop, dtype=torch.int64, **d),
                min_tok=torch.full((n,), min_tok, dtype=torch.int64, **d),
                penalty=torch.full((n,), penalty, dtype=torch.float32, **d))


def result(kind, period, nxt, device="cpu"):
    return StepResult(torch.tensor(kind, dtype=torch.int32, device=device),
                      torch.tensor(period, dtype=torch.int32, device=device),
                      torch.tensor(nxt, dtype=torch.int64, device=device))


def test_stop_masks_all_but_the_stop_token_and_latches():
    s = slots(2)
    logits = torch.zeros(2, V)
    out = act_torch(logits, result([1, 0], [3, 0], [7, -1]), torch.tensor([9, 9]), **s, readout=True)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [2]
    assert torch.equal(logits[1], torch.zeros(V))
    assert s["latch"].tolist() == [1, 0]
    assert out.tolist() == [[1, 3, 9, 1, 0, 1], [0, 0, 9, 0, 0, 0]]


def test_masked_stop_token_penalizes_instead():
    s = slots(1)
    logits = torch.zeros(1, V)
    logits[0, 2] = float("-inf")
    out = act_torch(logits, result([1], [1], [7]), torch.tensor([9]), **s, readout=True)
    assert logits[0, 2] == float("-inf") and logits[0, 7] == -10.0 and torch.isfinite(logits).sum() == V - 1
    assert out.tolist() == [[1, 1, 9, 2, 3, 1]]  # applied penalize, reason: stop token masked


def test_min_tokens_and_no_stop_token_reasons():
    s = slots(2, min_tok=20)
    s["stop_tok"][1] = -1
    s["min_tok"][1] = 0
    out = act_torch(torch.zeros(2, V), result([2, 2], [4, 4], [5, 5]), torch.tensor([10, 10]), **s, readout=True)
    assert out[:, 3:5].tolist() == [[2, 1], [2, 2]]


def test_latched_stop_lands_without_a_current_detection():
    s = slots(1, latch=1)
    logits = torch.zeros(1, V)
    act_torch(logits, result([0], [0], [-1]), torch.tensor([30]), **s, readout=False)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [2]


def test_bfloat16_penalty_rounds_once():
    s = slots(1, action=PENALIZE, penalty=0.3)
    logits = torch.full((1, V), 1.2345, dtype=torch.bfloat16)
    act_torch(logits, result([1], [1], [4]), torch.tensor([5]), **s, readout=False)
    assert logits[0, 4] == (torch.tensor(1.2345, dtype=torch.bfloat16).float() - 0.3).to(torch.bfloat16)


# -- the CUDA kernel == the spec ------------------------------------------------

def _random_case(rng: random.Random, gen: torch.Generator, B: int, vocab: int, dtype):
    logits = (torch.randn(B, vocab, generator=gen) * 4).to(dtype)
    kind, period, nxt = [], [], []
    for b in range(B):
        if rng.random() < 0.3:
            logits[b, rng.randrange(0, vocab, 1)::2] = float("-inf")  # a grammar's mask
        if rng.random() < 0.05:
            logits[b, :] = float("-inf")
            logits[b, rng.randrange(vocab)] = 0.0  # one token allowed
        k = rng.choice([0, 0, 1, 2, 3, 4])
        kind.append(k)
        p = rng.randint(1, 50) if k in (1, 2, 4) else 0
        period.append(p)
        nxt.append(rng.randrange(vocab) if p else -1)
    s = dict(latch=torch.tensor([rng.choice([0, 0, 1, 2]) for _ in range(B)], dtype=torch.int32),
             action=torch.tensor([rng.choice([0, 1, 2, 2, 3]) for _ in range(B)], dtype=torch.int32),
             stop_tok=torch.tensor([rng.choice([-1, vocab - 1, rng.randrange(vocab)]) for _ in range(B)]),
             min_tok=torch.tensor([rng.choice([0, 50, 200]) for _ in range(B)]),
             penalty=torch.tensor([rng.choice([0.5, 10.0, 1e30]) for _ in range(B)], dtype=torch.float32))
    pos = torch.tensor([rng.randrange(0, 400) for _ in range(B)])
    return logits, result(kind, period, nxt), pos, s


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("vocab", [4099, 49152, 152064])
def test_cuda_kernel_equals_spec(dtype, vocab):
    rng = random.Random(vocab)
    gen = torch.Generator().manual_seed(vocab)
    for trial in range(12):
        B = rng.choice([1, 7, 64, 256])
        logits, res, pos, s = _random_case(rng, gen, B, vocab, dtype)
        want_logits = logits.clone()
        ws = {k: v.clone() for k, v in s.items()}
        want = act_torch(want_logits, res, pos, **ws, readout=True)
        cuda = {k: v.cuda() for k, v in s.items()}
        act = ActCuda(cuda["latch"], cuda["action"], cuda["stop_tok"], cuda["min_tok"], cuda["penalty"])
        got_logits = logits.cuda()
        dres = StepResult(res.kind.cuda(), res.period.cuda(), res.next_token.cuda())
        got = act(got_logits, dres, pos.cuda(), True)
        assert torch.equal(got.cpu(), want), f"trial {trial}: readout"
        assert torch.equal(cuda["latch"].cpu(), ws["latch"]), f"trial {trial}: latch"
        g = got_logits.cpu()
        same = (g == want_logits) | (torch.isnan(g) & torch.isnan(want_logits))
        assert bool(same.all()), f"trial {trial}: rows {sorted(set((~same).nonzero()[:, 0].tolist()))} differ"
