"""Text rules: the built-in pattern categories (special tokens,
placeholders, instruction leaks, refusals, meta commentary, hedging), a
caller's own regexes (:func:`custom`), and zero output."""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from l0.client.content import ContentScan
from l0.client.guardrails.framework import BUILTIN_MAX, RANK, Rule, Scanner, Violation, check_severity, match_width

# ---------------------------------------------------------------- patterns

_APOS = "['’]"
# Regex alternatives per category. Case-insensitive unless marked (?-i:...).
# Word boundaries everywhere, so "TODO" does not fire in "TODOS"/"TODO_LIST"
# and "todos"/"to do" never fire (TODO is matched in capitals only).
PATTERN_CATEGORIES: dict[str, tuple[str, ...]] = {
    "meta_commentary": (
        r"\bas an? (?:ai|artificial intelligence)(?: language)? model\b",
        r"\bas a (?:large )?language model\b",
        r"\bas an ai\b",
        rf"\bi(?: am|{_APOS}m) (?:just |only )?an ai\b",
        rf"\bi(?: am|{_APOS}m) (?:just |only )?a (?:chatbot|language model|virtual assistant)\b",
        r"\bas an? (?:chatbot|virtual assistant)\b",
    ),
    "hedging": (
        r"\bi think\b",
        r"\bi believe\b",
        rf"\bit(?:{_APOS}s| is) possible that\b",
        r"\bmight be\b",
        rf"\bi(?: am|{_APOS}m) not (?:entirely |completely |totally )?(?:sure|certain)\b",
    ),
    "refusal": (
        rf"\bi (?:can{_APOS}?t|cannot|can not) (?:help|assist)(?: you)? with\b",
        rf"\bi (?:can{_APOS}?t|cannot) assist\b",
        rf"\bi{_APOS}m sorry,? but i (?:can{_APOS}?t|cannot|won{_APOS}t)\b",
        rf"\bi(?: am|{_APOS}m) unable to\b",
        rf"\bi won{_APOS}?t be able to\b",
        rf"\bi (?:don{_APOS}?t|do not) have the (?:capability|ability|means) to\b",
        rf"\bi{_APOS}m afraid i (?:can{_APOS}?t|cannot)\b",
    ),
    "instruction_leak": (
        r"\bmy system prompt\b",
        r"\bsystem prompt\s{0,3}:",
        r"\bmy (?:system )?instructions (?:are|say)\b",
        r"\byou are a helpful assistant\b",
        r"\bthe system (?:message|prompt) (?:says|said|is)\b",
    ),
    "placeholder": (
        r"\[(?:insert|enter|add)\b[^\[\]\n]{0,40}\](?!\()",   # not a markdown link "[add](url)"
        r"\[your [^\[\]\n]{1,30}\](?!\()",
        # a form field in brackets: [Client Name], [Date], [Company Address]
        r"(?-i:\[(?:[A-Z][a-z]+ ){0,3}(?:Name|Date|Time|Location|Address|Company|Title|Position|Email|Phone"
        r"|Number|City|Amount)\](?!\())",
        r"\blorem ipsum\b",
        r"(?-i:\bTODO\b)",
        r"<placeholder>",
        r"\{\{\s{0,3}\w{1,30}\s{0,3}\}\}",
        r"(?-i:\bX{3}-X{3,4}\b)",
    ),
    "special_tokens": (
        r"(?-i:<\|(?:im_start|im_end|im_sep|endoftext|eot_id|begin_of_text|end_of_text|start_header_id"
        r"|end_header_id|assistant|user|system|end)\|>)",
        r"(?-i:</s>|<s>|\[/?INST\])",
    ),
}
PATTERN_SEVERITY: dict[str, str] = {
    "special_tokens": "error", "placeholder": "error", "instruction_leak": "error", "refusal": "error",
    "meta_commentary": "warning", "hedging": "warning",
}


def _compile_category(alternatives: Iterable[str]) -> re.Pattern:
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)


CATEGORY_PATTERNS = {name: _compile_category(alts) for name, alts in PATTERN_CATEGORIES.items()}


class PatternRule(Rule):
    """Regex categories, each reported once per stream (its first match)."""

    def __init__(self, name: str, severity: str, entries: list[tuple[str, str, re.Pattern, int]]) -> None:
        self.entries = entries   # (violation rule name, severity, pattern, width)
        super().__init__(name, severity)

    def _reset(self) -> None:
        self._scanners = [Scanner(pattern, width, first_only=True) for _, _, pattern, width in self.entries]

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        self._report([s.feed(text) if s is not None else [] for s in self._scanners], out)

    def _finish(self, total: str, out: list[Violation]) -> None:
        self._report([s.flush() if s is not None else [] for s in self._scanners], out)

    def _report(self, found: list[list[tuple[int, int, str]]], out: list[Violation]) -> None:
        for k, hits in enumerate(found):
            if not hits:
                continue
            rule, severity, pattern, _ = self.entries[k]
            at, stop, match = hits[0]
            self._scanners[k] = None   # reported once: this category is done
            self._emit(out, rule, f"{rule}: {match!r} at offset {at}", at, stop, match, rule=rule, severity=severity)


