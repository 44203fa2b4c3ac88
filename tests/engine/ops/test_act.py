"""The act op: the torch spec's contract on hand-made rows (stop, penalize,
masked stop tokens, close mode on loops and at the budget), and (marker
``gpu``) the fused CUDA kernel equal to it bit for bit on random batches:
every dtype, real vocabulary sizes, grammar masks, every action, latch,
min_tokens, JSON state and budget case."""
from __future__ import annotations

import random

import pytest
import torch

from l0.engine import jsonstate as js
from l0.engine.ops.act import CLOSE_AT_BUDGET, CLOSE_ON_LOOP, ActCuda, SlotState, act_torch
from l0.engine.ops.detect import StepResult

V = 16
STOP, PENALIZE, OBSERVE = 2, 3, 1


def slots(n, action=STOP, stop=2, min_tok=0, penalty=10.0, latch=0, max_tok=-1, close_cfg=0, bias=None,
          margin=8, device="cpu"):
    d = dict(device=device)
    if bias is None:
        bias = torch.zeros(3, V)
    return SlotState(latch=torch.full((n,), latch, dtype=torch.int32, **d),
                     action=torch.full((n,), action, dtype=torch.int32, **d),
                     stop_tok=torch.full((n,), stop, dtype=torch.int64, **d),
                     min_tok=torch.full((n,), min_tok, dtype=torch.int64, **d),
                     penalty=torch.full((n,), penalty, dtype=torch.float32, **d),
                     max_tok=torch.full((n,), max_tok, dtype=torch.int64, **d),
                     close_cfg=torch.full((n,), close_cfg, dtype=torch.int32, **d),
                     closing=torch.zeros(n, dtype=torch.int32, **d),
                     margin=torch.full((n,), margin, dtype=torch.int32, **d),
                     close_bias=bias.to(device=device, dtype=torch.float32).contiguous())


def result(kind, period, nxt, device="cpu"):
    return StepResult(torch.tensor(kind, dtype=torch.int32, device=device),
                      torch.tensor(period, dtype=torch.int32, device=device),
                      torch.tensor(nxt, dtype=torch.int64, device=device))


def act(logits, res, pos, s, jstate=None, jdepth=None, readout=True):
    n = logits.shape[0]
    jstate = torch.full((n,), js.LOST, dtype=torch.int32) if jstate is None else torch.tensor(jstate, dtype=torch.int32)
    jdepth = torch.zeros(n, dtype=torch.int32) if jdepth is None else torch.tensor(jdepth, dtype=torch.int32)
    return act_torch(logits, res, torch.tensor(pos), jstate, jdepth, s, readout)


def finite(row):
    return torch.isfinite(row).nonzero().flatten().tolist()


def test_stop_masks_all_but_the_stop_token_and_latches():
    s = slots(2)
    logits = torch.zeros(2, V)
    out = act(logits, result([1, 0], [3, 0], [7, -1]), [9, 9], s)
    assert finite(logits[0]) == [2]
    assert torch.equal(logits[1], torch.zeros(V))
    assert s.latch.tolist() == [1, 0]
    assert out.tolist() == [[1, 3, 9, 1, 0, 1, 0, 0], [0, 0, 9, 0, 0, 0, 0, 0]]


def test_masked_stop_token_penalizes_instead():
    s = slots(1)
    logits = torch.zeros(1, V)
    logits[0, 2] = float("-inf")
    out = act(logits, result([1], [1], [7]), [9], s)
    assert logits[0, 2] == float("-inf") and logits[0, 7] == -10.0 and torch.isfinite(logits).sum() == V - 1
    assert out[0, 3:5].tolist() == [2, 3]  # applied penalize, reason: stop token masked


def test_min_tokens_and_no_stop_token_reasons():
    s = slots(2, min_tok=20)
    s.stop_tok[1] = -1
    s.min_tok[1] = 0
    out = act(torch.zeros(2, V), result([2, 2], [4, 4], [5, 5]), [10, 10], s)
    assert out[:, 3:5].tolist() == [[2, 1], [2, 2]]


def test_latched_stop_lands_without_a_current_detection():
    s = slots(1, latch=1)
    logits = torch.zeros(1, V)
    act(logits, result([0], [0], [-1]), [30], s, readout=False)
    assert finite(logits[0]) == [2]


def test_bfloat16_penalty_rounds_once():
    s = slots(1, action=PENALIZE, penalty=0.3)
    logits = torch.full((1, V), 1.2345, dtype=torch.bfloat16)
    act(logits, result([1], [1], [4]), [5], s, readout=False)
    assert logits[0, 4] == (torch.tensor(1.2345, dtype=torch.bfloat16).float() - 0.3).to(torch.bfloat16)


BIAS = torch.zeros(3, V)
BIAS[js.OUT, 9] = 40.0   # say token 9 is "}"
BIAS[js.OUT, 10] = -30.0  # and 10 is ","
BIAS[js.STR, 11] = 40.0  # and 11 is '"'


