"""L0 under vLLM's Model Runner V2: a V2 logits processor over :class:`l0.engine.step.StepCore`.

V2's contract (``vllm/v1/worker/gpu/sample/logits_processor/interface.py``):
a request lives in a *slot* (``add_request(slot, params)``; slots are
recycled with no removal call), ``apply(logits, ctx)`` runs once per step for
the whole batch, its rows reordered every step (``ctx.expanded_idx_mapping``:
row → slot), and the committed token ids live on the device in
``req_states.all_token_ids`` up to ``req_states.total_len``.

What this adapter does with that:

* **Tokens on the device.** Each step reads every slot's new tokens from
  ``all_token_ids`` at the position after the last one L0 fed (a device
  tensor per slot), so nothing is uploaded and nothing on the host waits.
  The detector's state stays per slot; the act op gathers it into row order.
* **Admission** (``add_request``) only stages the request: its prompt and
  any output it already has (a preempted request re-admitted) reach the
  device in ``req_states``' own staged writes, which vLLM flushes before
  ``apply_staged_writes()``; there L0 starts the row, primes a resumed
  request (``l0_resume_from``) and replays re-admitted output from the
  device, and queues one device→host copy of the prompt for what the host
  needs (the item count a prompt asks for, the checkpoint record).
* **Host copies of output ids** (checkpoints, starvation, the debug freeze)
  come from one non-blocking copy per step of the tokens L0 fed, read when
  its event says it landed (:class:`l0.engine.readback.Readback`). On a CPU device
  they land at once, so the host sees what the V1 adapter sees.
* **No removal hook.** A slot's previous request ends when the slot is given
  to a new one: its final ids are copied before the new request's writes
  (same stream, queued earlier) and its record finished. A request that
  ends while the engine goes idle is finished by the checkpoint finisher
  thread, which reads the slot's ids from the device (a side stream on a
  GPU) and takes a read only when two in a row agree.
* **Speculative decoding.** A request owns one row per draft token; L0 acts
  on each request's first row (the committed history ends there) and leaves
  draft rows alone; the tokens accepted in a step are all fed, in order.
"""
from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import torch
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor

from l0.engine.config import params_from_xargs
from l0.engine.readback import Readback
from l0.engine.slot_tokens import SlotTokens
from l0.engine.vllm.host import EngineHost, is_json, output_budget, shadowed_by_named, validate

log = logging.getLogger("l0")


class _Admission(NamedTuple):
    """A request ``add_request`` staged: its options, its params, and whether L0 acts on it."""

    opts: object
    params: object
    act: bool


