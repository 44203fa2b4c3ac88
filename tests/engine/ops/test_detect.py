"""Differential tests of the detect op: every backend equals the reference exactly."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from l0.engine.config import DetectorParams
from l0.engine.ops import make_detector
from l0.engine.ops.detect import BLANK, ECHO, LOOP, NEAR, NONE
from l0.engine.ops.detect_reference import ReferenceDetector, scan
from l0.engine.vocab import TokenClasses

VOCAB = 12
CONTENT = [i % 3 != 0 for i in range(VOCAB)]   # ids 0,3,6,9 are "punctuation"
BLANKS = [i in (10, 11) for i in range(VOCAB)]  # ids 10, 11 are "whitespace"
NUMBERS = [i in (5, 8) for i in range(VOCAB)]   # ids 5, 8 are "digits"
CLASSES = TokenClasses(CONTENT, BLANKS, NUMBERS)

SMALL = DetectorParams(min_period=1, max_period=8, min_repeats=3, min_span=6,
                       near_threshold=0.75, near_min_repeats=3, near_min_span=12,
                       near_min_content=0.2, echo_ngram=3, echo_threshold=0.7, echo_min_span=16,
                       echo_min_content=0.2, max_blank_run=4)


def _backends():
    out = [pytest.param("torch", "cpu", id="torch-cpu"),
           pytest.param("cpu", "cpu", id="cpu-kernel", marks=pytest.mark.cc)]
    out.append(pytest.param("torch", "cuda", id="torch-cuda", marks=pytest.mark.gpu))
    out.append(pytest.param("cuda", "cuda", id="cuda-kernel", marks=pytest.mark.gpu))
    return out


def _drive(backend, device, streams, params, max_period=8, ops=(), expected=()):
    """Feed streams (list per slot, -1 = idle) step by step to the reference and a
    backend; ``ops`` maps step -> list of ("move"|"swap"|"configure", a, b);
    ``expected`` gives slots' expected_items (default 0). Returns the kinds fired."""
    n = len(streams)
    ref = ReferenceDetector(n, max_period, CLASSES)
    det = make_detector(n, max_period, CLASSES, device=device, backend=backend)
    expected = list(expected) + [0] * n
    fired = set()
    for s in range(n):
        ref.configure(s, params, expected[s])
        det.configure(s, params, expected[s])
    steps = max(len(x) for x in streams)
    for t in range(steps):
        for op, a, b in dict(ops).get(t, []):
            if op == "move":
                ref.move(a, b); det.move(a, b)
            elif op == "swap":
                ref.swap(a, b); det.swap(a, b)
            elif op == "configure":
                ref.configure(a, params); det.configure(a, params)
        toks = [x[t] if t < len(x) else -1 for x in streams]
        k, p, nt = ref.step(toks)
        res = det.step(torch.tensor(toks, dtype=torch.int32, device=device))
        got = (res.kind.cpu().tolist(), res.period.cpu().tolist(), res.next_token.cpu().tolist())
        assert got == (k, p, nt), f"step {t}: tokens {toks}"
        fired.update(k)
    for s in range(n):
        assert det.position(s) == ref.position(s)
    return fired


# -- the spec itself, on hand-made sequences --------------------------------

def test_exact_loop_fires_at_min_repeats_th_copy():
    prm = DetectorParams(min_period=1, max_period=8, min_repeats=3, min_span=6, near_min_repeats=0)
    seq = [1, 2, 4] * 3 + [1]
    # 3 copies of period 3 complete at index 8; the server replaces index 9.
    assert scan(seq, prm) == (9, LOOP, 3)


def test_short_runs_below_min_span_do_not_fire():
    prm = DetectorParams(min_period=1, max_period=8, min_repeats=3, min_span=24, near_min_repeats=0,
                         max_blank_run=0)
    assert scan([5] * 23, prm) is None            # "=====" of 23 tokens
    assert scan([5] * 24, prm) == (24, LOOP, 1)


def test_period_one_and_period_equal_max_period():
    prm = DetectorParams(min_period=1, max_period=4, min_repeats=3, min_span=1, near_min_repeats=0)
    assert scan([7, 7, 7], prm) == (3, LOOP, 1)
    assert scan([1, 2, 4, 5] * 3, prm) == (12, LOOP, 4)
    assert scan([1, 2, 4, 5, 7] * 3, prm) is None  # period 5 > max_period


def test_run_broken_at_last_token():
    prm = DetectorParams(min_period=1, max_period=8, min_repeats=3, min_span=1, near_min_repeats=0)
    assert scan([1, 2, 4, 1, 2, 4, 1, 2, 5], prm) is None


