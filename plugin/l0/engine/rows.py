"""Following a host's persistent batch: rows are places in the batch, and a
move (vLLM's ``BatchUpdate.moved``, any host's compaction) either swaps two
rows or moves one request to another row, dropping what was there. Every
per-row table L0 keeps follows moves through these two helpers."""
from __future__ import annotations

from typing import MutableSequence, TypeVar

T = TypeVar("T")


def move_entry(rows: dict[int, T], a: int, b: int, swap: bool) -> None:
    """Apply one move to a row-indexed dict: ``swap`` exchanges rows a and b;
    otherwise a's entry goes to b (b's is dropped, a is left empty)."""
    ea, eb = rows.pop(a, None), rows.pop(b, None)
    if ea is not None:
        rows[b] = ea
    if swap and eb is not None:
        rows[a] = eb


def move_value(values: MutableSequence[T], a: int, b: int, swap: bool, empty: T) -> None:
    """The same move on a row-indexed sequence (a list, a ctypes array):
    an emptied row a gets ``empty``."""
    values[b], values[a] = values[a], (values[b] if swap else empty)
