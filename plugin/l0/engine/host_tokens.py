"""Each slot's new token, read from the host's live output lists (vLLM's V1
runner keeps one Python list per request and appends to it; a host whose
tokens are on the device uses :mod:`l0.engine.slot_tokens` instead).

Why its own shape: in an engine the model's forward pass evicts everything
from the CPU caches between two decode steps, so each library call L0 makes
there costs ~5-20 us (measured on the CI VM: a handful of numpy calls over 64
rows took longer than the fused detect kernel). The common step, where every
list grew by exactly one token, is therefore read in a few C-level calls
(``map(len)``, a list compare, ``map(itemgetter(-1))``), with no per-row
Python loop and no numpy or torch call.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Callable

from l0.engine.rows import move_entry, move_value

_last = itemgetter(-1)
plus_one = (1).__add__  # n -> n + 1, callable from map() at C speed


@dataclass
class _Batch:
    """The tracked lists in slot order, rebuilt after any add/remove/move."""

    slots: list[int]
    lists: list[list[int]]
    expect: list[int]  # per list: tokens taken + 1 (the length a one-token step has)
    dense: bool        # slots are 0..k-1


class HostTokens:
    """Slots ``0..num_slots-1``; ``add(slot, out_ids)`` tracks a live list
    (it may already hold tokens: they are replayed on the next step)."""

    def __init__(self, num_slots: int) -> None:
        self._out: dict[int, list[int]] = {}
        self._seen = [0] * num_slots  # tokens taken per slot (while _batch is None)
        self._batch: _Batch | None = None

    def add(self, slot: int, out_ids: list[int]) -> None:
        self._settle()
        self._out[slot] = out_ids
        self._seen[slot] = 0

    def remove(self, slot: int) -> None:
        self._settle()
        self._out.pop(slot, None)
        self._seen[slot] = 0

    def move(self, a: int, b: int, swap: bool) -> None:
        """As the persistent batch: ``swap`` exchanges; else a's list moves to b."""
        self._settle()
        move_entry(self._out, a, b, swap)
        move_value(self._seen, a, b, swap, 0)

    def _settle(self) -> None:
        """Write the batch's counts back per slot before the slots change."""
        batch, self._batch = self._batch, None
        if batch is not None:
            for slot, e in zip(batch.slots, batch.expect):
                self._seen[slot] = e - 1

    def gather(self, B: int, replay: Callable[[int, list[int]], None]) -> list[int]:
        """The new token of each slot ``< B`` (``-1``: none), a list of ``B``.

        A list that grew by more than one token (a request re-added with
        output: preemption) has the earlier ones passed to ``replay(slot,
        tokens)`` first. ``-1`` entries in a list (vLLM's async-scheduling
        placeholders: not known yet) are not taken."""
        batch = self._batch
        if batch is None:
            slots = sorted(self._out)
            batch = self._batch = _Batch(slots, [self._out[s] for s in slots],
                                         [self._seen[s] + 1 for s in slots], slots == list(range(len(slots))))
        lists = batch.lists
        lens = list(map(len, lists))
        if lens == batch.expect and (not batch.slots or batch.slots[-1] < B):
            last = list(map(_last, lists))
            if not last or min(last) >= 0:
                batch.expect = list(map(plus_one, lens))
                if batch.dense:
                    return last + [-1] * (B - len(last))
                toks = [-1] * B
                for slot, tok in zip(batch.slots, last):
                    toks[slot] = tok
                return toks
        toks = [-1] * B
        expect = batch.expect
        for i, (slot, out, n) in enumerate(zip(batch.slots, lists, lens)):
            seen = expect[i] - 1
            if slot >= B:
                continue
            if n == seen + 1:
                if out[-1] >= 0:
                    toks[slot] = out[-1]
                    expect[i] = n + 1
            elif n > seen:
                pending = [t for t in out[seen:] if t >= 0]
                expect[i] = n + 1
                if pending:
                    replay(slot, pending[:-1])
                    toks[slot] = pending[-1]
        return toks