def test_near_loop_needs_content_and_count():
    prm = DetectorParams(min_period=1, max_period=8, min_repeats=0, min_span=1, near_threshold=0.75,
                         near_min_repeats=3, near_min_span=1, near_min_content=0.2, max_blank_run=0)
    # period 4, one changing slot (a "counter" 0/3/6/9 cycling), content tokens 1, 2 repeat.
    seq = []
    for i in range(12):
        seq += [[0, 3, 6, 9][i % 4], 1, 2, 4]
    res = scan(seq, prm, classes=CLASSES)
    assert res is not None and res[1] == NEAR and res[2] == 4
    # The same structure with only punctuation repeating is counting, not looping.
    counting = []
    for i in range(12):
        counting += [[1, 2, 4, 5][i % 4], 0, 3, 6]
    assert scan(counting, prm, classes=CLASSES) is None
    # A prompt that asks for 20 items needs more than 20 copies.
    late = scan(seq, prm, classes=CLASSES, expected_items=20)
    assert late is None


def _template(rounds):
    """Rounds of one template whose slot varies in length (1-3 new tokens), so
    no fixed period lines the rounds up."""
    seq = []
    for i in range(rounds):
        seq += list(range(100, 108)) + [200 + 10 * i + j for j in range(1 + i % 3)] + list(range(110, 118))
    return seq


ECHO_PRM = DetectorParams(max_period=64, min_span=24, near_min_repeats=4, echo_ngram=3,
                          echo_threshold=0.7, echo_min_span=60, echo_min_content=0.2, max_blank_run=0)


def test_echo_fires_on_a_template_loop_with_no_fixed_period():
    seq = _template(12)
    # Neither periodic detector sees it: the rounds are 17, 18, 19 tokens long.
    periodic_only = DetectorParams(**{**ECHO_PRM.__dict__, "echo_ngram": 0})
    assert scan(seq, periodic_only) is None
    # Every token echoes but the varying slot and the two after it (their
    # 3-grams run through the slot): 14 of 17-19 per round, above 0.7. The
    # stretch that lasts starts at index 29 (round 1's 112, after the two
    # tokens past its slot reset it) and reaches 60 tokens at index 88, the
    # 117 closing round 4, whose 3-gram last came 18 tokens back (round 4's length).
    assert scan(seq, ECHO_PRM) == (89, ECHO, 18)
    # min span: the same output one token shorter never fires.
    assert scan(seq[:88], ECHO_PRM) is None
    # Echo lags are periods: none beyond max_period (16 < every round).
    assert scan(seq, DetectorParams(**{**ECHO_PRM.__dict__, "max_period": 16})) is None


def test_echo_needs_more_rounds_than_asked_and_content():
    seq = _template(40)
    # 40 rounds, lags ~18: asking for 10 items moves the firing point out to
    # 10 x the mean lag past the stretch's start (index 29); asking for 40
    # items lets the output finish.
    assert scan(seq, ECHO_PRM, expected_items=10) == (211, ECHO, 19)
    assert scan(seq, ECHO_PRM, expected_items=40) is None
    # Only punctuation echoing (no content class): formatting, not looping.
    punct = TokenClasses(content=[False] * 400)
    assert scan(seq, ECHO_PRM, classes=punct) is None


def test_echo_numbers_compare_equal():
    # Lines "<counter> w20 .. w29 <name>": the counter (ids 300+, digits) and
    # the name change every line. The 3-grams through the counter echo only
    # because numbers near-match: 3 new tokens of 12 (75% echo) instead of 4
    # (67%, under the 0.7 threshold).
    seq = []
    for i in range(30):
        seq += [300 + i] + list(range(20, 30)) + [100 + i]
    prm = DetectorParams(**{**ECHO_PRM.__dict__, "near_min_repeats": 0, "min_repeats": 0})
    ids = range(400)
    classes = TokenClasses(content=[20 <= i < 30 or 100 <= i < 200 for i in ids], blank=[False] * 400,
                           number=[i >= 300 for i in ids])
    res = scan(seq, prm, classes=classes)
    assert res is not None and res[1] == ECHO and res[2] == 12
    assert scan(seq, prm, classes=TokenClasses(content=classes.content)) is None


def test_blank_run():
    prm = DetectorParams(min_repeats=0, near_min_repeats=0, max_blank_run=4)
    assert scan([10, 11, 10, 11, 10], prm, classes=CLASSES) == (5, BLANK, 0)
    assert scan([10, 11, 10, 11, 1, 10], prm, classes=CLASSES) is None