def patterns(*categories: str, severity: str | None = None,
             extra: Mapping[str, str | Iterable[str]] | None = None) -> Rule:
    """Known bad phrases, one violation per category per stream, rule names
    ``pattern:<category>``; categories from :data:`PATTERN_CATEGORIES`
    (none given: all of them).

    ``severity``: one severity for every category; None takes each
    category's default from :data:`PATTERN_SEVERITY` (the returned Rule's own
    ``severity`` is then the most severe of them). ``extra``: ``{category:
    regex or regexes}`` added to a built-in category (which is then checked
    even if not named) or forming a new one (default severity ``error``).
    Matches spanning chunks are found once; a match is confirmed once the
    pattern's longest possible match length of text has followed its start.
    """
    extra = dict(extra or {})
    names = list(categories) or (list(PATTERN_CATEGORIES) if not extra else [])
    for name in names:
        if name not in PATTERN_CATEGORIES:
            raise ValueError(f"l0: unknown pattern category {name!r} (expected one of: "
                             f"{', '.join(PATTERN_CATEGORIES)})")
    names += [name for name in extra if name not in names]
    if not names:
        raise ValueError("l0: patterns() needs at least one category")
    if severity is not None:
        check_severity(severity)
    entries = []
    for name in names:
        more = extra.get(name, ())
        more = [more] if isinstance(more, str) else list(more) if isinstance(more, (list, tuple)) else [more]
        for source in more:
            if not isinstance(source, str):
                raise ValueError(f"l0: extra patterns for {name!r} must be regex strings, got {source!r}")
        if more:
            pattern = _compile_user(PATTERN_CATEGORIES.get(name, ()) + tuple(more), re.IGNORECASE,
                                    f"extra pattern for {name!r}")
        else:
            pattern = CATEGORY_PATTERNS[name]
        lo, width = match_width(pattern, BUILTIN_MAX if not more else 256)
        sev = severity or PATTERN_SEVERITY.get(name, "error")
        entries.append((f"pattern:{name}", sev, pattern, width))
    rule_severity = severity or max((e[1] for e in entries), key=RANK.__getitem__)
    return PatternRule("pattern:" + ",".join(names), rule_severity, entries)


def _compile_user(alternatives: Iterable[str], flags: int, what: str) -> re.Pattern:
    source = "|".join(f"(?:{a})" for a in alternatives)
    try:
        return re.compile(source, flags)
    except re.error as exc:
        raise ValueError(f"l0: {what} does not compile: {exc}") from None


def custom(regex: str | re.Pattern, name: str, severity: str = "error", max_len: int = 256, flags: int = 0) -> Rule:
    """A user regex, rule ``custom:<name>``, reported once per stream (its
    first match) with ``severity``.

    ``flags`` are ``re`` flags, added to a compiled pattern's own. ``max_len``
    bounds the match window: a match is the regex matched over at most
    ``max_len + 1`` chars from its start and must be at most ``max_len`` long
    (the regex's own longest match, when Python can tell, tightens it, which
    also shortens the wait before a match is confirmed). A regex that can
    match the empty string, or never in ``max_len`` chars, is refused.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"l0: custom rule needs a non-empty name, got {name!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"l0: max_len must be a positive int, got {max_len!r}")
    if not isinstance(flags, int) or isinstance(flags, bool):
        raise ValueError(f"l0: flags must be re flags (an int), got {flags!r}")
    if isinstance(regex, re.Pattern):
        if not isinstance(regex.pattern, str):
            raise ValueError("l0: custom regex must be a str pattern, not bytes")
        try:
            pattern = re.compile(regex.pattern, regex.flags | flags) if flags else regex
        except re.error as exc:
            raise ValueError(f"l0: custom regex {regex.pattern!r} does not compile with flags {flags}: {exc}") from None
    elif isinstance(regex, str):
        try:
            pattern = re.compile(regex, flags)
        except re.error as exc:
            raise ValueError(f"l0: custom regex {regex!r} does not compile: {exc}") from None
    else:
        raise ValueError(f"l0: custom regex must be a str or compiled pattern, got {regex!r}")
    lo, width = match_width(pattern, max_len)
    if lo == 0 or pattern.fullmatch("") is not None:
        raise ValueError(f"l0: custom regex {pattern.pattern!r} can match the empty string")
    if lo > max_len:
        raise ValueError(f"l0: custom regex {pattern.pattern!r} needs at least {lo} chars, more than max_len={max_len}")
    check_severity(severity)
    return PatternRule(f"custom:{name}", severity, [(f"custom:{name}", severity, pattern, width)])


# ---------------------------------------------------------------- zero output

class _ZeroOutput(Rule):
    def __init__(self, severity: str) -> None:
        super().__init__("zero_output", severity)

    def _reset(self) -> None:
        self._scan = ContentScan()

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        self._scan.feed(text)   # stops at the first content char: a few chars of a real answer

    def _finish(self, total: str, out: list[Violation]) -> None:
        if not self._scan.found:
            what = "empty" if not total else f"{len(total)} chars of whitespace/punctuation only"
            self._emit(out, "empty", f"zero_output: the answer has no content ({what})", 0, len(total), total)


def zero_output(severity: str = "error") -> Rule:
    """At finish, rule ``zero_output``: the answer has no real content, i.e.
    nothing but whitespace and punctuation. Content is defined once, in
    :mod:`l0.client.content` (the session's own zero-output guard uses it too):
    letters, digits and emoji, and the empty JSON values ``{}``, ``[]`` and
    ``""`` (also with blanks inside); ``0``, ``null``, ``false`` are letters
    and digits. Incremental: a flag, set by the first content char."""
    return _ZeroOutput(severity)
