"""The rule framework of the streaming guardrails (the contracts every rule
keeps are in :mod:`l0.client.guardrails`): severities, :class:`Violation`,
:class:`Rule`, :class:`Guardrails`, the incremental regex scanners that rule
families build on (:class:`Scanner`, :class:`TailScanner`, :func:`match_width`),
and :func:`combine`."""
from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable

SEVERITIES = ("warning", "error", "fatal")
RANK = {s: i for i, s in enumerate(SEVERITIES)}
EXCERPT_MAX = 80
# Characters kept before a regex scanner's resume point, so that ``\b`` and
# short lookbehinds see the text they would see in the whole answer.
_CONTEXT = 8
# Bound for built-in patterns when Python cannot tell a regex's width.
BUILTIN_MAX = 64


def check_severity(severity: object) -> str:
    if not isinstance(severity, str) or severity not in RANK:
        raise ValueError(f"l0: unknown severity {severity!r} (expected one of: {', '.join(SEVERITIES)})")
    return severity


def clip(text: str) -> str:
    return text if len(text) <= EXCERPT_MAX else text[:EXCERPT_MAX - 1] + "…"


def worst(violations: Iterable["Violation"]) -> str | None:
    """The most severe severity among ``violations`` (None when there are none)."""
    ranks = [RANK[v.severity] for v in violations]
    return SEVERITIES[max(ranks)] if ranks else None


@dataclass(frozen=True)
class Violation:
    """One problem found in a stream.

    ``start``/``end`` are char offsets into the whole stream text (``end``
    exclusive); ``excerpt`` is the offending text, at most 80 chars; ``final``
    is True when the end-of-stream check (``finish``) found it.
    """

    rule: str
    severity: str
    message: str
    start: int
    end: int
    excerpt: str = ""
    final: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class Rule:
    """A stateful check over one stream.

    Subclasses set their configuration, then call ``super().__init__`` (which
    resets), and implement ``_reset`` (assign *every* piece of per-stream
    state there: :meth:`fresh` is a shallow copy followed by ``reset``),
    ``_feed`` and ``_finish``, reporting through :meth:`_emit`.

    Chunks must be contiguous: ``start`` of a chunk is the length of the text
    fed before it.
    """

    name: str
    severity: str

    def __init__(self, name: str, severity: str) -> None:
        self.name = name
        self.severity = check_severity(severity)
        self.reset()

    def feed(self, text: str, start: int) -> list[Violation]:
        """Check the new chunk ``text`` whose first char is at ``start``; new violations."""
        out: list[Violation] = []
        if text:
            self._feed(text, start, out)
        return out

    def finish(self, total: str) -> list[Violation]:
        """End of stream; ``total`` is the whole text. New violations, marked ``final``."""
        out: list[Violation] = []
        self._finish(total, out)
        return [replace(v, final=True) for v in out]

    def reset(self) -> None:
        """Back to the empty-stream state."""
        self._seen: set = set()
        self._reset()

    def fresh(self) -> "Rule":
        """A reset copy with the same configuration."""
        twin = copy.copy(self)
        twin.reset()
        return twin

    def _reset(self) -> None:
        pass

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        pass

    def _finish(self, total: str, out: list[Violation]) -> None:
        pass

    def _emit(self, out: list[Violation], label: object, message: str, start: int, end: int, excerpt: str = "",
              rule: str | None = None, severity: str | None = None) -> None:
        """Report once per label (the de-duplication every rule relies on)."""
        if label in self._seen:
            return
        self._seen.add(label)
        out.append(Violation(rule or self.name, severity or self.severity, message, start, end, clip(excerpt)))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.severity}>"


class Guardrails:
    """A set of rules run together over one stream; keeps the offsets itself."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: list[Rule] = list(rules)
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise ValueError(f"l0: guardrails take Rule objects, got {rule!r}")
        self.reset()

    def fresh(self) -> "Guardrails":
        """An independent copy with reset state, same rules and severities."""
        return Guardrails(rule.fresh() for rule in self.rules)

    def reset(self) -> None:
        """Back to the empty-stream state (every rule too)."""
        for rule in self.rules:
            rule.reset()
        self._chunks: list[str] = []
        self._length = 0
        self.violations: list[Violation] = []  # every violation so far, in the order found
        self.finished = False

    def feed(self, text: str) -> list[Violation]:
        """Check the next chunk; returns only the violations it revealed."""
        if self.finished:
            raise ValueError("l0: guardrails fed after finish(); use fresh() for a new stream")
        if not text:
            return []
        start = self._length
        new: list[Violation] = []
        for rule in self.rules:
            new.extend(rule.feed(text, start))
        self._chunks.append(text)
        self._length += len(text)
        self.violations.extend(new)
        return new

    def finish(self) -> list[Violation]:
        """End-of-stream checks (once; a second call returns [])."""
        if self.finished:
            return []
        self.finished = True
        total = self.text
        new: list[Violation] = []
        for rule in self.rules:
            new.extend(rule.finish(total))
        self.violations.extend(new)
        return new

    @property
    def text(self) -> str:
        """The text fed so far (joined on demand; the join is kept)."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"<Guardrails {[r.name for r in self.rules]}>"


