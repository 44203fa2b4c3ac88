"""Per-request starvation: the time between consecutive tokens of one request,
measured in the engine while it steps.

A request that stays in the batch gets a token every step, so its gaps are
the step time. A request that is starved — taken out of the batch (vLLM
removes unscheduled and preempted requests from its persistent batch and adds
them back later), or kept in it without output — shows a long gap at its next
token. Gaps go into a fixed-bucket histogram (``l0_request_starvation_seconds``).

The tracker follows the persistent batch like the logits processor does
(``add``/``remove``/``move``) and reads only vLLM's live output lists: no
device work. A request that leaves the batch is remembered by its output
list object (the same list comes back when it is re-added) for ``horizon_s``;
a finished request also leaves the batch, but never adds another token, so it
is never observed and is forgotten after the horizon.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import Callable

from l0.engine.host_tokens import plus_one
from l0.engine.rows import move_entry

# Seconds. Step times on a GPU are ~10-50 ms; starvation worth an alert is seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Cumulative-on-export histogram with fixed upper bounds (``le``)."""

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing: {bounds}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def to_dict(self) -> dict:
        """``{"le": [...bounds, "+Inf"], "cumulative": [...], "sum", "count"}`` (Prometheus shape)."""
        cum, total = [], 0
        for c in list(self.counts):
            total += c
            cum.append(total)
        # count from the same copy, so +Inf == count even when read mid-observe
        return {"le": [*self.bounds, "+Inf"], "cumulative": cum, "sum": self.sum, "count": total}


@dataclass
class _Batch:
    """The rows in one order with their counts, rebuilt after any
    add/remove/move: a step reads every list in a few C-level calls (in an
    engine each Python operation per row costs ~1 us, caches cold after the
    forward pass; see :mod:`l0.engine.host_tokens`)."""

    rows: list[list]   # the rows' [out_ids, seen, last] (written back by _settle)
    lists: list[list[int]]
    expect: list[int]  # per row: tokens seen + 1
    times: list        # per row: time of its last token, or None


class StarvationTracker:
    """Rows are persistent-batch indices; ``out_ids`` is vLLM's live output list.

    ``step()`` is called once per engine step; a row whose output grew since
    the last call contributes one observation: now − the time of its previous
    token (the first token of a request is not a gap and is not observed).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, horizon_s: float = 600.0,
                 max_away: int = 4096) -> None:
        self.clock = clock
        self.horizon_s = horizon_s
        self.max_away = max_away
        self.hist = Histogram()
        self.worst_s = 0.0  # the longest gap observed
        # index -> [out_ids, tokens seen, time of the last token or None]
        self._rows: dict[int, list] = {}
        # id(out_ids) -> (out_ids, tokens seen, time of last token, time it left)
        self._away: dict[int, tuple] = {}
        self._pruned = clock()
        self._batch: _Batch | None = None

    def add(self, index: int, out_ids: list[int]) -> None:
        self._settle()
        back = self._away.pop(id(out_ids), None)
        if back is not None and back[0] is out_ids:
            self._rows[index] = [out_ids, back[1], back[2]]
        else:
            self._rows[index] = [out_ids, len(out_ids), None]

    def remove(self, index: int) -> None:
        self._settle()
        row = self._rows.pop(index, None)
        if row is None or row[2] is None:
            return
        now = self.clock()
        self._away[id(row[0])] = (row[0], row[1], row[2], now)
        if len(self._away) > self.max_away or now - self._pruned > 10.0:
            self._prune(now)

    def move(self, a: int, b: int, swap: bool) -> None:
        self._settle()
        move_entry(self._rows, a, b, swap)

    def _settle(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            for row, e, t in zip(batch.rows, batch.expect, batch.times):
                row[1], row[2] = e - 1, t

    def step(self) -> None:
        b = self._batch
        if b is None:
            rows = list(self._rows.values())
            b = self._batch = _Batch(rows, [r[0] for r in rows], [r[1] + 1 for r in rows], [r[2] for r in rows])
        lens = list(map(len, b.lists))
        if lens == b.expect:  # the common step: every row got one token...
            times = set(b.times)
            if len(times) == 1:  # ...and all got their previous one together: one gap
                last, now = times.pop(), self.clock()
                if last is not None:
                    self._observe(now - last, len(lens))
                b.times = [now] * len(lens)
                b.expect = list(map(plus_one, lens))
                return
        now = None
        gaps: dict[float, int] = {}  # rows that got their previous token together share one gap
        expect, times = b.expect, b.times
        for i, n in enumerate(lens):
            seen = expect[i] - 1
            if n == seen:
                continue
            expect[i] = n + 1
            if n < seen:
                continue  # the list was rewritten (e.g. rolled back): follow it
            if now is None:
                now = self.clock()
            if times[i] is not None:
                gaps[times[i]] = gaps.get(times[i], 0) + 1
            times[i] = now
        for last, k in gaps.items():
            self._observe(now - last, k)

    def _observe(self, gap: float, k: int) -> None:
        self.hist.observe(gap, k)
        if gap > self.worst_s:
            self.worst_s = gap

    def _prune(self, now: float) -> None:
        # Engine thread only (the monitor thread reads the histogram, never this dict).
        self._pruned = now
        old = [k for k, v in self._away.items() if now - v[3] > self.horizon_s]
        for k in old:
            del self._away[k]
        if len(self._away) > self.max_away:
            for k in sorted(self._away, key=lambda k: self._away[k][3])[: len(self._away) - self.max_away]:
                del self._away[k]

    def to_dict(self) -> dict:
        """Safe from another thread: reads a copy of the counts (a torn read
        is at most one observation behind)."""
        return dict(self.hist.to_dict(), worst_s=self.worst_s)
