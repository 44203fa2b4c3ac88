"""The engine-agnostic L0 decode step: detect on each row's newest token and act
on the logits. No vLLM here; a host (vLLM's logits processor, a Triton or
SGLang adapter, a test) translates its batch bookkeeping into :meth:`add`,
:meth:`remove` and :meth:`move`, and calls :meth:`step` once per decode step.

Contract:

* Slots ``0..num_slots-1`` are rows of the host's persistent batch. A tracked
  row holds a *live* list of its output token ids that the host appends to
  (:meth:`step` reads only what is new).
* :meth:`step` takes logits ``[B, V]`` (float32/bfloat16/float16, any device)
  with ``B <= num_slots`` and modifies them in place; it returns the same
  tensor. On a GPU it never synchronises with the host: the token upload is
  pinned and non-blocking, decisions and masking stay on the device, and the
  host learns of interventions one or more steps later through an event it
  queries, never waits on. Everything it queues runs on torch's current stream.
* Actions per row (:data:`l0.engine.config.ACTIONS`): ``stop`` — after a loop
  fires, the next step allows only the row's stop token, once the row has
  ``min_tokens`` and only while that token is allowed by the logits L0
  received; otherwise it penalizes. ``penalize`` — subtract the row's penalty
  from the token that would continue the cycle. ``observe`` — report only.
* JSON rows (``add(..., json=True)``: a JSON schema, ``json_object``, tool
  calls) are closed instead: on a loop under ``stop``, or when the budget
  runs out under ``stop``/``penalize``, a per-token bias steers the answer to
  its shortest valid end and the stop lands once the grammar allows it
  (:mod:`l0.engine.jsonstate`, the act op).
* L0 never makes a token sampleable that was ``-inf`` when it received the
  logits (a grammar's mask, a banned word), and never leaves a row that had a
  finite logit without one.
* Every intervention is reported once per episode through ``on_event`` (a
  dict, see :meth:`_report`). A ``stop`` that could not be applied when the
  loop fired says what was done instead and why (``"action": "penalize",
  "requested": "stop", "reason": "min_tokens" | "no_stop_token" | "grammar" |
  "stop_token_masked"``); the stop, once applied, is reported again.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from l0.engine.config import ACTIONS, RequestOptions
from l0.engine import jsonstate
from l0.engine.ops.act import (APPLIED_CLOSE, APPLIED_PENALIZE, APPLIED_STOP, CLOSE_AT_BUDGET, CLOSE_ON_LOOP,
                        CLOSING_NONE, REASON_MASKED, REASON_MIN_TOKENS, REASON_NO_STOP_TOKEN,
                        REASON_NONE, ActCuda, SlotState, act_torch)
from l0.engine.ops import make_detector
from l0.engine.ops.detect import NONE
from l0.engine.ops.detect_reference import KIND_NAMES
from l0.engine.host_tokens import HostTokens
from l0.engine.rows import move_entry, move_value
from l0.engine.upload import upload
from l0.engine.vocab import TokenClasses, expected_items

ACTION_CODE = {name: i for i, name in enumerate(ACTIONS)}  # off 0, observe 1, stop 2, penalize 3
_ACTING = ("stop", "penalize")  # actions that may change logits
REASON_NAMES = {REASON_MIN_TOKENS: "min_tokens", REASON_NO_STOP_TOKEN: "no_stop_token",
                REASON_MASKED: "stop_token_masked"}
CLOSING_NAMES = {1: "loop", 2: "budget"}


@dataclass
class Row:
    """Host view of one tracked request."""

    opts: RequestOptions
    out_ids: list[int] | None  # the host's live output list (None: the host feeds tokens on the device)
    constrained: bool = False  # structured output (a grammar masks this row's logits)
    json: bool = False        # a JSON structured output (its state is tracked; close mode)
    logged_kind: int = NONE   # last kind reported (one line per episode)
    logged_stop: bool = False  # a stop was reported (a stop ends the request)
    logged_close: bool = False  # close mode was reported


class StepCore:
    """See the module docstring.

    ``decode`` (token ids → text) lets near-loops and echoes read the item
    count a prompt asks for (``"25 records"``); without it they assume none.
    ``json`` (tables from the tokenizer, :func:`l0.engine.jsonstate.tables_from_texts`)
    enables close mode for rows added with ``json=True``; ``close_margin`` is
    the budget margin (see :func:`l0.engine.jsonstate.close_need`). ``on_event``
    receives each intervention dict; ``None`` turns the readout off (no
    device→host copies at all).
    """

    def __init__(self, num_slots: int, *, max_period: int, device: torch.device | str = "cpu",
                 backend: str = "auto", classes: TokenClasses | None = None, pin_memory: bool = True,
                 decode: Callable[[Sequence[int]], str] | None = None,
                 on_event: Callable[[dict], None] | None = None, json: jsonstate.JsonTables | None = None,
                 close_margin: int = 8) -> None:
        self.device = torch.device(device)
        self.is_cpu = self.device.type == "cpu"
        self.num_slots = S = num_slots
        self.json = json
        self.det = make_detector(S, max_period, classes, self.device, backend, json)
        dev = dict(device=self.device)
        self.action = torch.zeros(S, dtype=torch.int32, **dev)
        self.stop_tok = torch.full((S,), -1, dtype=torch.int64, **dev)
        self.min_tok = torch.zeros(S, dtype=torch.int64, **dev)
        self.penalty = torch.zeros(S, dtype=torch.float32, **dev)
        self.latch = torch.zeros(S, dtype=torch.int32, **dev)
        self.max_tok = torch.full((S,), -1, dtype=torch.int64, **dev)
        self.close_cfg = torch.zeros(S, dtype=torch.int32, **dev)
        self.closing = torch.zeros(S, dtype=torch.int32, **dev)
        self.margin = torch.zeros(S, dtype=torch.int32, **dev)
        self.close_margin = close_margin
        self._per_slot = (self.action, self.stop_tok, self.min_tok, self.penalty, self.latch, self.max_tok,
                          self.close_cfg, self.closing, self.margin)
        bias = (torch.tensor(json.bias, dtype=torch.float32, **dev) if json is not None
                else torch.zeros(3, 1, dtype=torch.float32, **dev))
        self.slots = SlotState(self.latch, self.action, self.stop_tok, self.min_tok, self.penalty, self.max_tok,
                               self.close_cfg, self.closing, self.margin, bias).check()
        self.rows: dict[int, Row] = {}
        # On a GPU with CuPy: the fused act kernel (one launch); else the torch spec.
        self._act_cuda = None
        if self.device.type == "cuda" and self.det.backend == "cuda":
            self._act_cuda = ActCuda(self.slots)
        self.pin = pin_memory and not self.is_cpu
        self.decode = decode
        self.on_event = on_event
        self._pending: list = []  # (event, host copies, row snapshot) awaiting readout
        self._acting = 0  # tracked rows whose action may change logits (stop, penalize)
        # step_rows only: row-ordered slot state and the readout in slot order.
        self._rows: SlotState | None = None
        self._act_cuda_rows: ActCuda | None = None
        self._readout_slots = torch.zeros(S, 8, dtype=torch.int64, **dev)
        self._host = HostTokens(S)  # the new tokens of rows with a live output list
        # The CPU step when every row only observes (see _observe): the fused
        # kernel folds the latch and lists the rows whose kind differs from
        # the one last reported (Row.logged_kind, mirrored here by slot).
        self._fold = self.is_cpu and hasattr(self.det, "step_list")
        self._logged = (ctypes.c_int32 * S)()
        self._observed = None  # the readout columns over the CPU buffers, made on first use

    @property
    def backend(self) -> str:
        return self.det.backend

    def position(self, slot: int) -> int:
        """Tokens the detector has seen in ``slot`` (reads the device: not for the hot path)."""
        return self.det.position(slot)

    # -- persistent batch (host-driven) ----------------------------------------
    # Device state changes only through fill_/copy_ on views: ``t[i] = 3`` on a
    # CUDA tensor copies a host scalar and synchronises (seen on an H100 under
    # sync debug mode); fill_ passes the value as a kernel argument.
    def add(self, slot: int, opts: RequestOptions, out_ids: list[int] | None, *, prompt_ids: Sequence[int] = (),
            prefix: torch.Tensor | None = None, stop_token: int = -1, min_tokens: int = 0,
            constrained: bool = False, json: bool = False, max_tokens: int = -1,
            close_margin: int | None = None) -> None:
        """Start tracking a request in ``slot`` (replacing whatever was there).

        ``out_ids`` is the host's live output list (it may already hold tokens:
        a preempted request re-added; they are replayed on the next step).
        ``stop_token`` < 0: the request has none (``stop`` penalizes instead).
        ``constrained``: a grammar masks the row (structured outputs); ``json``:
        that grammar is a JSON one (schema, json_object, tool calls), so its
        state is tracked and close mode applies: under ``stop`` a loop ends the
        JSON instead of forcing EOS, and under ``stop``/``penalize`` with
        ``opts.close_at_budget`` the answer is closed before ``max_tokens``
        (output tokens allowed; -1 none) runs out, starting ``close_margin``
        tokens (default: the core's) plus one per open container before it.
        With ``opts.resume_from = n`` the prompt's last n tokens are output
        generated before (on another replica): the detector is primed with
        them and ``min_tokens``/``max_tokens`` count them.

        ``out_ids=None``: the host has no output list and feeds tokens itself
        (:meth:`step_rows`); the prompt may then be unknown on the host
        (``prompt_ids=()``): ``prefix`` carries the resumed output tokens (an
        int tensor, on the device: primed without a host copy) and
        :meth:`set_prompt` sets the item count once the prompt is read.
        """
        self.remove(slot)
        if opts.action == "off":
            return
        prompt = list(prompt_ids)
        if prefix is None:
            n = opts.resume_from if 0 < opts.resume_from <= len(prompt) else 0
            prefix, prompt = prompt[len(prompt) - n:], prompt[: len(prompt) - n]
        else:
            n = int(prefix.shape[0])
        expected = self._expected(opts, prompt)
        json = json and self.json is not None
        self.det.configure(slot, opts.params, expected, json=json)
        self.action[slot].fill_(ACTION_CODE[opts.action])
        self.stop_tok[slot].fill_(stop_token if stop_token is not None and stop_token >= 0 else -1)
        self.min_tok[slot].fill_(max(min_tokens, 0) + n)
        self.penalty[slot].fill_(opts.penalty)
        self.max_tok[slot].fill_(max_tokens + n if max_tokens is not None and max_tokens >= 0 else -1)
        cfg = 0
        if json and opts.action == "stop":
            cfg |= CLOSE_ON_LOOP
        if json and opts.close_at_budget and opts.action in ("stop", "penalize"):
            cfg |= CLOSE_AT_BUDGET
        self.close_cfg[slot].fill_(cfg)
        self.margin[slot].fill_(self.close_margin if close_margin is None else max(close_margin, 0))
        self.rows[slot] = Row(opts, out_ids, constrained, json)
        if out_ids is not None:
            self._host.add(slot, out_ids)
        if opts.action in _ACTING:
            self._acting += 1
        if n:
            # Same detector state as if this replica had generated the prefix.
            self.feed(slot, prefix)

    def _expected(self, opts: RequestOptions, prompt: Sequence[int]) -> int:
        """Items the prompt asks for (near-loop/echo thresholds), 0 when unknown."""
        if self.decode is not None and prompt and (opts.params.near_min_repeats or opts.params.echo_ngram):
            # The tail of the prompt carries the user's request ("... 25 records").
            return expected_items(self.decode(list(prompt[-512:])))
        return 0

    def set_prompt(self, slot: int, prompt_ids: Sequence[int]) -> None:
        """The prompt of a request added without one (its output prefix
        excluded): sets the item count it asks for, keeping the history."""
        row = self.rows.get(slot)
        if row is None:
            return
        expected = self._expected(row.opts, prompt_ids)
        if expected:
            self.det.set_expected(slot, row.opts.params, expected)

    def remove(self, slot: int) -> None:
        row = self.rows.pop(slot, None)
        if row is not None:
            self.det.clear(slot)
            self._host.remove(slot)
            if row.opts.action in _ACTING:
                self._acting -= 1
        self._logged[slot] = NONE
        for t in self._per_slot:
            t[slot].fill_(0)
        self.stop_tok[slot].fill_(-1)
        self.max_tok[slot].fill_(-1)

    def move(self, a: int, b: int, swap: bool) -> None:
        """``swap``: rows a and b exchange places; else a's request moves to b
        (b's is dropped, a is left empty)."""
        move_entry(self.rows, a, b, swap)
        self._host.move(a, b, swap)
        move_value(self._logged, a, b, swap, NONE)
        if swap:
            self.det.swap(a, b)
            for t in self._per_slot:
                keep = t[a].clone()
                t[a].copy_(t[b])
                t[b].copy_(keep)
        else:
            self.det.move(a, b)
            for t in self._per_slot:
                t[b].copy_(t[a])
                t[a].fill_(0)
            self.stop_tok[a].fill_(-1)
            self.max_tok[a].fill_(-1)

    # -- the step --------------------------------------------------------------
    def step(self, logits: torch.Tensor) -> torch.Tensor:
        """Feed each tracked row's newest token, then act on ``logits`` in place."""
        self._readout()
        if not self.rows:
            return logits
        B = logits.shape[0]
        toks = self._host.gather(B, self.feed)
        if self._fold and not self._acting:
            self._observe(toks)
            return logits
        tokens = torch.tensor(toks, dtype=torch.int64) if self.is_cpu else upload(toks, torch.int64, self.device,
                                                                                  self.pin)
        return self._act(logits, self.det.step(tokens), B)

    def _observe(self, toks: list[int]) -> None:
        """The step when every tracked row only observes, on the CPU (the
        host knows that for free): nothing can change the logits, so the act
        op is skipped. One kernel call detects, sticks the latch and names the
        rows whose kind changed; only those are read for the readout, whose
        act columns are nothing applied. (In an engine each library call here
        costs microseconds, caches cold after the forward pass: see
        :mod:`l0.engine.host_tokens`.)"""
        changed = self.det.step_list(toks, self.latch.data_ptr(), ctypes.addressof(self._logged))
        if not changed or self.on_event is None:
            return
        if self._observed is None:
            det, S = self.det, self.num_slots
            view = lambda t, c: (c * S).from_address(t.data_ptr())  # noqa: E731
            i32, i64 = ctypes.c_int32, ctypes.c_int64
            zero = [0] * S
            self._observed = (view(det.out_kind, i32), view(det.out_period, i32), view(det.pos, i64), zero, zero,
                              view(self.latch, i32), view(self.closing, i32), view(det.jdepth, i32))
        rows = self.rows
        self._report(self._observed, {i: rows[i] for i in changed if i in rows})

    def feed(self, slot: int, tokens: Sequence[int] | torch.Tensor) -> None:
        """Feed several tokens to one slot, one detector step each (priming a
        resumed request, replaying a preempted one): a host list is uploaded
        in one copy; a tensor on the core's device is used where it is."""
        k = len(tokens)
        if not k:
            return
        if isinstance(tokens, torch.Tensor) and tokens.device == self.device:
            mat = torch.full((k, slot + 1), -1, dtype=torch.int64, device=self.device)
            mat[:, slot].copy_(tokens)
        else:
            mat = torch.full((k, slot + 1), -1, dtype=torch.int64)
            mat[:, slot] = torch.as_tensor(tokens, dtype=torch.int64)
            mat = upload(mat, torch.int64, self.device, self.pin)
        for t in range(k):
            self._latch(self.det.step(mat[t]), slot + 1)

    def step_rows(self, logits: torch.Tensor, tokens: torch.Tensor, row_slot: torch.Tensor,
                  present: Sequence[int]) -> torch.Tensor:
        """A step for a host whose logits rows are not its slots (vLLM's V2
        runner reorders rows every step) and whose tokens are on the device.

        ``tokens``: int64 ``[K, n]`` on the core's device, ``n <= num_slots``
        (slot ``s`` in column ``s``): K detector steps, the new tokens of each
        slot in order, ``-1`` where a slot has no more (several under
        speculative decoding, when more than one token was accepted).
        ``row_slot``: int64 ``[B]`` on the device, the slot each logits row
        belongs to; a row that L0 must leave alone names a slot that is never
        tracked (the host keeps one spare). ``present``: the slots of this
        step's batch, on the host (their interventions are reported).
        Modifies ``logits`` ``[B, V]`` in place and returns it; never reads
        the device from the host.
        """
        self._readout()
        if not self.rows:
            return logits
        K = tokens.shape[0]
        for j in range(K - 1):
            self._latch(self.det.step(tokens[j]), tokens.shape[1])
        res = self.det.step(tokens[K - 1])
        return self._act_rows(logits, res, row_slot, present)

    def _act_rows(self, logits: torch.Tensor, res, row_slot: torch.Tensor, present: Sequence[int]) -> torch.Tensor:
        """The act op over rows in any order: each row's slot state is gathered
        into row order, acted on, and what the op writes (latch, closing) is
        scattered back. Rows naming the same slot must be rows L0 leaves alone."""
        B = logits.shape[0]
        idx = row_slot
        rows = self._row_state(B)
        for dst, src in zip(rows.tensors()[:-1], self.slots.tensors()[:-1]):
            torch.index_select(src, 0, idx, out=dst[:B])
        det = self.det
        take = lambda t: t.index_select(0, idx)  # noqa: E731
        res_rows = type(res)(take(res.kind), take(res.period), take(res.next_token))
        pos, jstate, jdepth = take(det.pos), take(det.jstate), take(det.jdepth)
        want = self.on_event is not None
        if self._act_cuda_rows is not None and self._act_cuda_rows.supports(logits):
            packed = self._act_cuda_rows(logits, res_rows, pos, jstate, jdepth, want)
        else:
            packed = act_torch(logits, res_rows, pos, jstate, jdepth, rows, want)
        self.latch.index_copy_(0, idx, rows.latch[:B])
        self.closing.index_copy_(0, idx, rows.closing[:B])
        if want:
            # Back to slot order, so the readout is read like the V1 one.
            by_slot = self._readout_slots
            by_slot.zero_()
            by_slot.index_copy_(0, idx, packed)
            self._queue_readout(by_slot, self.num_slots, slots=present)
        return logits

    def _row_state(self, B: int) -> SlotState:
        """Row-ordered copies of the slot tensors, at least ``B`` rows, kept
        across steps (their pointers stay valid for the CUDA act kernel)."""
        if self._rows is None or self._rows.latch.shape[0] < B:
            cap = max(B, self.num_slots)
            dev = dict(device=self.device)
            self._rows = SlotState(*(torch.zeros(cap, dtype=t.dtype, **dev) for t in self.slots.tensors()[:-1]),
                                   self.slots.close_bias).check()
            self._act_cuda_rows = ActCuda(self._rows) if self._act_cuda is not None else None
        return self._rows

    def _latch(self, res, B: int) -> torch.Tensor:
        latch = self.latch[:B]
        latch.copy_(torch.where((latch == NONE) & (res.kind != NONE), res.kind, latch))
        return latch

    def _act(self, logits: torch.Tensor, res, B: int) -> torch.Tensor:
        want = self.on_event is not None
        det = self.det
        pos, jstate, jdepth = det.pos[:B], det.jstate[:B], det.jdepth[:B]
        if self._act_cuda is not None and self._act_cuda.supports(logits):
            packed = self._act_cuda(logits, res, pos, jstate, jdepth, want)
        else:
            packed = act_torch(logits, res, pos, jstate, jdepth, self.slots, want)
        if want:
            self._queue_readout(packed, B)
        return logits

    def _snapshot_rows(self, B: int, slots: Sequence[int] | None) -> dict[int, Row]:
        """The rows a readout reports: ``slots`` that are tracked, or every tracked slot below ``B``."""
        if slots is None:
            return {i: r for i, r in self.rows.items() if i < B}
        return {i: self.rows[i] for i in slots if i in self.rows}

    # -- deferred, non-blocking readout ----------------------------------------
    def _queue_readout(self, packed: torch.Tensor, B: int, slots: Sequence[int] | None = None) -> None:
        """``packed``: the act op's ``[B, 8]`` int64 readout on the device, row
        ``i`` for slot ``i``; ``slots``: report only these (default: all < B)."""
        snap = self._snapshot_rows(B, slots)
        if self.is_cpu:
            self._report(packed.t().tolist(), snap)
            return
        # One copy into pinned memory, ordered after the step on the current
        # stream; read when its event says it landed.
        host = packed.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, host, snap))

    def _readout(self) -> None:
        while self._pending:
            event, host, snap = self._pending[0]
            if not event.query():  # not done yet: never wait on the decode path
                return
            self._pending.pop(0)
            self._report(host.t().tolist(), snap)

    def flush(self) -> None:
        """Wait for and report every pending readout (tests, shutdown: not the hot path)."""
        for event, _, _ in self._pending:
            event.synchronize()
        self._readout()

    def _report(self, cols, snap: dict[int, Row]) -> None:
        kinds, periods, positions, applied, reasons, latched, closing, depths = cols
        for index, row in snap.items():
            kind = kinds[index]
            if kind == row.logged_kind and applied[index] not in (APPLIED_STOP, APPLIED_CLOSE):
                continue  # nothing new (the common case: kept cheap)
            shown = kind if kind != NONE else latched[index]
            base = {"event": "l0.intervention", "key": row.opts.key,
                    "kind": KIND_NAMES[shown] if shown != NONE else "budget", "period": periods[index],
                    "token_index": positions[index]}
            stop_now = applied[index] == APPLIED_STOP
            if applied[index] == APPLIED_CLOSE and not row.logged_close:
                # Close mode began: the answer is steered to its shortest valid end.
                self.on_event({**base, "action": "close", "requested": row.opts.action,
                               "reason": CLOSING_NAMES[closing[index]], "depth": depths[index]})
                row.logged_close = True
            elif stop_now and not row.logged_stop:
                event = {**base, "action": "stop"}
                if closing[index] != CLOSING_NONE:
                    event["closed"] = CLOSING_NAMES[closing[index]]
                self.on_event(event)
                row.logged_stop = True
            elif kind != NONE and kind != row.logged_kind and not row.logged_close and not row.logged_stop:
                event = dict(base, action=row.opts.action)
                if row.opts.action == "stop":
                    # The stop could not be applied yet: say what was done and why.
                    reason = REASON_NAMES.get(reasons[index], "none")
                    event.update(action="penalize" if applied[index] == APPLIED_PENALIZE else "none",
                                 requested="stop",
                                 reason="grammar" if reason == "stop_token_masked" and row.constrained else reason)
                self.on_event(event)
            row.logged_kind = kind
            if self.is_cpu:  # every CPU readout is immediate: index is the row's slot now
                self._logged[index] = kind
