"""The ``act`` op: apply one step's detections to the logits, in place.

Contract (``act_torch`` is the spec; ``ActCuda`` runs ``kernels/act.cu`` and
equals it bit for bit, proven by ``tests/ops/test_act.py`` on a GPU):

* ``logits`` ``[B, V]`` float32, bfloat16 or float16; per-slot tensors hold at
  least ``B`` rows: ``latch`` int32 (updated: the first detection sticks),
  ``action`` int32 (codes of :data:`l0.config.ACTIONS`), ``stop_tok`` int64
  (-1: none), ``min_tok`` int64, ``penalty`` float32; ``res`` the detect
  op's :class:`~l0.ops.detect.StepResult` and ``pos`` int64 the tokens seen.
* stop rows (latched, action ``stop``, ``pos >= min_tok``, and the stop
  token's logit finite as received): every other logit becomes ``-inf``.
  Penalized rows (a loop continues, action ``penalize``, or a stop that can't
  happen yet): ``logits[next_token] -= penalty`` computed in float32 and
  rounded once to the logits' dtype. A ``-inf`` logit never becomes finite.
* Returns, when ``readout`` is asked for, an int64 ``[B, 6]`` tensor on the
  logits' device: kind, period, pos, applied (0 none, 1 stop, 2 penalize),
  reason (0, 1 min_tokens, 2 no stop token, 3 stop token masked), latch.
* Never synchronises with the host on a GPU.
"""
from __future__ import annotations

import functools

import torch

from l0.config import ACTIONS
from l0.kernels import kernel_source
from l0.ops.cuda_launch import launch

_STOP, _PENALIZE = ACTIONS.index("stop"), ACTIONS.index("penalize")
APPLIED_NONE, APPLIED_STOP, APPLIED_PENALIZE = 0, 1, 2
REASON_NONE, REASON_MIN_TOKENS, REASON_NO_STOP_TOKEN, REASON_MASKED = 0, 1, 2, 3
NONE = 0


def act_torch(logits: torch.Tensor, res, pos: torch.Tensor, latch: torch.Tensor, action: torch.Tensor,
              stop_tok: torch.Tensor, min_tok: torch.Tensor, penalty: torch.Tensor,
              readout: bool) -> torch.Tensor | None:
    """The spec, in torch ops (any device). See the module docstring."""
    B = logits.shape[0]
    latch = latch[:B]
    latch.copy_(torch.where((latch == NONE) & (res.kind != NONE), res.kind, latch))
    action, stop_tok = action[:B], stop_tok[:B]
    scol = stop_tok.clamp_min(0)[:, None]
    kept = logits.gather(1, scol)  # the stop token's logit as received
    stop_open = (stop_tok >= 0) & torch.isfinite(kept[:, 0])
    ready = pos[:B] >= min_tok[:B]
    want_stop = (latch != NONE) & (action == _STOP)
    stop_rows = want_stop & ready & stop_open
    # A stop that can't happen now (min_tokens, no stop token, the stop token
    # masked by a grammar) penalizes meanwhile: never forces a masked token.
    pen_rows = (res.next_token >= 0) & ((action == _PENALIZE) | (want_stop & ~stop_rows))
    # On the CPU a host check is free and skips O(B*V) work; on a GPU it
    # would synchronise, so the masked ops always run there.
    on_cpu = logits.device.type == "cpu"
    if not on_cpu or bool(pen_rows.any()):
        col = res.next_token.clamp_min(0)[:, None]
        cur = logits.gather(1, col)
        cut = (penalty[:B] * pen_rows.to(torch.float32))[:, None]
        logits.scatter_(1, col, (cur.float() - cut).to(logits.dtype))
    if not on_cpu or bool(stop_rows.any()):
        logits.masked_fill_(stop_rows[:, None], float("-inf"))
        logits.scatter_(1, scol, torch.where(stop_rows[:, None], kept, logits.gather(1, scol)))
    if not readout:
        return None
    applied = torch.where(stop_rows, APPLIED_STOP, torch.where(pen_rows, APPLIED_PENALIZE, APPLIED_NONE))
    reason = torch.where(~want_stop | stop_rows, REASON_NONE, torch.where(
        stop_tok < 0, REASON_NO_STOP_TOKEN, torch.where(~ready, REASON_MIN_TOKENS, REASON_MASKED)))
    cols = (res.kind, res.period, pos[:B], applied, reason, latch)
    return torch.stack([c.to(torch.int64) for c in cols], dim=1)


_KERNELS = {torch.float32: "l0_act_f32", torch.bfloat16: "l0_act_bf16", torch.float16: "l0_act_f16"}
_THREADS = 256


@functools.cache
def get_act_kernels() -> dict:
    import cupy

    module = cupy.RawModule(code=kernel_source("act.cu"), options=("-std=c++17",))
    return {dtype: module.get_function(name) for dtype, name in _KERNELS.items()}


class ActCuda:
    """``kernels/act.cu`` over a step core's per-slot tensors: one launch per
    step (one block per row), the readout always written by the kernel into a
    persistent ``[slots, 6]`` device buffer (six int64 per row: free)."""

    def __init__(self, latch: torch.Tensor, action: torch.Tensor, stop_tok: torch.Tensor,
                 min_tok: torch.Tensor, penalty: torch.Tensor) -> None:
        self.device = latch.device
        self.readout = torch.zeros(latch.shape[0], 6, dtype=torch.int64, device=self.device)
        self._slots = (latch, action, stop_tok, min_tok, penalty)
        for t, dt in zip(self._slots, (torch.int32, torch.int32, torch.int64, torch.int64, torch.float32)):
            if t.dtype != dt or not t.is_contiguous():
                raise TypeError(f"act: per-slot tensor must be contiguous {dt}, got {t.dtype}")
        self._slot_args = None

    @staticmethod
    def supports(logits: torch.Tensor) -> bool:
        return logits.is_cuda and logits.dtype in _KERNELS and logits.dim() == 2 and logits.stride(1) == 1

    def __call__(self, logits: torch.Tensor, res, pos: torch.Tensor, readout: bool) -> torch.Tensor | None:
        import cupy

        c = cupy.asarray
        if self._slot_args is None:
            self._slot_args = tuple(c(t) for t in self._slots)
        B, V = logits.shape
        kind, period, nxt = res.kind, res.period, res.next_token
        if kind.dtype != torch.int32 or period.dtype != torch.int32 or nxt.dtype != torch.int64:
            raise TypeError("act: StepResult must be int32 kind/period and int64 next_token")
        # cupy.asarray of a torch tensor reads its __cuda_array_interface__
        # (no stream, no sync); a bfloat16/float16 row is passed as its raw bits.
        lg = c(logits.view(torch.int16)) if logits.dtype != torch.float32 else c(logits)
        args = (lg, cupy.int64(logits.stride(0)), cupy.int32(V), c(kind.contiguous()), c(period.contiguous()),
                c(nxt.contiguous()), c(pos.contiguous())) + self._slot_args + (c(self.readout),)
        launch(get_act_kernels()[logits.dtype], (B,), (_THREADS,), args, self.device)
        return self.readout[:B] if readout else None
