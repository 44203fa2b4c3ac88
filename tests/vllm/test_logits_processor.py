"""L0LogitsProcessor driven through synthetic BatchUpdates (no model), the way
vLLM's own logitsprocs tests simulate the persistent batch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.vllm

V = 16
EOS = 2


@pytest.fixture
def lp(monkeypatch):
    monkeypatch.setenv("L0_ACTION", "stop")
    monkeypatch.delenv("L0_CONFIG", raising=False)
    from l0.vllm import logits_processor as mod
    mod.server_config.cache_clear()
    cfg = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=4),
        model_config=SimpleNamespace(get_vocab_size=lambda: V, tokenizer="/nonexistent", tokenizer_revision=None,
                                     trust_remote_code=False, logits_processors=None))
    proc = mod.L0LogitsProcessor(cfg, torch.device("cpu"), False)
    yield proc
    mod.server_config.cache_clear()


def sp(**kw):
    from vllm import SamplingParams
    xargs = {"l0_min_span": 1, "l0_near_min_repeats": 0, "l0_max_period": 8}
    xargs.update(kw.pop("xargs", {}))
    p = SamplingParams(max_tokens=100, extra_args=xargs, **kw)
    p.update_from_generation_config({}, eos_token_id=EOS)
    return p


def update(added=(), removed=(), moved=(), size=1):
    from vllm.v1.sample.logits_processor import BatchUpdate
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


def step(lp, outs, rows):
    logits = torch.zeros(rows, V)
    lp.update_state(None)
    return lp.apply(logits)


def only_eos(row):
    finite = torch.isfinite(row).nonzero().flatten().tolist()
    return finite == [EOS]


def test_stop_allows_only_eos_after_min_repeats(lp):
    out = []
    lp.update_state(update(added=[(0, sp(), [5, 6], out)]))
    for tok in [7, 8, 7, 8, 7]:
        out.append(tok)
        logits = step(lp, out, 1)
        assert torch.isfinite(logits).all()
    out.append(8)  # third copy of (7, 8) complete
    assert only_eos(step(lp, out, 1)[0])


def test_min_tokens_defers_stop_and_penalizes_meanwhile(lp):
    out = []
    lp.update_state(update(added=[(0, sp(min_tokens=8), [5], out)]))
    for tok in [7, 8, 7, 8, 7, 8]:
        out.append(tok)
        logits = step(lp, out, 1)
    assert torch.isfinite(logits).all()
    assert logits[0, 7] == -10.0  # the token continuing the cycle is pushed down
    out.append(7)
    out.append(8)
    lp.apply(torch.zeros(1, V))  # both new tokens replayed (a multi-token step)
    out.append(7)
    assert only_eos(step(lp, out, 1)[0])


def test_ignore_eos_uses_stop_token_or_penalizes(lp):
    a, b = [], []
    lp.update_state(update(added=[(0, sp(ignore_eos=True, stop_token_ids=[9]), [5], a),
                                  (1, sp(ignore_eos=True), [5], b)], size=2))
    for tok in [7, 7, 7]:
        a.append(tok)
        b.append(tok)
        logits = step(lp, None, 2)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [9]
    assert torch.isfinite(logits[1]).all() and logits[1, 7] == -10.0


def test_row_never_all_masked_when_eos_was_masked(lp):
    out = [7, 7]
    lp.update_state(update(added=[(0, sp(), [5], out)]))
    lp.apply(torch.zeros(1, V))
    out.append(7)
    logits = torch.zeros(1, V)
    logits[0, EOS] = float("-inf")  # e.g. a grammar forbids EOS here
    lp.update_state(None)
    row = lp.apply(logits)[0]
    assert torch.isfinite(row).sum() == 1 and row[EOS] == 0.0


def test_swap_and_move_follow_requests(lp):
    from vllm.v1.sample.logits_processor import MoveDirectionality as M
    a, b = [], []
    lp.update_state(update(added=[(0, sp(), [1], a), (1, sp(xargs={"l0_action": "observe"}), [1], b)], size=2))
    a += [7, 8, 7, 8, 7]
    b += [3, 4, 5, 6, 3]
    lp.apply(torch.zeros(2, V))
    lp.update_state(update(moved=[(0, 1, M.SWAP)], size=2))  # a now in row 1
    a.append(8)
    b.append(11)
    logits = lp.apply(torch.zeros(2, V))
    assert only_eos(logits[1]) and torch.isfinite(logits[0]).all()
    lp.update_state(update(removed=[0], moved=[(1, 0, M.UNIDIRECTIONAL)], size=1))  # b gone, a -> row 0
    a.append(EOS)
    assert only_eos(lp.apply(torch.zeros(1, V))[0])


def test_preempted_request_readded_with_output_is_replayed(lp):
    out = [7, 8, 7, 8, 7]
    lp.update_state(update(added=[(0, sp(), [1], out)]))
    assert torch.isfinite(lp.apply(torch.zeros(1, V))).all()
    lp.update_state(update(removed=[0], size=0))
    out.append(8)
    lp.update_state(update(added=[(0, sp(), [1], out)]))  # re-added with its 6 tokens
    assert only_eos(lp.apply(torch.zeros(1, V))[0])


def test_prefill_chunk_steps_change_nothing(lp):
    out = []
    lp.update_state(update(added=[(0, sp(), list(range(10)), out)]))
    for _ in range(3):  # chunked prefill: no new output token
        assert torch.equal(lp.apply(torch.zeros(1, V)), torch.zeros(1, V))
    assert lp.det.position(0) == 0


def test_off_requests_are_untouched(lp):
    out = []
    lp.update_state(update(added=[(0, sp(xargs={"l0_action": "off"}), [1], out)]))
    for tok in [7] * 10:
        out.append(tok)
        assert torch.equal(step(lp, out, 1), torch.zeros(1, V))


def test_is_not_argmax_invariant(lp):
    assert lp.is_argmax_invariant() is False
