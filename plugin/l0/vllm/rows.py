"""Per-row bookkeeping shared by the processor's parts (detector rows,
checkpointed requests): following vLLM's persistent-batch moves."""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def move_entry(rows: dict[int, T], a: int, b: int, swap: bool) -> None:
    """Apply one BatchUpdate move to a row-indexed dict: ``swap`` exchanges
    rows a and b; otherwise a's entry goes to b (b's is dropped, a is left empty)."""
    ea, eb = rows.pop(a, None), rows.pop(b, None)
    if ea is not None:
        rows[b] = ea
    if swap and eb is not None:
        rows[a] = eb