def test_idle_and_unconfigured_slots_do_nothing():
    ref = ReferenceDetector(2, 4)
    ref.configure(0, DetectorParams(max_period=4, min_span=1))
    assert ref.step([-1, 5]) == ([NONE, NONE], [0, 0], [-1, -1])
    assert ref.position(0) == 0 and ref.position(1) == 0


# -- differential: torch (and CUDA on a GPU) == reference ---------------------

@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("case", ["period1", "period_eq_max", "broken_last", "blank", "near", "mixed"])
def test_adversarial(backend, device, case):
    streams = {
        "period1": [[3] * 30, [1] * 5 + [2] * 25],
        "period_eq_max": [[1, 2, 4, 5, 7, 8, 1, 2] * 5, list(range(8)) * 5],
        "broken_last": [[1, 2, 4] * 6 + [1, 2, 5], [4, 5] * 10 + [4, 4]],
        "blank": [[10, 11] * 6 + [1] + [10] * 8, [10] * 3 + [-1] * 4 + [11] * 4],
        "near": [sum(([[0, 3, 6, 9][i % 4], 1, 2, 4] for i in range(10)), []),
                 sum(([[1, 2, 4, 5][i % 4], 0, 3, 6] for i in range(10)), [])],
        "mixed": [[random.Random(s).randrange(VOCAB) for _ in range(60)] for s in range(4)],
    }[case]
    _drive(backend, device, streams, SMALL)


@pytest.mark.parametrize("backend,device", _backends())
def test_batch_add_remove_move_swap(backend, device):
    rng = random.Random(7)
    streams = [[rng.choice([1, 2, 4, 5]) for _ in range(40)] for _ in range(4)]
    streams[2] = [1, 2, 4] * 14
    streams[3] = [-1] * 5 + [5, 7] * 17
    ops = {5: [("swap", 0, 2)], 11: [("move", 1, 3)], 17: [("configure", 1, None)],
           23: [("swap", 2, 3), ("swap", 0, 1)], 30: [("move", 0, 1)]}
    _drive(backend, device, streams, SMALL, ops=ops)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-1, VOCAB - 1), min_size=1, max_size=50), min_size=1, max_size=4),
       st.integers(1, 8), st.integers(0, 4), st.integers(1, 12), st.floats(0.5, 1.0),
       st.integers(0, 4), st.integers(1, 20), st.floats(0.0, 1.0), st.integers(0, 5),
       st.integers(0, 4), st.floats(0.5, 1.0), st.integers(1, 30), st.floats(0.0, 1.0),
       st.lists(st.integers(0, 6), max_size=4))
@pytest.mark.parametrize("backend,device", _backends())
def test_hypothesis_equals_reference(backend, device, streams, max_p, min_rep, min_span, thr, near_rep,
                                     near_span, content, blank_run, echo_n, echo_thr, echo_span,
                                     echo_content, expected):
    min_p = 1 if max_p == 1 else 1 + max_p // 3
    prm = DetectorParams(min_period=min_p, max_period=max_p, min_repeats=0 if min_rep == 1 else min_rep,
                         min_span=min_span, near_threshold=round(thr, 3),
                         near_min_repeats=0 if near_rep == 1 else near_rep, near_min_span=near_span,
                         near_min_content=round(content, 3), echo_ngram=echo_n,
                         echo_threshold=round(echo_thr, 3), echo_min_span=echo_span,
                         echo_min_content=round(echo_content, 3), max_blank_run=blank_run)
    _drive(backend, device, streams, prm, max_period=8, expected=expected)


@pytest.mark.parametrize("backend,device", _backends())
def test_echo_differential(backend, device):
    """Template loops (no fixed period) in a 64-period detector, with expected
    items on some slots, slots swapped and moved mid-stream: ECHO fires and
    every backend agrees with the reference on every step."""
    prm = DetectorParams(**{**ECHO_PRM.__dict__, "max_period": 40, "min_period": 2})
    rng = random.Random(5)
    streams = [_template(30), _template(30)[5:], [rng.randrange(400) for _ in range(300)],
               _template(30), [t % VOCAB for t in _template(25)]]
    ops = {40: [("swap", 0, 2)], 90: [("move", 1, 2)], 150: [("swap", 3, 4)]}
    fired = _drive(backend, device, streams, prm, max_period=64, ops=ops, expected=[0, 0, 0, 8, 0])
    assert ECHO in fired


