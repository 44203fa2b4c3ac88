"""Token classes the detectors need, derived once from the tokenizer (host side).

* content: the token's text carries a word (>= 2 letters). Digits, punctuation,
  whitespace and single letters are not content: a near-loop whose matching
  part is only "1. 1\\n2. 2" scaffolding is counting, not looping.
* blank: whitespace-only text, or a special token (EOS-looking filler such as
  ``<|im_end|>`` generated while ``ignore_eos`` is set, or ``<pad>``).

Also :func:`expected_items`, the largest item count a prompt asks for.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

_INT_RE = re.compile(r"(?<![\w.])(\d{1,4})(?![\w.]*\d)")
MAX_EXPECTED_ITEMS = 1000


def is_content(text: str) -> bool:
    return sum(ch.isalpha() for ch in text) >= 2


def is_blank(text: str) -> bool:
    return text.strip() == ""


def tables_from_texts(texts: Sequence[str], special_ids: Iterable[int] = ()) -> tuple[list[bool], list[bool]]:
    """(content, blank) tables, one bool per token id, from each id's decoded text."""
    content = [is_content(t) for t in texts]
    blank = [is_blank(t) for t in texts]
    for i in special_ids:
        if 0 <= i < len(texts):
            content[i] = False
            blank[i] = True
    return content, blank


def tables_from_tokenizer(tokenizer, vocab_size: int | None = None) -> tuple[list[bool], list[bool]]:
    """Tables from a Hugging Face tokenizer, padded to ``vocab_size`` (the
    model's logits width, which may exceed the tokenizer's)."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)]) if n else []
    content, blank = tables_from_texts(texts, getattr(tokenizer, "all_special_ids", ()))
    if vocab_size is not None and vocab_size > n:
        content += [False] * (vocab_size - n)
        blank += [False] * (vocab_size - n)
    return content, blank


def expected_items(prompt_text: str) -> int:
    """The largest integer in 2..1000 written in the prompt, else 0.

    A prompt that asks for "25 records" or "100 names" legitimately gets 25 or
    100 near-identical rounds; near-loops must outlast that count before they
    fire. Larger numbers (years, sizes) are ignored.
    """
    best = 0
    for m in _INT_RE.finditer(prompt_text):
        v = int(m.group(1))
        if 2 <= v <= MAX_EXPECTED_ITEMS:
            best = max(best, v)
    return best