def test_a_loop_on_a_json_row_closes_instead_of_stopping():
    """EOS is not allowed yet (the JSON is open): no stop, no penalty; the
    close bias of the row's JSON state is added; the stop lands once EOS is
    allowed (the grammar says the JSON is complete)."""
    s = slots(1, close_cfg=CLOSE_ON_LOOP, bias=BIAS)
    logits = torch.zeros(1, V)
    logits[0, 2] = float("-inf")  # EOS masked by the grammar
    out = act(logits, result([2], [4], [10]), [50], s, jstate=[js.OUT], jdepth=[2])
    assert logits[0, 9] == 40.0 and logits[0, 10] == -30.0 and logits[0, 2] == float("-inf")
    assert out[0].tolist() == [2, 4, 50, 3, 3, 2, 1, 2]  # applied close, reason masked, closing: loop, depth 2
    logits = torch.zeros(1, V)
    out = act(logits, result([0], [0], [-1]), [51], s, jstate=[js.OUT], jdepth=[0])
    assert finite(logits[0]) == [2] and out[0, 3] == 1 and out[0, 6] == 1


def test_close_at_budget_starts_within_the_margin():
    s = slots(2, action=PENALIZE, max_tok=100, close_cfg=CLOSE_AT_BUDGET, bias=BIAS, margin=8)
    # Row 0: depth 3 inside a string: needs 8 + 3 + 1 + 1 (EOS) = 13; 100 - 86 = 14 left: not yet.
    # Row 1: depth 3 between values: needs 12; 100 - 88 = 12 left: closing.
    logits = torch.zeros(2, V)
    logits[:, 2] = float("-inf")  # open JSON: the grammar masks EOS
    before = logits.clone()
    out = act(logits, result([0, 0], [0, 0], [-1, -1]), [86, 88], s, jstate=[js.STR, js.OUT], jdepth=[3, 3])
    assert torch.equal(logits[0], before[0]) and logits[1, 9] == 40.0
    assert out[:, 6].tolist() == [0, 2] and out[:, 3].tolist() == [0, 3]
    # Closing sticks: the next step closes row 1 again (the string row starts now: 13 left).
    logits = torch.zeros(2, V)
    logits[:, 2] = float("-inf")
    act(logits, result([0, 0], [0, 0], [-1, -1]), [87, 89], s, jstate=[js.STR, js.OUT], jdepth=[3, 2])
    assert logits[0, 11] == 40.0 and logits[1, 9] == 40.0
    assert s.closing.tolist() == [2, 2]


def test_untracked_or_lost_json_never_closes():
    s = slots(1, max_tok=10, close_cfg=CLOSE_ON_LOOP | CLOSE_AT_BUDGET, bias=BIAS)
    logits = torch.zeros(1, V)
    logits[0, 2] = float("-inf")
    out = act(logits, result([1], [1], [7]), [9], s, jstate=[js.LOST], jdepth=[0])
    assert logits[0, 7] == -10.0 and logits[0, 9] == 0.0  # the plain fallback: penalize
    assert out[0, 6] == 0


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
    bias = torch.randint(-5, 6, (3, vocab - rng.choice([0, 3])), generator=gen).float() * 10
    s = slots(B, bias=bias)
    for t, values in ((s.latch, [0, 0, 1, 2]), (s.action, [0, 1, 2, 2, 3]),
                      (s.stop_tok, [-1, vocab - 1, rng.randrange(vocab)]), (s.min_tok, [0, 50, 200]),
                      (s.penalty, [0.5, 10.0, 1e30]), (s.max_tok, [-1, 300, 420]), (s.close_cfg, [0, 1, 2, 3]),
                      (s.closing, [0, 0, 0, 1, 2]), (s.margin, [0, 8, 30])):
        t.copy_(torch.tensor([rng.choice(values) for _ in range(B)], dtype=t.dtype))
    pos = torch.tensor([rng.randrange(0, 420) for _ in range(B)])
    jstate = torch.tensor([rng.choice([-1, 0, 0, 1, 2]) for _ in range(B)], dtype=torch.int32)
    jdepth = torch.tensor([rng.randrange(0, 40) for _ in range(B)], dtype=torch.int32)
    return logits, result(kind, period, nxt), pos, jstate, jdepth, s


def _to(s: SlotState, device) -> SlotState:
    return SlotState(*(t.clone().to(device) for t in s.tensors()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("vocab", [4099, 49152, 152064])
def test_cuda_kernel_equals_spec(dtype, vocab):
    rng = random.Random(vocab)
    gen = torch.Generator().manual_seed(vocab)
    for trial in range(12):
        B = rng.choice([1, 7, 64, 256])
        logits, res, pos, jstate, jdepth, s = _random_case(rng, gen, B, vocab, dtype)
        want_logits = logits.clone()
        ws = _to(s, "cpu")
        want = act_torch(want_logits, res, pos, jstate, jdepth, ws, True)
        cs = _to(s, "cuda")
        got_logits = logits.cuda()
        dres = StepResult(res.kind.cuda(), res.period.cuda(), res.next_token.cuda())
        got = ActCuda(cs)(got_logits, dres, pos.cuda(), jstate.cuda(), jdepth.cuda(), True)
        assert torch.equal(got.cpu(), want), f"trial {trial}: readout"
        assert torch.equal(cs.latch.cpu(), ws.latch) and torch.equal(cs.closing.cpu(), ws.closing), trial
        g = got_logits.cpu()
        same = (g == want_logits) | (torch.isnan(g) & torch.isnan(want_logits))
        assert bool(same.all()), f"trial {trial}: rows {sorted(set((~same).nonzero()[:, 0].tolist()))} differ"
