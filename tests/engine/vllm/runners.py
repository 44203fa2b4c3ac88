"""Two stand-ins for vLLM's model runners, each driving L0's processor through
that runner's own interface, with no model: the V1 runner's persistent batch
(``BatchUpdate`` adds/removes/moves, live output lists) and Model Runner V2's
slots (``add_request`` with no removal call, slots recycled from a free list,
rows reordered every step, committed ids in ``req_states`` buffers).

The V2 buffers are CPU tensors standing for the model runner's
(``RequestState`` pins memory and can't be built without a GPU): ``.gpu``
for the device tensor, ``.np`` for the host mirror, wrapped in vLLM's own
``LogitsProcRequestState``; each step passes vLLM's own ``LogitsContext``.

A :class:`Scenario` runs the same requests through both and, after every
step, hands back each request's processed logits row, so a test compares the
two runners step by step. The "model" samples each request's scripted token
unless L0 made it ``-inf`` (then the row's argmax: the stop token when L0
forces a stop), so both runs stay in lockstep as long as their logits agree.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

EOS = 2


def fake_vllm_config(slots: int, vocab: int, tokenizer: str = "/nonexistent", max_model_len: int = 256,
                     named=None):
    """The parts of a VllmConfig L0 reads."""
    return SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=slots),
        speculative_config=None,
        model_config=SimpleNamespace(get_vocab_size=lambda: vocab, tokenizer=tokenizer, tokenizer_revision=None,
                                     trust_remote_code=False, logits_processors=named, model="tiny",
                                     served_model_name="tiny", max_model_len=max_model_len))


@dataclass
class Req:
    rid: str
    prompt: list[int]
    params: object               # vllm.SamplingParams
    script: list[int]            # the tokens the "model" wants to write
    chunks: int = 0              # chunked-prefill steps before its first token
    mask_eos: int = 0            # a "grammar" masks EOS for this many output tokens
    out: list[int] = field(default_factory=list)
    left: int = 0                # prefill steps still to run (set at admission)


def base_logits(req: Req, vocab: int) -> torch.Tensor:
    """The model's logits for the request's next token: fixed by its id and
    output length, so both runs see the same values."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{req.rid}/{len(req.out)}".encode()))
    row = torch.randn(vocab, generator=g)
    if len(req.out) < req.mask_eos:
        row[EOS] = float("-inf")
    return row


def sample(req: Req, row: torch.Tensor) -> int:
    want = req.script[len(req.out) % len(req.script)]
    return want if torch.isfinite(row[want]) else int(row.argmax())


def finished(req: Req) -> bool:
    p = req.params
    if not req.out:
        return False
    last = req.out[-1]
    if (last == EOS and not p.ignore_eos) or last in (p.stop_token_ids or ()):
        return True
    return p.max_tokens is not None and len(req.out) >= p.max_tokens


def v2_state(slots: int, vocab: int, max_model_len: int):
    """vLLM's ``LogitsProcRequestState`` over CPU tensors standing for Model
    Runner V2's buffers (``.gpu`` the device tensor, ``.np`` the host mirror)."""
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcRequestState
    uva = lambda: SimpleNamespace(np=np.zeros(slots, dtype=np.int32))  # noqa: E731
    return LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=slots, vocab_size=vocab,
                                  all_token_ids=SimpleNamespace(gpu=torch.zeros(slots, max_model_len,
                                                                                dtype=torch.int32)),
                                  prompt_len=uva(), prefill_len=uva(),
                                  total_len=SimpleNamespace(gpu=torch.zeros(slots, dtype=torch.int32)))


class V1Runner:
    """vLLM's V1 persistent batch: rows, live output lists, condensed by moves."""

    def __init__(self, proc, slots: int, rng: random.Random) -> None:
        from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
        self.BatchUpdate, self.M = BatchUpdate, MoveDirectionality
        self.proc, self.slots, self.rng = proc, slots, rng
        self.rows: list[Req | None] = []
        self.outs: dict[str, list[int]] = {}
        self._removed, self._added, self._moved = [], [], []

    def admit(self, req: Req, prior: list[int]) -> None:
        out = self.outs.setdefault(req.rid, [])  # a preempted request comes back with its list
        out[:] = prior
        holes = [i for i, r in enumerate(self.rows) if r is None]
        index = holes[0] if holes else len(self.rows)
        if index == len(self.rows):
            self.rows.append(None)
        self.rows[index] = req
        self._added.append((index, req.params, list(req.prompt), out))

    def leave(self, req: Req) -> None:
        index = self.rows.index(req)
        self.rows[index] = None
        self._removed.append(index)

    def _condense(self) -> None:
        while None in self.rows:
            hole = self.rows.index(None)
            last = max(i for i, r in enumerate(self.rows) if r is not None) if any(self.rows) else -1
            if last < hole:
                break
            self.rows[hole], self.rows[last] = self.rows[last], None
            self._moved.append((last, hole, self.M.UNIDIRECTIONAL))
        while self.rows and self.rows[-1] is None:
            self.rows.pop()
        if len(self.rows) > 1 and self.rng.random() < 0.3:  # vLLM also swaps rows (e.g. to reorder)
            a, b = self.rng.sample(range(len(self.rows)), 2)
            self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
            self._moved.append((a, b, self.M.SWAP))

    def step(self, vocab: int) -> dict[str, torch.Tensor]:
        self._condense()
        if self._removed or self._added or self._moved:
            bu = self.BatchUpdate(batch_size=len(self.rows), removed=self._removed, added=self._added,
                                  moved=self._moved)
            self.proc.update_state(bu)
            self._removed, self._added, self._moved = [], [], []
        else:
            self.proc.update_state(None)
        if not self.rows:
            return {}
        logits = torch.stack([base_logits(r, vocab) for r in self.rows])
        out = self.proc.apply(logits)
        return {r.rid: out[i].clone() for i, r in enumerate(self.rows)}

    def commit(self, req: Req, token: int) -> None:
        self.outs[req.rid].append(token)


