"""The ``detect`` op: batched loop / near-loop / echo / no-progress detection on a torch device.

Contract (the spec is :mod:`l0.engine.ops.detect_reference`; every backend equals it
exactly, proven by ``tests/engine/ops/test_detect.py``):

* A detector holds state for ``num_slots`` request slots (rows of vLLM's
  persistent batch) and periods ``1..max_period``.
* ``configure(slot, params, expected_items)`` starts a request in a slot;
  ``clear``, ``move(src, dst)``, ``swap(a, b)`` follow the persistent batch.
* ``step(tokens)`` takes one token id per slot (int32/int64 tensor of shape
  ``[n]``, ``n <= num_slots``, rows ``0..n-1``; ``-1`` = no new token) on the
  detector's device and returns a :class:`StepResult` of device tensors. It
  never synchronises with the host and costs O(max_period) per slot.
* Counters are int32 and exact for sequences up to 2**21 tokens.
* With JSON tables (:class:`l0.engine.jsonstate.JsonTables`), a slot configured with
  ``json=True`` tracks its JSON answer's lexer state and depth in ``jstate``
  / ``jdepth`` (int32 ``[num_slots]``, ``LOST`` = -1 when untracked), one
  table lookup per token in the same step.

Backends: ``"torch"`` (CPU or GPU, here), ``"cuda"`` (one CuPy/NVRTC kernel
launch per step, :mod:`l0.engine.ops.detect_cuda`), ``"cpu"`` (one fused C call per
step, :mod:`l0.engine.ops.detect_cpu`) and the plain-Python ``"reference"``.
:func:`l0.engine.ops.make_detector` with ``backend="auto"`` picks cuda on a GPU when CuPy is
importable, cpu on the CPU when a C compiler works, else torch. The cuda and
cpu backends return views of reused buffers: read a StepResult before the
next step.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from l0.engine import jsonstate
from l0.engine.config import DetectorParams
from l0.engine.ops.detect_reference import (BLANK, ECHO, LOOP, NEAR, NEVER, NONE, ReferenceDetector,
                                     echo_need, loop_need, near_need)
from l0.engine.upload import upload
from l0.engine.vocab import TokenClasses

__all__ = ["StepResult", "TorchDetector", "NONE", "LOOP", "NEAR", "BLANK", "ECHO"]


@dataclass(frozen=True)
class StepResult:
    """Per-slot outcome of one step (device tensors, shape ``[n]``).

    ``kind`` int32 (NONE/LOOP/NEAR/BLANK/ECHO), ``period`` int32 (0 unless a loop),
    ``next_token`` int64 (token that would continue the loop, else -1).
    """

    kind: torch.Tensor
    period: torch.Tensor
    next_token: torch.Tensor


@functools.lru_cache(maxsize=1024)
def thresholds(params: DetectorParams, expected_items: int, max_period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A slot's per-period thresholds (int32 ``[3, P]``: loop, near, echo)
    and knobs (int32 ``[7]``), as host tensors. Cached: requests share a
    handful of configurations, and computing 3 x P thresholds in Python on
    every admission cost more than the steps of a short request (read-only:
    callers copy them)."""
    P = max_period
    need = [[min(loop_need(params, p), NEVER) for p in range(1, P + 1)],
            [min(near_need(params, p, expected_items), NEVER) for p in range(1, P + 1)],
            [min(echo_need(params, p), NEVER) for p in range(1, P + 1)]]
    knobs = [params.echo_threshold_milli, params.echo_min_span, params.echo_min_content_milli,
             expected_items, params.near_threshold_milli, params.near_min_content_milli,
             params.max_blank_run if params.max_blank_run > 0 else NEVER]
    return torch.tensor(need, dtype=torch.int32), torch.tensor(knobs, dtype=torch.int32)