@pytest.mark.parametrize("backend,device", _backends())
def test_hypothesis_like_long_random_with_loops(backend, device):
    """Long streams: random text with loops spliced in, a period up to max_period."""
    rng = random.Random(3)
    streams = []
    for s in range(6):
        seq = [rng.randrange(VOCAB) for _ in range(20)]
        unit = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 8))]
        seq += unit * rng.randint(2, 6)
        seq[-1] = rng.randrange(VOCAB) if s % 2 else seq[-1]
        seq += [rng.randrange(VOCAB) for _ in range(20)]
        streams.append(seq)
    _drive(backend, device, streams, SMALL)


def test_make_detector_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown detect backend"):
        make_detector(1, 4, backend="tpu")


def test_near_loop_numbers_compare_equal():
    """An enumerated list whose only change is the counter ("68. Pluto", "69. Pluto")
    is a near-loop even at threshold 1.0; it is never an exact loop."""
    prm = DetectorParams(min_period=1, max_period=8, min_repeats=3, min_span=1, near_threshold=1.0,
                         near_min_repeats=4, near_min_span=1, near_min_content=0.2, max_blank_run=0)
    seq = []
    for i in range(6):
        seq += [[5, 8][i % 2], 1, 2, 4]
    assert scan(seq, prm, classes=CLASSES) == (16, NEAR, 4)
    # Without number classes the counter breaks every round: only the exact
    # period-8 loop (two rounds) fires, three copies later.
    assert scan(seq, prm) == (24, LOOP, 8)


@pytest.mark.parametrize("backend,device", _backends())
def test_counters_differential(backend, device):
    streams = [sum(([[5, 8][i % 2], 1, 2, 4] for i in range(9)), []),
               sum(([[5, 8, 5][i % 3], 0, [5, 8][i % 2], 7] for i in range(9)), [])]
    prm = DetectorParams(min_period=1, max_period=8, min_repeats=3, min_span=4, near_threshold=0.9,
                         near_min_repeats=3, near_min_span=8, near_min_content=0.2, max_blank_run=3)
    _drive(backend, device, streams, prm)


@pytest.mark.parametrize("backend,device", _backends())
def test_long_streams_odd_max_period(backend, device):
    """A max_period that is no multiple of any vector width, streams that wrap
    the ring many times, loops of period 1..37 (37 = max_period) with numbers
    in them, broken and resumed, and a run broken at the very last token."""
    rng = random.Random(11)
    prm = DetectorParams(min_period=1, max_period=37, min_repeats=3, min_span=10, near_threshold=0.8,
                         near_min_repeats=3, near_min_span=40, near_min_content=0.2, max_blank_run=6)
    streams = []
    for period in (1, 2, 5, 17, 36, 37):
        seq = [rng.randrange(VOCAB) for _ in range(50)]
        for _ in range(3):
            unit = [rng.randrange(VOCAB) for _ in range(period)]
            seq += unit * 4 + [rng.randrange(VOCAB) for _ in range(rng.randint(0, 30))]
        seq += [rng.randrange(VOCAB) for _ in range(20)]
        streams.append(seq)
    streams[-1] = streams[-1][:-1] + [(streams[-1][-1 - 37] + 1) % VOCAB]
    _drive(backend, device, streams, prm, max_period=37)


@pytest.mark.cc
@pytest.mark.parametrize("near_threshold,quiet", [(0.75, 1), (0.0, 0)])
def test_cpu_kernel_skips_unseen_periods_only_when_quiet(near_threshold, quiet):
    """The fused CPU kernel skips the periods a slot has not seen yet (t < p)
    when they provably stay zero. A near threshold of 0 (below the range a
    request may ask for) lets their near length grow before they are seen,
    so those slots walk them. Both equal the reference before and after the
    ring wraps."""
    prm = DetectorParams(min_period=1, max_period=16, min_repeats=3, min_span=4,
                         near_threshold=near_threshold, near_min_repeats=3, near_min_span=12,
                         near_min_content=0.2, echo_ngram=3, echo_threshold=0.7, echo_min_span=16,
                         echo_min_content=0.2, max_blank_run=4)
    rng = random.Random(7)
    streams = [[rng.randrange(VOCAB) for _ in range(40)], [1, 2, 4, 5] * 10, [-1] * 5 + [7, 8] * 15]
    _drive("cpu", "cpu", streams, prm, max_period=16)
    det = make_detector(1, 16, CLASSES, backend="cpu")
    det.configure(0, prm)
    assert det.quiet_unseen.tolist() == [quiet]
    det.clear(0)
    assert det.quiet_unseen.tolist() == [0]