class V2Runner:
    """Model Runner V2's slots: a free list, staged writes flushed before
    ``apply_staged_writes``, rows in a new order every step, and the sampled
    token written into ``all_token_ids``/``total_len`` after ``apply``."""

    def __init__(self, proc_cls, vllm_config, slots: int, vocab: int, max_model_len: int,
                 rng: random.Random) -> None:
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext
        self.Ctx = LogitsContext
        self.slots, self.rng = slots, rng
        self.state = v2_state(slots, vocab, max_model_len)
        self.prompt_len, self.prefill_len = self.state.prompt_len, self.state.prefill_len
        self.all_token_ids, self.total_len = self.state.all_token_ids, self.state.total_len
        self.proc = proc_cls(vllm_config, self.state)
        self.free = list(range(slots))
        self.slot_of: dict[str, int] = {}
        self.running: list[Req] = []
        self._staged: list = []

    def admit(self, req: Req, prior: list[int]) -> None:
        slot = self.free.pop()
        self.slot_of[req.rid] = slot
        ids = list(req.prompt) + list(prior)
        self.prompt_len.np[slot] = len(req.prompt)
        self.prefill_len.np[slot] = len(ids)
        self._staged.append((slot, ids))
        self.proc.add_request(slot, req.params)
        self.running.append(req)

    def leave(self, req: Req) -> None:
        self.free.append(self.slot_of.pop(req.rid))
        self.running.remove(req)

    def step(self, vocab: int) -> dict[str, torch.Tensor]:
        for slot, ids in self._staged:  # RequestState.apply_staged_writes
            self.all_token_ids.gpu[slot, :len(ids)] = torch.tensor(ids, dtype=torch.int32)
            self.total_len.gpu[slot] = len(ids)
        self._staged = []
        self.proc.apply_staged_writes()
        if not self.running:
            return {}
        order = list(self.running)
        self.rng.shuffle(order)
        slots = [self.slot_of[r.rid] for r in order]
        idx = torch.tensor(slots, dtype=torch.int32)
        ctx = self.Ctx(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(slots, dtype=np.int32),
                       expanded_local_pos=torch.zeros(len(order), dtype=torch.int32),
                       input_ids=torch.zeros(len(order), dtype=torch.int64),
                       pos=torch.zeros(len(order), dtype=torch.int64),
                       seq_lens_upper_bound_np=np.zeros(len(order), dtype=np.int32))
        logits = torch.stack([base_logits(r, vocab) for r in order])
        out = self.proc.apply(logits, ctx)
        return {r.rid: out[i].clone() for i, r in enumerate(order)}

    def commit(self, req: Req, token: int) -> None:
        slot = self.slot_of[req.rid]
        n = int(self.total_len.gpu[slot])
        self.all_token_ids.gpu[slot, n] = token
        self.total_len.gpu[slot] = n + 1


class Scenario:
    """Runs ``requests`` on a runner: at most ``slots`` at once, admitted in
    order, some preempted and re-admitted with their output. ``on_step``
    gets ``(step, {rid: processed logits row})``."""

    def __init__(self, requests: list[Req], slots: int, vocab: int, seed: int, preempt: float = 0.05) -> None:
        self.requests, self.slots, self.vocab, self.seed, self.preempt = requests, slots, vocab, seed, preempt

    def run(self, runner, on_step, max_steps: int = 400) -> dict[str, list[int]]:
        import copy
        reqs = [copy.copy(r) for r in self.requests]
        for r in reqs:
            r.out = []
        rng = random.Random(self.seed)
        waiting, running, done = list(reqs), [], {}
        for step in range(max_steps):
            while waiting and len(running) < self.slots:
                r = waiting.pop(0)
                r.left = r.chunks
                runner.admit(r, list(r.out))
                running.append(r)
            rows = runner.step(self.vocab)
            on_step(step, rows)
            for r in list(running):
                if r.left > 0:  # a chunked-prefill step: nothing sampled
                    r.left -= 1
                    continue
                tok = sample(r, rows[r.rid])
                r.out.append(tok)
                runner.commit(r, tok)
                if finished(r):
                    running.remove(r)
                    runner.leave(r)
                    done[r.rid] = list(r.out)
                elif rng.random() < self.preempt:
                    running.remove(r)
                    runner.leave(r)
                    waiting.append(r)
            if not waiting and not running:
                runner.step(self.vocab)  # the step that hands the last removals over
                break
        return done
