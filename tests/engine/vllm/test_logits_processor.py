"""L0LogitsProcessor driven through synthetic BatchUpdates (no model), the way
vLLM's own logitsprocs tests simulate the persistent batch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.vllm

V = 16
EOS = 2


def fake_vllm_config(**model):
    """The parts of a VllmConfig the processor reads (no tokenizer: classes off)."""
    return SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=4),
        model_config=SimpleNamespace(get_vocab_size=lambda: V, tokenizer="/nonexistent", tokenizer_revision=None,
                                     trust_remote_code=False, logits_processors=None, **model))


@pytest.fixture
def lp(monkeypatch, tmp_path):
    monkeypatch.setenv("L0_ACTION", "stop")
    monkeypatch.setenv("L0_CHECKPOINT_STORE", f"sqlite://{tmp_path}/ck.db")
    monkeypatch.delenv("L0_CONFIG", raising=False)
    from l0.engine.vllm import logits_processor as mod
    mod.server_config.cache_clear()
    proc = mod.L0LogitsProcessor(fake_vllm_config(), torch.device("cpu"), False)
    yield proc
    if proc.ckpt is not None:
        proc.ckpt.close()
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


def test_masked_eos_is_never_forced(lp):
    """A grammar forbids EOS here: L0 does not force it (vLLM would reject the
    token and kill the request); the loop token is penalized instead and no
    masked token becomes sampleable."""
    out = [7, 7]
    lp.update_state(update(added=[(0, sp(), [5], out)]))
    lp.apply(torch.zeros(1, V))
    out.append(7)
    logits = torch.zeros(1, V)
    logits[0, EOS] = float("-inf")
    lp.update_state(None)
    row = lp.apply(logits)[0]
    assert torch.isfinite(row).sum() == V - 1 and row[EOS] == float("-inf") and row[7] == -10.0


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


# -- checkpoints from the serving loop -----------------------------------------

@pytest.fixture
def ck_lp(monkeypatch, tmp_path):
    (tmp_path / "l0.yaml").write_text("l0:\n  action: stop\n  checkpoint:\n    every: 4\n")
    monkeypatch.setenv("L0_CONFIG", str(tmp_path / "l0.yaml"))
    monkeypatch.setenv("L0_CHECKPOINT_STORE", f"sqlite://{tmp_path}/ck.db")
    monkeypatch.delenv("L0_ACTION", raising=False)
    from l0.engine.vllm import logits_processor as mod
    mod.server_config.cache_clear()
    proc = mod.L0LogitsProcessor(fake_vllm_config(model="tiny", served_model_name="tiny"), torch.device("cpu"),
                                 False)
    from l0.engine.checkpoint import open_store
    yield proc, open_store(f"sqlite://{tmp_path}/ck.db")
    proc.ckpt.close()
    mod.server_config.cache_clear()


def test_keyed_requests_are_checkpointed_every_n_tokens_and_on_finish(ck_lp):
    lp, store = ck_lp
    keyed, other = [], []
    lp.update_state(update(added=[(0, sp(xargs={"l0_key": "req-1"}, seed=3), [5, 6], keyed),
                                  (1, sp(), [5], other)], size=2))
    assert lp.ckpt.writer.flush()
    first = store.get("req-1")
    assert first.prompt_ids == (5, 6) and first.output_ids == () and not first.finished
    assert first.model.name == "tiny" and first.model.tokenizer.startswith("sha256:")
    assert first.sampling["max_tokens"] == 100 and first.sampling["seed"] == 3
    assert first.sampling["vllm_xargs"]["l0_key"] == "req-1"
    for tok in [9, 10, 11, 12, 13, 14]:
        keyed.append(tok)
        other.append(tok)
        step(lp, keyed, 2)
    assert lp.ckpt.writer.flush()
    assert store.get("req-1").output_ids == (9, 10, 11, 12)  # every 4 tokens
    keyed.append(EOS)
    lp.update_state(update(removed=[0, 1], size=0))
    assert lp.ckpt.writer.flush()
    done = store.get("req-1")
    assert done.output_ids == (9, 10, 11, 12, 13, 14, EOS) and done.finished and done.finish_reason == "stop"
    assert lp.ckpt.tracked == {}


def test_removed_without_stop_stays_resumable(ck_lp):
    lp, store = ck_lp
    out = []
    lp.update_state(update(added=[(0, sp(xargs={"l0_key": "req-2"}), [5], out)]))
    out += [9, 10]
    lp.update_state(update(removed=[0], size=0))  # aborted, stop string or preempted
    assert lp.ckpt.writer.flush()
    rec = store.get("req-2")
    assert rec.output_ids == (9, 10) and not rec.finished


def test_resumed_request_primes_the_detector_and_keeps_one_record(ck_lp):
    """The same loop as test_stop_allows_only_eos_after_min_repeats, with the first
    four tokens generated "on another replica" and passed back in the prompt."""
    lp, store = ck_lp
    out = []
    params = sp(xargs={"l0_key": "req-3", "l0_resume_from": 4})
    params.max_tokens = 96  # the client sends max_tokens minus the 4 tokens done
    lp.update_state(update(added=[(0, params, [5, 6, 7, 8, 7, 8], out)]))
    out.append(7)
    assert torch.isfinite(step(lp, out, 1)).all()
    out.append(8)  # third copy of (7, 8): four of its tokens came from the prompt
    assert only_eos(step(lp, out, 1)[0])
    assert lp.ckpt.writer.flush()
    rec = store.get("req-3")
    assert rec.prompt_ids == (5, 6) and rec.output_ids[:4] == (7, 8, 7, 8)
    assert rec.sampling["max_tokens"] == 100 and "l0_resume_from" not in rec.sampling["vllm_xargs"]


def test_retention_delete_removes_a_finished_record(ck_lp, monkeypatch):
    import dataclasses
    lp, store = ck_lp
    lp.ckpt.cfg = dataclasses.replace(lp.ckpt.cfg, retention="delete")
    out = []
    lp.update_state(update(added=[(0, sp(xargs={"l0_key": "req-4"}), [5], out)]))
    assert lp.ckpt.writer.flush() and store.get("req-4") is not None
    out += [9, EOS]
    lp.update_state(update(removed=[0], size=0))
    assert lp.ckpt.writer.flush()
    assert store.get("req-4") is None


def test_tensor_parallel_ranks_decide_alike_only_rank0_logs_and_checkpoints(monkeypatch, tmp_path, caplog):
    """Under TP every rank runs its own processor on the same sampled tokens:
    identical logits on every rank; only rank 0 logs and writes checkpoints."""
    monkeypatch.setenv("L0_ACTION", "stop")
    monkeypatch.setenv("L0_CHECKPOINT_STORE", f"sqlite://{tmp_path}/ck.db")
    monkeypatch.delenv("L0_CONFIG", raising=False)
    from l0.engine.vllm import host
    from l0.engine.vllm import logits_processor as mod
    procs = []
    for rank in (0, 1):
        mod.server_config.cache_clear()
        monkeypatch.setattr(host, "tp_rank", lambda rank=rank: rank)
        procs.append(mod.L0LogitsProcessor(fake_vllm_config(), torch.device("cpu"), False))
    mod.server_config.cache_clear()
    r0, r1 = procs
    try:
        assert r0.ckpt is not None and r0.log_enabled
        assert r1.ckpt is None and not r1.log_enabled
        outs = ([], [])
        for p, out in zip(procs, outs):
            p.update_state(update(added=[(0, sp(xargs={"l0_key": "tp"}), [5, 6], out)]))
        caplog.set_level("INFO", logger="l0")
        for tok in [7, 8, 7, 8, 7, 8]:
            got = []
            for p, out in zip(procs, outs):
                out.append(tok)
                got.append(step(p, out, 1))
            assert torch.equal(got[0], got[1])
        assert only_eos(got[0][0])
        events = [r.getMessage() for r in caplog.records if "l0.intervention" in r.getMessage()]
        assert len(events) == 1  # rank 0's line only
    finally:
        r0.ckpt.close()


def test_snapshots_encode_as_their_records_however_the_answer_grows():
    """The writer encodes a request's output ids incrementally; every
    snapshot's JSON must still equal its record's (the stores write it)."""
    import random
    from l0.contract import ModelIdentity, Record
    from l0.engine.vllm.checkpointing import _Encoding, _Snapshot
    rng = random.Random(0)
    for prefix in ((), (7,), (7, 8, 9)):
        base = Record(key="k", model=ModelIdentity("m", "sha256:x"), prompt_ids=(1, 2), output_ids=(),
                      sampling={"stop": ["\x00output_ids\x00"], "max_tokens": 9})
        ids, enc = [], _Encoding()
        for _ in range(40):
            ids += [rng.randrange(0, 50000) for _ in range(rng.randrange(0, 5))]
            n = rng.randrange(max(len(ids) - 3, 0), len(ids) + 1)  # sometimes an older length
            snap = _Snapshot(base, prefix, ids, n, rng.choice([None, "stop"]), ({"kind": "loop"},), 5.0 + n, enc)
            assert Record.from_json(snap.to_json()) == snap.build()
            assert snap.to_json() == snap.build().to_json()


@pytest.mark.parametrize("growth", [[1] * 40, [3] * 20, [2, 3] * 10, [0] * 6 + [1] * 30, [4, 0] * 12,
                                    [1, 0, 0] * 12])
def test_snapshots_land_at_the_step_a_per_step_check_would(tmp_path, growth):
    """The checkpointer looks only at the requests due (a heap by the step
    each could next be due): while no step adds more than the host's
    ``tokens_per_step`` (speculative decoding: several), each snapshot lands
    at the step, and length, that checking every request every step gives."""
    from l0.contract import ModelIdentity
    from l0.engine.config import CheckpointConfig, params_from_xargs, load_server_config
    from l0.engine.vllm.checkpointing import Checkpointer
    every = 4
    ck = Checkpointer(CheckpointConfig(store=f"sqlite://{tmp_path}/ck.db", every=every),
                      ModelIdentity("m", "sha256:x"), finish_poll_s=0, tokens_per_step=max(growth))
    seen = []
    offer = ck.writer.offer
    ck.writer.offer = lambda snap: (seen.append((step_no, snap.n)), offer(snap))
    step_no, out = 0, []
    params = sp()
    params.max_tokens = 1000
    ck.add(0, params_from_xargs({"l0_key": "k"}, load_server_config(), False), params, [5], out)
    want, written = [(0, 0)], 0
    for step_no, k in enumerate(growth, start=1):
        out += [9] * k
        ck.step()
        if len(out) - written >= every:  # the per-step check
            written = len(out)
            want.append((step_no, written))
    assert seen == want
    ck.close()
