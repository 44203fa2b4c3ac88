"""Does an answer have real content? One definition for the whole client.

The session's zero-output guard, its "hold leading whitespace until something
real arrives", the non-streaming path and the ``zero_output`` guardrail all
ask the same question; they used to answer it with two twins that disagreed
on a lone ``$`` or ``+``. This is the one answer.

Content: a letter or digit (any script), an emoji or other pictographic
symbol (Unicode ``So`` outside ASCII), or an empty JSON value ``{}``, ``[]``,
``""`` (blanks inside allowed, e.g. ``[ ]``), so that a structured call
answering ``{}`` is output, not zero output (the original L0 counted it as
empty). Not content on their own: whitespace, punctuation, and ASCII or
math/currency/modifier symbols (``$ + ` ^ |``).

Incremental: :class:`ContentScan` stops looking at the first content char, so
a real answer costs a few characters, however it is chunked.
"""
from __future__ import annotations

import unicodedata

_JSON_EMPTY = frozenset({"{}", "[]", '""'})


def is_content_char(c: str) -> bool:
    """One character (a ``str`` of length 1) that is content by itself."""
    if c.isalnum():
        return True
    return c > "\x7f" and unicodedata.category(c) == "So"


class ContentScan:
    """Feed the answer's text in chunks; :attr:`found` turns True at the
    first content and stays True. Chunk boundaries never change the result
    (the last non-blank char is carried, so ``{`` + `` }`` is ``{}``)."""

    __slots__ = ("found", "_last")

    def __init__(self) -> None:
        self.found = False
        self._last = ""

    def feed(self, text: str) -> bool:
        """Scan ``text`` (the next chunk); returns :attr:`found`."""
        if self.found:
            return True
        for c in text:
            if c.isspace():
                continue
            if is_content_char(c) or self._last + c in _JSON_EMPTY:
                self.found = True
                return True
            self._last = c
        return False


def has_content(text: str) -> bool:
    """The whole answer at once: the same verdict as a :class:`ContentScan`."""
    return ContentScan().feed(text)
