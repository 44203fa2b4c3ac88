"""Plain-Python reference of the ``detect`` op: the spec every backend must equal.

Per slot, for each new token x at position t (0-based count of tokens seen) and
each period p in 1..P (P = the detector's max_period, the server cap):

* ``m[p]``    = t >= p and x == x[t-p]
* ``mn[p]``   = m[p] or (t >= p and number[x] and number[x[t-p]])  (near match:
  two numbers compare equal, so a list's counter is not a difference)
* ``run[p]``  = run[p] + 1 if m[p] else 0  (length of the p-periodic tail, less p)
* near-loop segment (a Kadane scan with weights +(1000-thr) on near match, -thr
  otherwise, thr = near_threshold in thousandths): s = score[p] + w; if s >= 0
  the segment grows (score = s, nlen += 1, ncont += m[p] and content[x]),
  otherwise it resets (score = nlen = ncont = 0). A segment of length L kept
  alive has match fraction >= near_threshold over its L comparisons.
* ``blank``   = blank + 1 if blank_table[x] else 0
* echo (a template loop: the same phrases keep coming back, at no fixed
  period): ``erun[p]`` = erun[p] + 1 if mn[p] else 0 (the near-matching run
  at lag p); the token *echoes* when some lag p has erun[p] >= echo_ngram,
  i.e. the last echo_ngram tokens appeared p tokens earlier (numbers equal to
  numbers); ``lag`` = the smallest such p. A second Kadane scan, per slot,
  weights +(1000-ethr) on an echoing token and -ethr otherwise (ethr =
  echo_threshold in thousandths): if s >= 0 the segment grows (escore = s,
  elen += 1, econt += echoes and content[x], eseen += echoes, elag += lag),
  otherwise every echo counter resets to 0.

Then, in priority order (the first that holds is reported, with its smallest p):

1. LOOP  if run[p] >= loop_need[p]       (loop_need = max((min_repeats-1)*p, min_span-p))
2. NEAR  if nlen[p] >= near_need[p] and 1000*ncont[p] >= content_milli*nlen[p]
         (near_need = max((near_min_repeats-1)*p, near_min_span-p, expected_items*p,
          min_span-p, 1))
3. ECHO  if x echoes and elen >= echo_min_span and 1000*econt >= echo_content_milli*elen
         and elen*eseen >= expected_items*elag (the segment spans more rounds than
         the prompt asked items: elen >= expected_items x the mean lag); period = lag
4. BLANK if max_blank_run > 0 and blank > max_blank_run

Periods (and echo lags) outside [min_period, max_period] of the slot never
fire. For LOOP/NEAR/ECHO ``next_token`` is x[t+1-p], the token that would
continue the cycle; else -1. A token of -1 means "no new token for this slot
this step": nothing changes and nothing fires.

A slot configured with ``json=True`` also tracks where its JSON answer stands
(:mod:`l0.engine.jsonstate`: lexer state and depth, one table lookup per token, see
``jsonstate.step``); other slots hold ``LOST``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from l0.engine import jsonstate
from l0.engine.config import DetectorParams
from l0.engine.vocab import TokenClasses

NONE, LOOP, NEAR, BLANK, ECHO = 0, 1, 2, 3, 4
KIND_NAMES = {NONE: "none", LOOP: "loop", NEAR: "near_loop", BLANK: "no_progress", ECHO: "echo"}
NEVER = 2**31 - 1  # a need no counter reaches


def loop_need(params: DetectorParams, p: int) -> int:
    """Run length at which an exact loop of period p fires (NEVER if it can't)."""
    if params.min_repeats == 0 or not params.min_period <= p <= params.max_period:
        return NEVER
    return max((params.min_repeats - 1) * p, params.min_span - p)


def near_need(params: DetectorParams, p: int, expected_items: int = 0) -> int:
    """Segment length at which a near-loop of period p fires (NEVER if it can't).

    Near-loops need more evidence than exact loops: at least ``near_min_repeats``
    copies *and* ``near_min_span`` tokens, and more copies than the item count
    the prompt asked for (``expected_items``).
    """
    if params.near_min_repeats == 0 or not params.min_period <= p <= params.max_period:
        return NEVER
    return max((params.near_min_repeats - 1) * p, params.near_min_span - p,
               expected_items * p, params.min_span - p, 1)


def echo_need(params: DetectorParams, p: int) -> int:
    """Near-matching run at lag p that makes a token echo (NEVER if it can't)."""
    if params.echo_ngram == 0 or not params.min_period <= p <= params.max_period:
        return NEVER
    return params.echo_ngram


@dataclass
class _Slot:
    params: DetectorParams | None = None
    expected_items: int = 0
    hist: list[int] = field(default_factory=list)
    run: list[int] = field(default_factory=list)
    score: list[int] = field(default_factory=list)
    nlen: list[int] = field(default_factory=list)
    ncont: list[int] = field(default_factory=list)
    erun: list[int] = field(default_factory=list)
    blank: int = 0
    escore: int = 0
    elen: int = 0
    econt: int = 0
    eseen: int = 0
    elag: int = 0
    jstate: int = jsonstate.LOST
    jdepth: int = 0


class ReferenceDetector:
    """Readable, slow, exact. Same method names as every other backend.

    ``classes`` gives the content/blank/number token classes (see
    :class:`l0.engine.vocab.TokenClasses`); ``json`` the JSON tables
    (:class:`l0.engine.jsonstate.JsonTables`) for slots configured with ``json=True``.
    Unconfigured slots ignore tokens.
    """

    backend = "reference"

    def __init__(self, num_slots: int, max_period: int, classes: TokenClasses | None = None,
                 json: jsonstate.JsonTables | None = None) -> None:
        self.num_slots = num_slots
        self.max_period = max_period
        self.classes = classes or TokenClasses()
        self.json = json
        self.slots = [_Slot() for _ in range(num_slots)]

    # -- persistent-batch bookkeeping ------------------------------------
    def configure(self, slot: int, params: DetectorParams, expected_items: int = 0, json: bool = False) -> None:
        """Start a fresh request in ``slot`` (all history cleared); ``json``:
        track its JSON state (needs the detector's JSON tables)."""
        P = self.max_period
        self.slots[slot] = _Slot(params, expected_items, [], [0] * P, [0] * P, [0] * P, [0] * P, [0] * P)
        if json and self.json is not None:
            self.slots[slot].jstate = jsonstate.OUT

    def set_expected(self, slot: int, params: DetectorParams, expected_items: int) -> None:
        """Change the item count of a configured slot, keeping its history."""
        self.slots[slot].expected_items = expected_items

    def clear(self, slot: int) -> None:
        self.slots[slot] = _Slot()

    def move(self, src: int, dst: int) -> None:
        self.slots[dst] = self.slots[src]
        self.slots[src] = _Slot()

    def swap(self, a: int, b: int) -> None:
        self.slots[a], self.slots[b] = self.slots[b], self.slots[a]

    def position(self, slot: int) -> int:
        return len(self.slots[slot].hist)

    def json_state(self, slot: int) -> tuple[int, int]:
        """(lexer state, depth) of the slot's JSON answer; state LOST if untracked."""
        s = self.slots[slot]
        return s.jstate, s.jdepth

    # -- the op -----------------------------------------------------------
    def step(self, tokens: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Feed one token per slot (``-1`` = none). Returns (kind, period, next_token)."""
        kinds, periods, nexts = [], [], []
        for slot, x in zip(self.slots, tokens):
            k, p, nt = self._step_one(slot, int(x))
            kinds.append(k)
            periods.append(p)
            nexts.append(nt)
        return kinds, periods, nexts

    def _step_one(self, s: _Slot, x: int) -> tuple[int, int, int]:
        if x < 0 or s.params is None:
            return NONE, 0, -1
        prm, P = s.params, self.max_period
        thr = prm.near_threshold_milli
        t = len(s.hist)
        is_content = _cls(self.classes.content, x, True)
        is_number = _cls(self.classes.number, x, False)
        for p in range(1, P + 1):
            i = p - 1
            m = t >= p and s.hist[t - p] == x
            mn = m or (t >= p and is_number and _cls(self.classes.number, s.hist[t - p], False))
            s.run[i] = s.run[i] + 1 if m else 0
            s.erun[i] = s.erun[i] + 1 if mn else 0
            sc = s.score[i] + ((1000 - thr) if mn else -thr)
            if sc >= 0:
                s.score[i] = sc
                s.nlen[i] += 1
                s.ncont[i] += int(m and is_content)
            else:
                s.score[i] = s.nlen[i] = s.ncont[i] = 0
        s.hist.append(x)
        if s.jstate != jsonstate.LOST:
            s.jstate, s.jdepth = jsonstate.step(s.jstate, s.jdepth, x, self.json)
        is_blank = _cls(self.classes.blank, x, False)
        s.blank = s.blank + 1 if is_blank else 0

        lag = next((p for p in range(1, P + 1) if s.erun[p - 1] >= echo_need(prm, p)), 0)
        ethr = prm.echo_threshold_milli
        es = s.escore + ((1000 - ethr) if lag else -ethr)
        if es >= 0:
            s.escore = es
            s.elen += 1
            s.econt += int(bool(lag) and is_content)
            s.eseen += int(bool(lag))
            s.elag += lag
        else:
            s.escore = s.elen = s.econt = s.eseen = s.elag = 0

        for p in range(1, P + 1):
            if s.run[p - 1] >= loop_need(prm, p):
                return LOOP, p, s.hist[t + 1 - p]
        cm = prm.near_min_content_milli
        for p in range(1, P + 1):
            i = p - 1
            if s.nlen[i] >= near_need(prm, p, s.expected_items) and 1000 * s.ncont[i] >= cm * s.nlen[i]:
                return NEAR, p, s.hist[t + 1 - p]
        if (lag and s.elen >= prm.echo_min_span and 1000 * s.econt >= prm.echo_min_content_milli * s.elen
                and s.elen * s.eseen >= s.expected_items * s.elag):
            return ECHO, lag, s.hist[t + 1 - lag]
        if prm.max_blank_run > 0 and s.blank > prm.max_blank_run:
            return BLANK, 0, -1
        return NONE, 0, -1


def _cls(table: Sequence[bool] | None, x: int, default: bool) -> bool:
    if table is None:
        return default
    return bool(table[min(x, len(table) - 1)])


def scan(token_ids: Sequence[int], params: DetectorParams, max_period: int | None = None,
         classes: TokenClasses | None = None, expected_items: int = 0):
    """Run one sequence through the reference; return (at, kind, period) of the
    first firing, ``at`` = index of the first token the server would replace
    (the trigger token's index + 1), or ``None`` when nothing fires."""
    det = ReferenceDetector(1, max_period or params.max_period, classes)
    det.configure(0, params, expected_items)
    for i, x in enumerate(token_ids):
        (k,), (p,), _ = det.step([x])
        if k:
            return i + 1, k, p
    return None
