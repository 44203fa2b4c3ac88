"""The ``act`` op: apply one step's detections to the logits, in place.

Contract (``act_torch`` is the spec; ``ActCuda`` runs ``kernels/act.cu`` and
equals it bit for bit, proven by ``tests/engine/ops/test_act.py`` on a GPU):

* ``logits`` ``[B, V]`` float32, bfloat16 or float16. :class:`SlotState`
  holds the per-slot tensors (at least ``B`` rows): ``latch`` int32 (the first
  detection sticks), ``action`` int32 (codes of :data:`l0.engine.config.ACTIONS`),
  ``stop_tok`` int64 (-1: none), ``min_tok`` int64, ``penalty`` float32,
  ``max_tok`` int64 (-1: no budget), ``close_cfg`` int32 (bit 1: close a JSON
  answer when a loop fires under ``stop``; bit 2: close it at the budget),
  ``closing`` int32 (0, or why the row is closing: 1 loop, 2 budget; sticks),
  ``margin`` int32 (the row's close margin, see ``jsonstate.close_need``).
  ``res`` is the detect op's :class:`~l0.engine.ops.detect.StepResult`; ``pos``,
  ``jstate``, ``jdepth`` the detector's tokens seen and JSON state.
* closing starts when a loop fires on a JSON row with close-on-loop, or when
  the tokens left (``max_tok - pos``) reach ``jsonstate.close_need`` on a row
  with close-at-budget; the JSON state must be tracked (``jstate >= 0``).
* stop rows (latched under ``stop``, or closing; ``pos >= min_tok``; and the
  stop token's logit finite as received): every other logit becomes
  ``-inf``. Closing rows that can't stop yet: ``logits += close_bias[jstate]``
  (per-token, :mod:`l0.engine.jsonstate`), computed in float32 and rounded once.
  Penalized rows (a loop continues under ``penalize``, or a stop that can't
  happen yet, not closing): ``logits[next_token] -= penalty``, likewise
  rounded. A ``-inf`` logit never becomes finite.
* Returns, when ``readout`` is asked for, an int64 ``[B, 8]`` tensor on the
  logits' device: kind, period, pos, applied (0 none, 1 stop, 2 penalize,
  3 close), reason (0, 1 min_tokens, 2 no stop token, 3 stop token masked),
  latch, closing, JSON depth.
* Never synchronises with the host on a GPU.
"""
from __future__ import annotations

import functools

import torch

from dataclasses import dataclass

from l0.engine.config import ACTIONS
from l0.engine.jsonstate import STR
from l0.engine.kernels import kernel_source
from l0.engine.ops.cuda_launch import launch

_STOP, _PENALIZE = ACTIONS.index("stop"), ACTIONS.index("penalize")
APPLIED_NONE, APPLIED_STOP, APPLIED_PENALIZE, APPLIED_CLOSE = 0, 1, 2, 3
REASON_NONE, REASON_MIN_TOKENS, REASON_NO_STOP_TOKEN, REASON_MASKED = 0, 1, 2, 3
CLOSE_ON_LOOP, CLOSE_AT_BUDGET = 1, 2  # close_cfg bits
CLOSING_NONE, CLOSING_LOOP, CLOSING_BUDGET = 0, 1, 2
READOUT_COLUMNS = ("kind", "period", "pos", "applied", "reason", "latch", "closing", "depth")
NONE = 0


@dataclass(frozen=True)
class SlotState:
    """The per-slot tensors the act op reads (and ``latch``/``closing``, which it
    writes), all ``[num_slots]`` and contiguous on one device; ``close_bias``
    ``[3, V]`` float32 (one row per JSON lexer state)."""

    latch: torch.Tensor
    action: torch.Tensor
    stop_tok: torch.Tensor
    min_tok: torch.Tensor
    penalty: torch.Tensor
    max_tok: torch.Tensor
    close_cfg: torch.Tensor
    closing: torch.Tensor
    margin: torch.Tensor
    close_bias: torch.Tensor

    DTYPES = (torch.int32, torch.int32, torch.int64, torch.int64, torch.float32, torch.int64, torch.int32,
              torch.int32, torch.int32, torch.float32)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.latch, self.action, self.stop_tok, self.min_tok, self.penalty, self.max_tok,
                self.close_cfg, self.closing, self.margin, self.close_bias)

    def check(self) -> "SlotState":
        for t, dt in zip(self.tensors(), self.DTYPES):
            if t.dtype != dt or not t.is_contiguous():
                raise TypeError(f"act: slot tensor must be contiguous {dt}, got {t.dtype}")
        return self