def _table(values: Sequence[bool] | None, device, default: bool) -> torch.Tensor:
    if values is None:
        # One entry, indexed with clamp(max=0): every token gets ``default``.
        return torch.tensor([default], dtype=torch.int32, device=device)
    return torch.as_tensor(list(values), dtype=torch.int32, device=device)


class TorchDetector:
    """Vectorised ``[slots, periods]`` implementation of the reference."""

    backend = "torch"

    def __init__(self, num_slots: int, max_period: int, classes: TokenClasses | None = None,
                 device: torch.device | str = "cpu", json: jsonstate.JsonTables | None = None) -> None:
        if num_slots < 1 or max_period < 1:
            raise ValueError(f"num_slots ({num_slots}) and max_period ({max_period}) must be >= 1")
        dev = torch.device(device)
        S, P = num_slots, max_period
        self.num_slots, self.max_period, self.device = S, P, dev
        i32 = dict(dtype=torch.int32, device=dev)
        classes = classes or TokenClasses()
        self.content = _table(classes.content, dev, True)
        self.blank_tab = _table(classes.blank, dev, False)
        self.number = _table(classes.number, dev, False)
        self.periods = torch.arange(1, P + 1, dtype=torch.int64, device=dev)
        # Ring of the last P tokens; token t lives at column t % P.
        self.ring = torch.zeros((S, P), dtype=torch.int64, device=dev)
        self.pos = torch.zeros(S, dtype=torch.int64, device=dev)
        self.run = torch.zeros((S, P), **i32)
        self.score = torch.zeros((S, P), **i32)
        self.nlen = torch.zeros((S, P), **i32)
        self.ncont = torch.zeros((S, P), **i32)
        self.erun = torch.zeros((S, P), **i32)
        self.blank = torch.zeros(S, **i32)
        # Echo segment per slot: score, length, echoing content, echoing tokens
        # (int32) and the sum of echo lags (int64: up to 2**21 tokens x lag 4096).
        self.echo = torch.zeros((S, 4), **i32)
        self.elag = torch.zeros(S, dtype=torch.int64, device=dev)
        # Per-slot thresholds, precomputed at configure() so a step is compares only.
        self.loop_need = torch.full((S, P), NEVER, **i32)
        self.near_need = torch.full((S, P), NEVER, **i32)
        self.echo_need = torch.full((S, P), NEVER, **i32)
        self.thr = torch.zeros(S, **i32)
        # Echo knobs per slot: threshold, min span, content (thousandths), expected items.
        self.echo_cfg = torch.zeros((S, 4), **i32)
        self.content_milli = torch.zeros(S, **i32)
        self.max_blank = torch.full((S,), NEVER, **i32)
        self.active = torch.zeros(S, dtype=torch.bool, device=dev)
        # JSON tracker: packed per-token effects, [3 * vocab] (state-major).
        self.json = json
        self.jnext = (torch.tensor([v for row in json.next for v in row], **i32) if json is not None
                      else torch.zeros(3, **i32))
        self.jvocab = json.vocab if json is not None else 1
        self.jstate = torch.full((S,), jsonstate.LOST, **i32)
        self.jdepth = torch.zeros(S, **i32)
        self._state = (self.ring, self.pos, self.run, self.score, self.nlen, self.ncont, self.blank,
                       self.loop_need, self.near_need, self.thr, self.content_milli, self.max_blank,
                       self.active, self.erun, self.echo, self.elag, self.echo_need, self.echo_cfg,
                       self.jstate, self.jdepth)

    # -- persistent-batch bookkeeping (host-driven, rare) -----------------
    def configure(self, slot: int, params: DetectorParams, expected_items: int = 0, json: bool = False) -> None:
        """Start a request in ``slot``. Its thresholds are computed on the host
        and uploaded in non-blocking copies (no host sync on a GPU). ``json``:
        track its JSON state (needs the detector's JSON tables)."""
        self.clear(slot)
        need, knobs = thresholds(params, expected_items, self.max_period)
        need, knobs = upload(need, torch.int32, self.device), upload(knobs, torch.int32, self.device)
        self.loop_need[slot].copy_(need[0])
        self.near_need[slot].copy_(need[1])
        self.echo_need[slot].copy_(need[2])
        self.echo_cfg[slot].copy_(knobs[:4])
        self.thr[slot].copy_(knobs[4])
        self.content_milli[slot].copy_(knobs[5])
        self.max_blank[slot].copy_(knobs[6])
        if json and self.json is not None:
            self.jstate[slot].fill_(jsonstate.OUT)
        self.active[slot].fill_(True)

    def set_expected(self, slot: int, params: DetectorParams, expected_items: int) -> None:
        """Change the item count a configured slot's prompt asks for (the
        near-loop and echo thresholds that depend on it), keeping its history:
        a host that learns the prompt after the request started (vLLM's V2
        runner keeps prompts on the device) sets it once the prompt is read."""
        need, _ = thresholds(params, expected_items, self.max_period)
        self.near_need[slot].copy_(upload(need[1], torch.int32, self.device))
        self.echo_cfg[slot, 3].fill_(expected_items)

    def clear(self, slot: int) -> None:
        # fill_/copy_ only: a scalar setitem on a CUDA tensor syncs the host.
        for t in self._state:
            t[slot].fill_(0)
        self.loop_need[slot].fill_(NEVER)
        self.near_need[slot].fill_(NEVER)
        self.echo_need[slot].fill_(NEVER)
        self.max_blank[slot].fill_(NEVER)
        self.jstate[slot].fill_(jsonstate.LOST)

    def move(self, src: int, dst: int) -> None:
        for t in self._state:
            t[dst].copy_(t[src])
        self.clear(src)

    def swap(self, a: int, b: int) -> None:
        # Row copies on the device: no index tensor to upload, no host sync.
        for t in self._state:
            keep = t[a].clone()
            t[a].copy_(t[b])
            t[b].copy_(keep)

    def position(self, slot: int) -> int:
        """Tokens seen in ``slot`` (reads the device: not for the hot path)."""
        return int(self.pos[slot])

    def json_state(self, slot: int) -> tuple[int, int]:
        """(lexer state, depth) of the slot's JSON answer (reads the device)."""
        return int(self.jstate[slot]), int(self.jdepth[slot])

    # -- the op -----------------------------------------------------------
    def step(self, tokens: torch.Tensor) -> StepResult:
        n = tokens.shape[0]
        x = tokens.to(torch.int64)
        has = (x >= 0) & self.active[:n]
        xs = x.clamp_min(0)
        pos = self.pos[:n]
        P = self.max_period
        cols = pos[:, None] - self.periods  # t - p, [n, P]
        prev = self.ring[:n].gather(1, cols.remainder(P))
        seen = cols >= 0
        match = (prev == xs[:, None]) & seen
        num_x = self._lookup(self.number, xs).bool()
        near = match | (num_x[:, None] & self._lookup(self.number, prev).bool() & seen)
        mi = match.to(torch.int32)
        hm = has[:, None]

        run = self.run[:n]
        run.copy_(torch.where(hm, (run + 1) * mi, run))
        erun = self.erun[:n]
        erun.copy_(torch.where(hm, (erun + 1) * near.to(torch.int32), erun))

        thr = self.thr[:n, None]
        s = self.score[:n] + near.to(torch.int32) * 1000 - thr
        keep = (s >= 0).to(torch.int32)
        cont = self._lookup(self.content, xs)
        score, nlen, ncont = self.score[:n], self.nlen[:n], self.ncont[:n]
        score.copy_(torch.where(hm, s * keep, score))
        nlen.copy_(torch.where(hm, (nlen + 1) * keep, nlen))
        ncont.copy_(torch.where(hm, (ncont + mi * cont[:, None]) * keep, ncont))

        # gather/scatter, not advanced indexing: never a host sync on a GPU.
        ring = self.ring[:n]
        slot_col = pos.remainder(P)[:, None]
        ring.scatter_(1, slot_col, torch.where(has[:, None], xs[:, None].to(ring.dtype), ring.gather(1, slot_col)))
        blank = self.blank[:n]
        blank.copy_(torch.where(has, (blank + 1) * self._lookup(self.blank_tab, xs), blank))
        pos += has.to(torch.int64)
        self._track_json(n, has, xs)

        echo_any, lag = self._first(erun >= self.echo_need[:n])
        lag = torch.where(echo_any, lag, 0)
        ecfg, echo, elag = self.echo_cfg[:n], self.echo[:n], self.elag[:n]
        ethr = ecfg[:, 0]
        es = echo[:, 0] + torch.where(echo_any, 1000 - ethr, -ethr)
        ekeep = (es >= 0) & has
        eon = echo_any.to(torch.int32)
        grown = torch.stack([es, echo[:, 1] + 1, echo[:, 2] + eon * cont, echo[:, 3] + eon], dim=1)
        echo.copy_(torch.where(ekeep[:, None], grown, torch.where(has[:, None], 0, echo)))
        elag.copy_(torch.where(ekeep, elag + lag, torch.where(has, 0, elag)))
        elen = echo[:, 1].to(torch.int64)
        echo_ok = echo_any & (elen >= ecfg[:, 1]) & (
            echo[:, 2].to(torch.int64) * 1000 >= ecfg[:, 2].to(torch.int64) * elen) & (
            elen * echo[:, 3] >= ecfg[:, 3].to(torch.int64) * elag)

        loop_ok = run >= self.loop_need[:n]
        near_ok = (nlen >= self.near_need[:n]) & (
            ncont.to(torch.int64) * 1000 >= self.content_milli[:n, None].to(torch.int64) * nlen)
        loop_any, loop_p = self._first(loop_ok)
        near_any, near_p = self._first(near_ok)
        blank_any = blank > self.max_blank[:n]

        kind = torch.where(loop_any, LOOP, torch.where(near_any, NEAR, torch.where(
            echo_ok, ECHO, torch.where(blank_any, BLANK, NONE))))
        kind = torch.where(has, kind, NONE).to(torch.int32)
        period = torch.where(kind == LOOP, loop_p, torch.where(kind == NEAR, near_p, torch.where(
            kind == ECHO, lag, 0))).to(torch.int32)
        # next token x[t+1-p] sits at column (pos_after - p) % P.
        nxt_col = (pos - period.to(torch.int64)).remainder(P)[:, None]
        nxt = ring.gather(1, nxt_col)[:, 0].to(torch.int64)
        next_token = torch.where(period > 0, nxt, -1)
        return StepResult(kind, period, next_token)

    def _track_json(self, n: int, has: torch.Tensor, xs: torch.Tensor) -> None:
        js, jd = self.jstate[:n], self.jdepth[:n]
        track = has & (js >= 0)
        idx = js.clamp_min(0).to(torch.int64) * self.jvocab + xs.clamp_max(self.jvocab - 1)
        v = self.jnext.index_select(0, idx)
        depth = jd + torch.bitwise_right_shift(v, 2)
        ok = depth >= 0
        js.copy_(torch.where(track, torch.where(ok, torch.bitwise_and(v, 3), jsonstate.LOST), js))
        jd.copy_(torch.where(track, torch.where(ok, depth, 0), jd))

    @staticmethod
    def _lookup(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        idx = x.clamp_max(table.shape[0] - 1)
        return table.index_select(0, idx.reshape(-1)).view(idx.shape)

    @staticmethod
    def _first(ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(any, smallest period) per row of a [n, P] bool matrix."""
        anyv = ok.any(dim=1)
        first = ok.to(torch.uint8).argmax(dim=1) + 1
        return anyv, first
