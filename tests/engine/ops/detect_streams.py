"""Token streams and batch scripts for the detect op at serving sizes (batch up
to 256, max_period up to 4096, a 49152-token vocabulary), shared by the GPU
scale test and the reference jobs it runs in other processes. Imports no torch:
a reference job starts in a fraction of a second.

Token ids: 0-99 punctuation, 100-199 numbers, 200-209 blank, 210-999 more
punctuation, 1000+ content words.
"""
from __future__ import annotations

import random

from l0.engine.config import DetectorParams
from l0.engine.ops.detect_reference import ReferenceDetector
from l0.engine.vocab import TokenClasses

VOCAB = 49152
PATTERNS = ("period1", "period_eq_max", "broken_last", "blank", "near_numbers", "echo", "random", "spliced")


def classes() -> TokenClasses:
    ids = range(VOCAB)
    return TokenClasses(content=[i >= 1000 for i in ids], blank=[200 <= i < 210 for i in ids],
                        number=[100 <= i < 200 for i in ids])


def _word(rng):
    return rng.randrange(1000, VOCAB)


def _any(rng):
    return rng.randrange(0, VOCAB)


def stream(pattern: str, P: int, T: int, seed: int) -> list[int]:
    """``T`` tokens of one pattern for a detector of max_period ``P``."""
    rng = random.Random(seed)
    out = [_any(rng) for _ in range(rng.randint(5, 60))]
    if pattern == "period1":
        out += [_word(rng)] * T
    elif pattern == "period_eq_max":
        unit = [_word(rng) for _ in range(P)]
        out += unit * (T // P + 2)
    elif pattern == "broken_last":
        unit = [_word(rng) for _ in range(max(1, P - 1))]
        loop = unit * 3
        loop[-1] = (loop[-1] + 1) % VOCAB if loop[-1] + 1 < VOCAB else 1000
        out += loop
    elif pattern == "blank":
        while len(out) < T:
            out += [rng.randrange(200, 210) for _ in range(rng.randint(10, 80))]
            out += [_word(rng) for _ in range(rng.randint(1, 5))]
    elif pattern == "near_numbers":
        unit = [_word(rng) for _ in range(rng.randint(3, min(40, P - 1)))]
        i = 0
        while len(out) < T:
            out += [100 + i % 100] + unit
            i += 1
    elif pattern == "echo":
        head = [_word(rng) for _ in range(8)]
        tail = [_word(rng) for _ in range(8)]
        i = 0
        while len(out) < T:
            out += head + [_word(rng) for _ in range(1 + i % 3)] + tail
            i += 1
    elif pattern == "spliced":
        while len(out) < T:
            p = rng.randint(1, P)
            unit = [_word(rng) for _ in range(p)]
            out += unit * rng.randint(2, 4) + [_any(rng) for _ in range(rng.randint(0, 40))]
    out += [_any(rng) for _ in range(max(0, T - len(out)))]
    return out[:T]


def params_for(slot: int, P: int) -> tuple[DetectorParams, int]:
    """Per-slot knobs (varied at random) and expected_items; the detector a
    slot's pattern exercises is always on."""
    rng = random.Random(1000 + slot)
    pattern = PATTERNS[slot % len(PATTERNS)]
    prm = DetectorParams(min_period=rng.choice([1, 1, 2]), max_period=P,
                         min_repeats=2 if pattern == "period_eq_max" else rng.choice([2, 3]),
                         min_span=rng.choice([1, 24, 64]), near_threshold=rng.choice([0.8, 0.9, 1.0]),
                         near_min_repeats=3 if pattern == "near_numbers" else rng.choice([0, 3, 4]),
                         near_min_span=rng.choice([32, 192]), near_min_content=0.2,
                         echo_ngram=4 if pattern == "echo" else rng.choice([0, 3, 4]), echo_threshold=0.75,
                         echo_min_span=rng.choice([64, 256]), echo_min_content=0.15,
                         max_blank_run=16 if pattern == "blank" else rng.choice([0, 16, 64]))
    if pattern == "period1":
        prm = DetectorParams(**{**prm.__dict__, "min_period": 1})
    return prm, rng.choice([0, 0, 5])


def batch(n: int, P: int, seed: int = 0):
    """Streams for ``n`` slots (pattern = slot % 8; a -1 idles a slot now and then)
    and the host ops, keyed by step: swaps, a move and a fresh configure,
    all among slots 0..7 (the slots the reference replays)."""
    T = 2 * P + 300
    streams = []
    for s in range(n):
        seq = []
        for x in stream(PATTERNS[s % len(PATTERNS)], P, T, seed * 100003 + s):
            if (len(seq) + s) % 97 == 0:
                seq.append(-1)  # an idle step delays the stream (no token lost)
            seq.append(x)
        streams.append(seq[:T])
    ops: dict[int, list] = {}
    if n >= 8:
        ops = {T // 3: [("swap", 0, 5)], T // 2: [("move", 1, 6)], (2 * T) // 3: [("configure", 1, None)],
               (3 * T) // 4: [("swap", 2, 7), ("swap", 3, 4)]}
    return streams, ops, T


def apply_ops(det, ops: list, P: int) -> None:
    """One step's host ops on any detector backend (swap, move, configure)."""
    for op, a, b in ops:
        if op == "swap":
            det.swap(a, b)
        elif op == "move":
            det.move(a, b)
        else:
            det.configure(a, *params_for(a, P))


def reference_job(n: int, P: int, seed: int, slots: list[int], upto: int):
    """Replay ``batch(n, P, seed)`` through the reference for ``slots`` over the
    first ``upto`` steps; returns {slot: (kinds, periods, nexts)} per step.
    Slots outside ``slots`` stay unconfigured (they cost nothing)."""
    streams, ops, _ = batch(n, P, seed)
    ref = ReferenceDetector(n, P, classes())
    for s in slots:
        ref.configure(s, *params_for(s, P))
    out = {s: ([], [], []) for s in slots}
    for t in range(upto):
        apply_ops(ref, ops.get(t, []), P)
        toks = [streams[s][t] if s in out else -1 for s in range(n)]
        k, p, x = ref.step(toks)
        for s in slots:
            out[s][0].append(k[s])
            out[s][1].append(p[s])
            out[s][2].append(x[s])
    return out