def act_torch(logits: torch.Tensor, res, pos: torch.Tensor, jstate: torch.Tensor, jdepth: torch.Tensor,
              slots: SlotState, readout: bool) -> torch.Tensor | None:
    """The spec, in torch ops (any device). See the module docstring."""
    B, V = logits.shape
    latch = slots.latch[:B]
    latch.copy_(torch.where((latch == NONE) & (res.kind != NONE), res.kind, latch))
    action, stop_tok, pos = slots.action[:B], slots.stop_tok[:B], pos[:B]
    jstate, jdepth = jstate[:B], jdepth[:B]
    scol = stop_tok.clamp_min(0)[:, None]
    kept = logits.gather(1, scol)  # the stop token's logit as received
    stop_open = (stop_tok >= 0) & torch.isfinite(kept[:, 0])
    ready = pos >= slots.min_tok[:B]
    want_stop = (latch != NONE) & (action == _STOP)
    # Close mode (JSON rows): on a loop under stop, or when the budget runs out.
    json_ok = jstate >= 0
    cfg, max_tok = slots.close_cfg[:B], slots.max_tok[:B]
    need = (slots.margin[:B] + jdepth + (jstate >= STR).to(torch.int32) + 1).to(torch.int64)
    on_loop = json_ok & ((cfg & CLOSE_ON_LOOP) != 0) & want_stop
    on_budget = json_ok & ((cfg & CLOSE_AT_BUDGET) != 0) & (max_tok >= 0) & (max_tok - pos <= need)
    closing = slots.closing[:B]
    closing.copy_(torch.where(closing != CLOSING_NONE, closing, torch.where(
        on_loop, CLOSING_LOOP, torch.where(on_budget, CLOSING_BUDGET, CLOSING_NONE))))
    is_closing = closing != CLOSING_NONE
    stop_rows = (want_stop | is_closing) & ready & stop_open
    close_rows = is_closing & json_ok & ~stop_rows
    # A stop that can't happen now (min_tokens, no stop token, the stop token
    # masked by a grammar) penalizes meanwhile, unless the row is closing:
    # never forces a masked token.
    pen_rows = (res.next_token >= 0) & ~close_rows & ((action == _PENALIZE) | (want_stop & ~stop_rows))
    # On the CPU a host check is free and skips O(B*V) work; on a GPU it
    # would synchronise, so the masked ops always run there.
    on_cpu = logits.device.type == "cpu"
    if not on_cpu or bool(pen_rows.any()):
        col = res.next_token.clamp_min(0)[:, None]
        cur = logits.gather(1, col)
        cut = (slots.penalty[:B] * pen_rows.to(torch.float32))[:, None]
        logits.scatter_(1, col, (cur.float() - cut).to(logits.dtype))
    W = min(V, slots.close_bias.shape[1])
    if on_cpu:
        # Only the closing rows (O(rows x V)): the host knows which they are.
        if bool(close_rows.any()):
            rows = close_rows.nonzero()[:, 0]
            bias = slots.close_bias[:, :W].index_select(0, jstate[rows].clamp_min(0))
            if logits.dtype == torch.float32:
                logits[rows, :W] += bias
            else:
                logits[rows, :W] = (logits[rows, :W].float() + bias).to(logits.dtype)
    else:
        bias = slots.close_bias[:, :W].index_select(0, jstate.clamp_min(0))
        part = logits[:, :W]
        part.copy_(torch.where(close_rows[:, None], (part.float() + bias).to(logits.dtype), part))
    if not on_cpu or bool(stop_rows.any()):
        logits.masked_fill_(stop_rows[:, None], float("-inf"))
        logits.scatter_(1, scol, torch.where(stop_rows[:, None], kept, logits.gather(1, scol)))
    if not readout:
        return None
    applied = torch.where(stop_rows, APPLIED_STOP, torch.where(close_rows, APPLIED_CLOSE, torch.where(
        pen_rows, APPLIED_PENALIZE, APPLIED_NONE)))
    reason = torch.where(~(want_stop | is_closing) | stop_rows, REASON_NONE, torch.where(
        stop_tok < 0, REASON_NO_STOP_TOKEN, torch.where(~ready, REASON_MIN_TOKENS, REASON_MASKED)))
    cols = (res.kind, res.period, pos, applied, reason, latch, closing, jdepth)
    return torch.stack([c.to(torch.int64) for c in cols], dim=1)


_KERNELS = {torch.float32: "l0_act_f32", torch.bfloat16: "l0_act_bf16", torch.float16: "l0_act_f16"}
_THREADS = 256


@functools.cache
def get_act_kernels() -> dict:
    import cupy

    module = cupy.RawModule(code=kernel_source("act.cu"), options=("-std=c++17",))
    return {dtype: module.get_function(name) for dtype, name in _KERNELS.items()}


class ActCuda:
    """``kernels/act.cu`` over a step core's :class:`SlotState`: one launch per
    step (one block per row), the readout always written by the kernel into a
    persistent ``[slots, 8]`` device buffer (eight int64 per row: free)."""

    def __init__(self, slots: SlotState) -> None:
        self.slots = slots.check()
        self.device = slots.latch.device
        self.readout = torch.zeros(slots.latch.shape[0], len(READOUT_COLUMNS), dtype=torch.int64,
                                   device=self.device)
        self._slot_args = None

    @staticmethod
    def supports(logits: torch.Tensor) -> bool:
        return logits.is_cuda and logits.dtype in _KERNELS and logits.dim() == 2 and logits.stride(1) == 1

    def __call__(self, logits: torch.Tensor, res, pos: torch.Tensor, jstate: torch.Tensor, jdepth: torch.Tensor,
                 readout: bool) -> torch.Tensor | None:
        import cupy

        c = cupy.asarray
        s = self.slots
        if self._slot_args is None:
            self._slot_args = tuple(c(t) for t in s.tensors()) + (cupy.int32(s.close_bias.shape[1]),)
        B, V = logits.shape
        kind, period, nxt = res.kind, res.period, res.next_token
        if kind.dtype != torch.int32 or period.dtype != torch.int32 or nxt.dtype != torch.int64:
            raise TypeError("act: StepResult must be int32 kind/period and int64 next_token")
        # cupy.asarray of a torch tensor reads its __cuda_array_interface__
        # (no stream, no sync); a bfloat16/float16 row is passed as its raw bits.
        lg = c(logits.view(torch.int16)) if logits.dtype != torch.float32 else c(logits)
        args = (lg, cupy.int64(logits.stride(0)), cupy.int32(V), c(kind.contiguous()), c(period.contiguous()),
                c(nxt.contiguous()), c(pos.contiguous()), c(jstate.contiguous()), c(jdepth.contiguous())
                ) + self._slot_args + (c(self.readout),)
        launch(get_act_kernels()[logits.dtype], (B,), (_THREADS,), args, self.device)
        return self.readout[:B] if readout else None