# ---------------------------------------------------------------- scanners

def match_width(pattern: re.Pattern, max_len: int) -> tuple[int, int]:
    """(shortest, longest) match of ``pattern``, the longest capped at ``max_len``.

    Uses the stdlib regex parser's own width computation when available (a
    private module, hence the guard); otherwise assumes (1, max_len).
    """
    try:
        try:
            from re import _parser as sre_parse  # Python >= 3.11
        except ImportError:  # pragma: no cover - Python 3.10
            import sre_parse  # type: ignore[no-redef]
        lo, hi = sre_parse.parse(pattern.pattern, pattern.flags).getwidth()
    except Exception:  # pragma: no cover - private API moved
        return (0 if pattern.fullmatch("") else 1), max_len
    return lo, min(hi, max_len)


class Scanner:
    """Finds a regex's matches in a stream exactly as in the whole text.

    Semantics: a match at position ``p`` is the regex matched at ``p`` over
    the view ``text[:p + width + 1]`` (``width`` = the longest match allowed),
    accepted when it is 1..width chars long; matches are scanned left to right,
    non-overlapping. A position is decided only once its whole view has
    arrived (or at the end of the stream), which is what makes the result
    independent of chunking. Holds for regexes whose lookarounds reach at
    most 1 char past a match and ``_CONTEXT`` chars before it; ``$``/``\\Z``
    (end of text) mean the end of the view.

    Cost per chunk: one search over at most ``width + 1 + _CONTEXT + len(chunk)``
    chars. Memory: that window.
    """

    __slots__ = ("pattern", "width", "first_only", "_buf", "_base", "_from")

    def __init__(self, pattern: re.Pattern, width: int, first_only: bool) -> None:
        self.pattern, self.width, self.first_only = pattern, width, first_only
        self._buf, self._base, self._from = "", 0, 0

    def feed(self, text: str) -> list[tuple[int, int, str]]:
        return self._scan(text, False)

    def flush(self) -> list[tuple[int, int, str]]:
        return self._scan("", True)

    def _scan(self, text: str, final: bool) -> list[tuple[int, int, str]]:
        window = self._buf + text
        base = self._base
        end = base + len(window)
        view = self.width + 1
        pat = self.pattern
        hits: list[tuple[int, int, str]] = []
        pos = self._from - base
        while True:
            m = pat.search(window, pos)
            if m is None or (not final and base + m.start() + view > end):
                # Every position before the last `view` chars has been seen
                # whole and holds no match; the rest waits for more text.
                resume = end if final else max(base + pos, end - view + 1)
                break
            q = m.start()
            mm = pat.match(window, q, q + view)
            if mm is not None and q < mm.end() <= q + self.width:
                hits.append((base + q, base + mm.end(), mm.group()))
                pos = mm.end()
                if self.first_only:
                    resume = base + pos
                    break
            else:
                pos = q + 1
        self._from = resume
        keep = max(base, resume - _CONTEXT)
        self._buf = window[keep - base:]
        self._base = keep
        return hits


class TailScanner:
    """Finds the matches of a *self-delimiting* regex (a match, once found, is
    never changed by later text, and matches cannot overlap) as soon as they
    are complete: the window is the unmatched tail (at most ``keep`` chars,
    the longest match minus one) plus the new chunk."""

    __slots__ = ("pattern", "keep", "_tail")

    def __init__(self, pattern: re.Pattern, keep: int) -> None:
        self.pattern, self.keep = pattern, keep
        self._tail = ""

    def feed(self, text: str, start: int) -> tuple[int, list[re.Match]]:
        """(offset of the window's first char, the new matches in the window)."""
        window = self._tail + text
        found = list(self.pattern.finditer(window))
        cut = max(found[-1].end() if found else 0, len(window) - self.keep)
        self._tail = window[cut:]
        return start - (len(window) - len(text)), found


def combine(spec: object, expand: Callable[[str], Guardrails], what: str, names: str) -> Guardrails:
    """``spec`` (a name, a Rule, Guardrails, or a list of them) as one
    Guardrails: names through ``expand``, a later rule replacing an earlier
    one of the same name in its place. Raises ValueError naming ``what``."""
    if isinstance(spec, Guardrails):
        return spec
    if isinstance(spec, (str, Rule)):
        spec = [spec]
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"l0: {what} must be {names}, a Rule, Guardrails or a list of them, got {spec!r}")
    rules: dict[str, Rule] = {}
    for item in spec:
        if isinstance(item, str):
            items = expand(item).rules
        elif isinstance(item, Rule):
            items = [item]
        elif isinstance(item, Guardrails):
            items = item.rules
        else:
            raise ValueError(f"l0: {what} list items must be Rules, {names}s or Guardrails, got {item!r}")
        for rule in items:
            rules[rule.name] = rule
    return Guardrails(rules.values())
