"""Token classes the detectors need, derived once from the tokenizer (host side).

* content: the token's text carries a word (>= 2 letters). Digits, punctuation,
  whitespace and single letters are not content: a near-loop whose matching
  part is only "1. 1\\n2. 2" scaffolding is counting, not looping.
* blank: whitespace-only text, or a special token (EOS-looking filler such as
  ``<|im_end|>`` generated while ``ignore_eos`` is set, or ``<pad>``).
* number: the token's text is digits. Near-loops compare two number tokens as
  equal: the counter of an enumerated list ("68. Pluto", "69. Pluto") is not
  what makes the lines differ.

Also :func:`expected_items`, the largest item count a prompt asks for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

_INT_RE = re.compile(r"(?<![\w.])(\d{1,4})(?![\w.]*\d)")
MAX_EXPECTED_ITEMS = 1000


def is_content(text: str) -> bool:
    return sum(ch.isalpha() for ch in text) >= 2


def is_blank(text: str) -> bool:
    return text.strip() == ""


def is_number(text: str) -> bool:
    return text.strip().isdigit()


@dataclass(frozen=True)
class TokenClasses:
    """One bool per token id for each class. A ``None`` table means: every
    token is content, none is blank, none is a number. Ids past a table's end
    take its last entry."""

    content: Sequence[bool] | None = None
    blank: Sequence[bool] | None = None
    number: Sequence[bool] | None = None


def classes_from_texts(texts: Sequence[str], special_ids: Iterable[int] = ()) -> TokenClasses:
    """Classes from each token id's decoded text."""
    content = [is_content(t) for t in texts]
    blank = [is_blank(t) for t in texts]
    number = [is_number(t) for t in texts]
    for i in special_ids:
        if 0 <= i < len(texts):
            content[i] = number[i] = False
            blank[i] = True
    return TokenClasses(content, blank, number)


def token_texts(tokenizer, vocab_size: int | None = None) -> list[str]:
    """Each token id's decoded text from a Hugging Face tokenizer, padded with
    "" to ``vocab_size`` (the model's logits width, which may exceed the
    tokenizer's: padding ids are never sampled)."""
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)]) if n else []
    if vocab_size is not None and vocab_size > n:
        texts += [""] * (vocab_size - n)
    return texts


def classes_from_tokenizer(tokenizer, vocab_size: int | None = None) -> TokenClasses:
    """Classes from a Hugging Face tokenizer, padded to ``vocab_size``."""
    return classes_from_texts(token_texts(tokenizer, vocab_size), getattr(tokenizer, "all_special_ids", ()))


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