class L0V2Processor(EngineHost, LogitsProcessor):
    """See the module docstring. ``add_request`` returns whether L0 acts on
    or checkpoints the request, so a batch with nothing of L0's skips
    ``apply``."""

    entry_point = False

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate(sampling_params)

    def __init__(self, vllm_config, req_states) -> None:
        self.rs = req_states
        self.S = S = req_states.max_num_reqs
        spec = getattr(vllm_config, "speculative_config", None)
        self.K = 1 + (int(getattr(spec, "num_speculative_tokens", 0) or 0) if spec is not None else 0)
        device = torch.device(req_states.device)
        shadowed = self.entry_point and shadowed_by_named(vllm_config)
        self.mirror: dict[int, list[int]] = {}  # slot -> the request's output ids on the host
        self._plen: dict[int, int] = {}  # slot -> prompt length (resume prefix included)
        self._keys: dict[int, str] = {}  # keyed slot -> its l0_key
        self._ends: dict[int, int] = {}  # keyed slot -> end of its output in all_token_ids (its record's reads)
        self._admit: dict[int, _Admission] = {}  # staged by add_request until apply_staged_writes
        self._settle: dict[int, list[int]] = {}  # the finisher's previous read per slot
        self._side = None  # the finisher's CUDA stream
        self.device = device
        # Slot S is a spare that is never tracked: rows L0 leaves alone point there.
        self._host_init(vllm_config, device, device.type == "cuda", S + 1, shadowed, "v2")
        self.reads = Readback(device)
        self.feed = SlotTokens(S + 1, self.K, device)  # column S: the spare, never fed
        self._spare = torch.tensor(S, dtype=torch.int64, device=device)
        if self._freeze is not None:
            self._freeze.rows = self.mirror
        if self.K > 1 and self.core is not None:
            logging.getLogger("vllm.l0").info(
                "l0: speculative decoding (%d draft tokens): L0 acts on each request's first row and feeds the "
                "tokens accepted each step; draft rows are left alone", self.K - 1)

    def _checkpointer_options(self) -> dict:
        # Host mirrors may also land several steps' tokens at once (Readback):
        # the checkpointer learns that faster pace per request.
        return {"output_of": self._finisher_read, "tokens_per_step": self.K}

    # -- admission ------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params) -> bool:
        slot = req_idx
        opts = params_from_xargs(sampling_params.extra_args, self.cfg, is_json(sampling_params))
        self._release(slot)
        act = self.core is not None and opts.action != "off"
        keyed = self.ckpt is not None and opts.key is not None
        if keyed:
            # A preempted request comes back in another slot; its old slot
            # (never told) must not finish the record with the old ids later.
            for other, key in list(self._keys.items()):
                if key == opts.key:
                    self._release(other, final=False)
            self._keys[slot] = opts.key
        if not (act or keyed or self.starvation is not None or self._freeze is not None):
            return False
        self._admit[slot] = _Admission(opts, sampling_params, act)
        return act or keyed

    def apply_staged_writes(self) -> None:
        self.heartbeat.between_steps()
        self.reads.poll()
        if not self._admit:
            return
        ids = self.rs.all_token_ids.gpu
        for slot, (opts, params, act) in self._admit.items():
            pl, fl = int(self.rs.prompt_len.np[slot]), int(self.rs.prefill_len.np[slot])
            self._plen[slot] = pl
            if self.ckpt is not None and opts.key is not None:
                self._ends[slot] = pl + output_budget(params, pl, ids.shape[1])
            n = opts.resume_from if 0 < opts.resume_from <= pl else 0
            row = None
            if act:
                self._core_add(slot, opts, params, None, pl, prefix=ids[slot, pl - n:pl].to(torch.int64))
                row = self.core.rows.get(slot)
                if fl - pl > 1:  # re-admitted with output: replay all but the last...
                    self.core.feed(slot, ids[slot, pl:fl - 1].to(torch.int64))
            # ...which the next step feeds as its token, as the V1 adapter does.
            self.feed.follow(slot, fl - 1 if fl > pl else fl)
            out: list[int] = []
            self.mirror[slot] = out
            self.reads.read(ids[slot, :fl], functools.partial(self._admitted, slot, opts, params, pl, n, row, out))
        self._admit.clear()

    def _admitted(self, slot: int, opts, params, pl: int, n: int, row, out: list[int], ids: list[int]) -> None:
        """The admitted request's ids reached the host (at once on a CPU)."""
        prompt = ids[:pl]
        out[:0] = ids[pl:]  # output it already had (re-admitted after preemption)
        if row is not None and self.core.rows.get(slot) is row:
            self.core.set_prompt(slot, prompt[:pl - n])
        if self.ckpt is not None and opts.key is not None:
            self.ckpt.add(slot, opts, params, prompt, out)
        if self.starvation is not None:
            self.starvation.add(slot, out)

    def _release(self, slot: int, final: bool = True) -> None:
        """The slot's previous request has left the engine (finished, aborted
        or preempted): stop following it, and (``final``) finish its record
        with its final ids, copied before the new request's writes reach the
        slot; without ``final`` its record is left to the request's new slot."""
        self._admit.pop(slot, None)
        self._keys.pop(slot, None)
        self._settle.pop(slot, None)
        self.feed.drop(slot)
        if self.core is not None:
            self.core.remove(slot)
        if self.starvation is not None:
            self.starvation.remove(slot)
        out = self.mirror.pop(slot, None)
        end = self._ends.pop(slot, None)
        if out is None or end is None:
            return
        if not final:
            self.reads.after(functools.partial(self._forget, slot, out))
            return
        pl = self._plen[slot]
        self.reads.read(self._output_view(slot, pl, end), functools.partial(self._finished, slot, pl, out))

    def _output_view(self, slot: int, pl: int, end: int) -> torch.Tensor:
        """``[1 + n]`` int64 on the device: the slot's ``total_len``, then its
        ids from ``pl`` to ``end`` (read back: :func:`_output_ids`)."""
        return torch.cat([self.rs.total_len.gpu[slot:slot + 1].to(torch.int64),
                          self.rs.all_token_ids.gpu[slot, pl:end].to(torch.int64)])

    def _finished(self, slot: int, pl: int, out: list[int], values: list[int]) -> None:
        out[:] = _output_ids(values, pl)
        self.ckpt.remove(slot)

    def _forget(self, slot: int, out: list[int]) -> None:
        t = self.ckpt.tracked.get(slot)
        if t is not None and t.out_ids is out:
            self.ckpt.forget(slot)

    # -- the step -------------------------------------------------------------
    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        self.heartbeat.beat(logits.shape[0])
        self.reads.poll()
        if self.core is None and not self.mirror:
            return logits
        start = self.feed.next_pos.clone() if self.mirror else None
        toks = self.feed(self.rs.all_token_ids.gpu, self.rs.total_len.gpu)
        if self.mirror:
            self.reads.read(torch.cat([start[None], toks]),
                            functools.partial(self._mirror_step, dict(self.mirror), dict(self._plen)))
        self._host_step()
        if self.core is None:
            return logits
        row_slot = ctx.expanded_idx_mapping.to(torch.int64)
        if self.K > 1:  # draft rows: left alone (the spare slot)
            row_slot = torch.where(ctx.expanded_local_pos == 0, row_slot, self._spare)
        return self.core.step_rows(logits, toks, row_slot, ctx.idx_mapping_np.tolist())

    def _mirror_step(self, lists: dict[int, list[int]], plens: dict[int, int], values: list[list[int]]) -> None:
        """A step's fed tokens reached the host: append them to the output
        lists they belong to (by position, so a token is never added twice)."""
        start, rows = values[0], values[1:]
        for slot, out in lists.items():
            base = start[slot] - plens[slot]
            for j, row in enumerate(rows):
                tok = row[slot]
                if tok < 0:
                    break
                if len(out) == base + j:
                    out.append(tok)

    # -- the finisher thread ----------------------------------------------------
    def _finisher_read(self, slot: int, out_ids: list[int]) -> list[int] | None:
        """The slot's output ids as the device has them now, once two reads
        in a row agree (the engine may be writing them); None otherwise or
        when the slot changed hands during the read. Off the decode thread."""
        if self.mirror.get(slot) is not out_ids:
            return None
        pl, end = self._plen.get(slot), self._ends.get(slot)
        if pl is None or end is None:
            return None
        if self.device.type == "cuda":
            if self._side is None:
                self._side = torch.cuda.Stream(device=self.device)
            with torch.cuda.stream(self._side):  # never queued behind (or ahead of) the decode loop
                values = self._output_view(slot, pl, end).to("cpu").tolist()
        else:
            values = self._output_view(slot, pl, end).tolist()
        if self.mirror.get(slot) is not out_ids:
            return None
        now = _output_ids(values, pl)
        before, self._settle[slot] = self._settle.get(slot), now
        return now if before == now else None

    def flush(self) -> None:
        """Wait for every pending host copy (tests, shutdown: not the hot path)."""
        self.reads.drain()
        if self.core is not None:
            self.core.flush()


def _output_ids(values: list[int], prompt_len: int) -> list[int]:
    """A slot's output ids from an :meth:`L0V2Processor._output_view` read:
    ``total_len`` first, then the ids from the prompt's end on."""
    return values[1:1 + max(values[0] - prompt_len, 0)]


class L0V2EntryPoint(L0V2Processor):
    """The V2 implementation behind the ``vllm.logits_processors`` entry point."""

    entry_point = True
