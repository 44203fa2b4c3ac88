"""Streaming guardrails: rules that check a model's answer while it streams.

The answer arrives in small chunks. A :class:`Rule` keeps its own state
between chunks, so checking a chunk costs O(len(chunk)) plus a bounded window
(a regex's longest match, at most a few hundred characters), never a rescan
of the text so far. The only O(n) work allowed is once, at the end
(:meth:`Rule.finish`), e.g. ``json.loads`` of the whole answer.

Contracts every rule keeps (``tests/client/test_guardrails.py`` checks them):

* **Chunking does not matter.** The same text fed in 1-char chunks, 7-char
  chunks or all at once yields the same violations (same rule, severity,
  message, offsets, excerpt, ``final`` flag). Violations found by ``feed``
  may only come later with small chunks (a pattern is confirmed once enough
  text follows its start), never differently.
* **Each distinct violation is reported once** (per rule and label): a
  pattern category or a custom regex fires once per stream, not at every
  occurrence, so a looping model cannot flood the caller.
* Offsets are char offsets into the whole stream text; ``end`` is exclusive.

Severities (:data:`SEVERITIES`): ``warning`` is an event only; ``error`` asks
the caller to retry as a model failure; ``fatal`` asks it to stop, no retry.

Rules are specs: :meth:`Rule.fresh` / :meth:`Guardrails.fresh` give reset
copies, one per stream. Bad arguments raise ``ValueError("l0: ...")``.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Mapping

from l0.client.content import ContentScan

SEVERITIES = ("warning", "error", "fatal")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
EXCERPT_MAX = 80
# Characters kept before a regex scanner's resume point, so that ``\b`` and
# short lookbehinds see the text they would see in the whole answer.
_CONTEXT = 8
# Bound for built-in patterns when Python cannot tell a regex's width.
_BUILTIN_MAX = 64


def _check_severity(severity: object) -> str:
    if not isinstance(severity, str) or severity not in _RANK:
        raise ValueError(f"l0: unknown severity {severity!r} (expected one of: {', '.join(SEVERITIES)})")
    return severity


def _clip(text: str) -> str:
    return text if len(text) <= EXCERPT_MAX else text[:EXCERPT_MAX - 1] + "…"


def worst(violations: Iterable["Violation"]) -> str | None:
    """The most severe severity among ``violations`` (None when there are none)."""
    ranks = [_RANK[v.severity] for v in violations]
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
        self.severity = _check_severity(severity)
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
        out.append(Violation(rule or self.name, severity or self.severity, message, start, end, _clip(excerpt)))

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

def _width(pattern: re.Pattern, max_len: int) -> tuple[int, int]:
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


class _Scanner:
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


class _TailScanner:
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


# ---------------------------------------------------------------- JSON

_NON_WS = re.compile(r"\S")
_OUT_SPECIAL = re.compile(r'["{}\[\]]')
_OUT_SPECIAL_FENCED = re.compile(r'["{}\[\]`]')
_STR_SPECIAL = re.compile(r'["\\]')
_CLOSER = {"}": "{", "]": "["}
# After an opening bracket, the first non-blank char must be one a JSON value
# can continue with; "[Note: ..." or "{name}" is prose, not broken JSON.
_PLAUSIBLE = {"{": set('"}'), "[": set('{["-0123456789tfn]')}
_UNDECIDED, _JSON, _NOT_JSON = 0, 1, 2
_L_WS, _L_FENCE, _L_INFO, _L_WS2, _L_PROBE = range(5)


class _JsonLead:
    """Decides from the start of an answer whether it is a JSON document.

    JSON when, after leading whitespace and optionally a fence line (three or
    more backticks, info string empty or ``json``), the answer opens ``{`` or
    ``[`` and the next non-blank char can continue a JSON value (with
    ``require``, any char does). Fed char by char over the short lead only.
    """

    def __init__(self, require: bool) -> None:
        self.require = require
        self.state = _L_WS
        self.ticks = 0
        self.info: list[str] = []
        self.first = -1          # offset of the answer's first non-blank char
        self.first_char = ""
        self.open: tuple[str, int] | None = None  # the opening bracket and its offset
        self.fenced = False

    def feed(self, text: str, start: int) -> tuple[int, int]:
        """(decision, index in ``text`` where the decision was made)."""
        i, n = 0, len(text)
        while i < n:
            st = self.state
            if st in (_L_WS, _L_WS2, _L_PROBE):
                m = _NON_WS.search(text, i)
                if m is None:
                    return _UNDECIDED, n
                i = m.start()
                c = text[i]
                if self.first < 0:
                    self.first, self.first_char = start + i, c
                if st == _L_PROBE:
                    return (_JSON if self.require or c in _PLAUSIBLE[self.open[0]] else _NOT_JSON), i
                if c in "{[":
                    self.open, self.state = (c, start + i), _L_PROBE
                elif c == "`" and st == _L_WS:
                    self.state, self.ticks = _L_FENCE, 1
                else:
                    return _NOT_JSON, i
                i += 1
            elif st == _L_FENCE:
                if text[i] != "`":
                    if self.ticks < 3:
                        return _NOT_JSON, i
                    self.state = _L_INFO
                    continue
                self.ticks += 1
                i += 1
            else:  # _L_INFO: the fence's info string, up to the newline
                c = text[i]
                if c == "\n":
                    if "".join(self.info).strip().lower() not in ("", "json"):
                        return _NOT_JSON, i
                    self.fenced, self.state = True, _L_WS2
                elif len(self.info) >= 16:
                    return _NOT_JSON, i
                else:
                    self.info.append(c)
                i += 1
        return _UNDECIDED, n


_LEAD, _VALUE, _AFTER, _DONE = range(4)


class _JsonStructure(Rule):
    """Streaming JSON structure: brackets matched and balanced, nothing after
    the top-level value. See :func:`json_structure`."""

    def __init__(self, severity: str, require: bool) -> None:
        self.require = require
        super().__init__("json", severity)

    def _reset(self) -> None:
        self._lead = _JsonLead(self.require)
        self._phase = _LEAD
        self._stack: list[tuple[str, int]] = []
        self._in_str = False
        self._esc = False
        self._fenced = False

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        i = 0
        if self._phase == _LEAD:
            decision, i = self._lead.feed(text, start)
            if decision == _UNDECIDED:
                return
            if decision == _NOT_JSON:
                self._phase = _DONE
                if self.require:
                    self._not_json(out)
                return
            self._phase, self._stack, self._fenced = _VALUE, [self._lead.open], self._lead.fenced
        if self._phase == _VALUE:
            i = self._value(text, start, i, out)
        if self._phase == _AFTER and i < len(text):
            m = _NON_WS.search(text, i)
            if m is not None:
                self._phase = _DONE
                j = m.start()
                if not (self._fenced and text[j] == "`"):
                    self._emit(out, "garbage", f"json: text after the top-level JSON value at offset {start + j}",
                               start + j, start + j + 1, text[j])

    def _value(self, text: str, start: int, i: int, out: list[Violation]) -> int:
        """Track brackets from ``text[i]``; returns where the value ended (or len)."""
        n = len(text)
        stack = self._stack
        special = _OUT_SPECIAL_FENCED if self._fenced else _OUT_SPECIAL
        while i < n:
            if self._in_str:
                if self._esc:
                    self._esc = False
                    i += 1
                    continue
                m = _STR_SPECIAL.search(text, i)
                if m is None:
                    return n
                i = m.start()
                if text[i] == "\\":
                    self._esc = True
                else:
                    self._in_str = False
                i += 1
                continue
            m = special.search(text, i)
            if m is None:
                return n
            i = m.start()
            c = text[i]
            if c == '"':
                self._in_str = True
            elif c in "{[":
                stack.append((c, start + i))
            elif c == "`":  # a fenced answer's closing fence, with brackets still open
                self._phase = _DONE
                self._emit(out, "fence", f"json: the code fence closes at offset {start + i} with "
                           f"{len(stack)} bracket(s) still open (outermost {stack[0][0]!r} at {stack[0][1]})",
                           start + i, start + i + 1, c)
                return n
            else:
                opener, at = stack[-1]
                if _CLOSER[c] != opener:
                    # Structure is unknown from here on: report once and stop.
                    self._phase = _DONE
                    self._emit(out, "mismatch", f"json: {c!r} at offset {start + i} does not close {opener!r} "
                               f"opened at {at}", start + i, start + i + 1, c)
                    return n
                stack.pop()
                if not stack:
                    self._phase = _AFTER
                    return i + 1
            i += 1
        return n

    def _not_json(self, out: list[Violation]) -> None:
        lead = self._lead
        self._emit(out, "not_json", f"json: the answer does not start with a JSON object or array "
                   f"(found {lead.first_char!r} at offset {lead.first})", lead.first, lead.first + 1, lead.first_char)

    def _finish(self, total: str, out: list[Violation]) -> None:
        if self._phase == _LEAD:
            if self._lead.state == _L_PROBE:  # just "{" or "[": an incomplete document
                self._stack = [self._lead.open]
            elif self.require:
                self._emit(out, "not_json", "json: the answer has no JSON value", 0, len(total), total)
                return
            else:
                return
        elif self._phase != _VALUE:
            return
        opener, at = self._stack[0]
        where = ", inside a string" if self._in_str else ""
        self._emit(out, "incomplete", f"json: incomplete JSON: {len(self._stack)} bracket(s) still open at the end "
                   f"(outermost {opener!r} at offset {at}{where})", at, len(total), total[at:])


def json_structure(severity: str = "error", require: bool = False) -> Rule:
    """Streaming JSON structure, rule ``json``.

    Applies when the answer (after leading whitespace, optionally after a
    ```` ``` ````/```` ```json ```` fence line) opens with ``{`` or ``[`` and the
    next non-blank char can continue a JSON value (so ``[Note: ...]`` is
    prose). With ``require=True`` it always applies, and an answer that does not
    open an object or array is a violation (at its first char; at finish for an
    empty answer). Tracks a bracket stack with string/escape state.

    Violations: a closing bracket that does not match (then tracking stops);
    non-blank text after the top-level value closed; in a fenced answer, the
    closing fence while brackets are open (text after the closing fence is
    prose and not checked); at finish, unbalanced brackets (how many are open).
    Scalars and tokens between brackets are not validated: see :func:`strict_json`.
    """
    return _JsonStructure(severity, bool(require))


_DECODER = json.JSONDecoder()


class _StrictJson(Rule):
    def __init__(self, severity: str) -> None:
        super().__init__("strict_json", severity)

    def _finish(self, total: str, out: list[Violation]) -> None:
        lead = _JsonLead(require=False)
        decision, _ = lead.feed(total, 0)
        if decision == _NOT_JSON or (decision == _UNDECIDED and lead.state != _L_PROBE):
            return
        at = lead.open[1]
        try:
            _, end = _DECODER.raw_decode(total, at)
        except json.JSONDecodeError as exc:
            stop = min(exc.pos + 1, len(total))
            self._emit(out, "parse", f"strict_json: {exc}", exc.pos, stop, total[exc.pos:stop])
            return
        m = _NON_WS.search(total, end)
        if m is not None and not (lead.fenced and m.group() == "`"):
            j = m.start()
            line = total.count("\n", 0, j) + 1
            col = j - total.rfind("\n", 0, j)
            self._emit(out, "parse", f"strict_json: Extra data: line {line} column {col} (char {j})",
                       j, j + 1, m.group())


def strict_json(severity: str = "error") -> Rule:
    """At finish only, rule ``strict_json``: an answer that looks like JSON
    (the detection of :func:`json_structure`; a fenced answer's closing fence
    and what follows it are not part of the value) must parse with Python's
    JSON decoder. The message carries the decoder's error and position."""
    return _StrictJson(severity)


# ---------------------------------------------------------------- markdown

_FENCE = re.compile(r"( {0,3})(`{3,}|~{3,})(.*)")
_PIPE = re.compile(r"(?<!\\)\|")
_DELIM_CELL = re.compile(r"\s*:?-+:?\s*")


def _cells(row: str) -> list[str]:
    """Cells of a stripped table row that starts with '|'."""
    body = row[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return _PIPE.split(body)


class _Markdown(Rule):
    def __init__(self, severity: str) -> None:
        super().__init__("markdown", severity)

    def _reset(self) -> None:
        self._parts: list[str] = []      # the current, incomplete line
        self._line_start = 0
        self._line_no = 1
        self._fence: tuple[str, int, int, int] | None = None    # char, length, offset, line
        self._header: tuple[int, int] | None = None             # cell count, line
        self._table: tuple[int, int, int] | None = None         # header cells, header line, header offset

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        pos = 0
        while True:
            nl = text.find("\n", pos)
            if nl < 0:
                if pos < len(text):
                    self._parts.append(text[pos:])
                return
            self._parts.append(text[pos:nl])
            line = "".join(self._parts)
            self._parts = []
            self._line(line, out)
            self._line_start = start + nl + 1
            self._line_no += 1
            pos = nl + 1

    def _line(self, line: str, out: list[Violation]) -> None:
        if line.endswith("\r"):
            line = line[:-1]
        m = _FENCE.match(line)
        fence = self._fence
        if fence is not None:
            if m and m.group(2)[0] == fence[0] and len(m.group(2)) >= fence[1] and not m.group(3).strip():
                self._fence = None
            return
        if m and not (m.group(2)[0] == "`" and "`" in m.group(3)):
            at = self._line_start + len(m.group(1))
            self._fence = (m.group(2)[0], len(m.group(2)), at, self._line_no)
            self._header = self._table = None
            return
        row = line.strip()
        if not row.startswith("|"):
            self._header = self._table = None
            return
        cells = _cells(row)
        if self._table is not None:
            self._check_row(row, len(cells), line, out)
            return
        if self._header is not None and all(_DELIM_CELL.fullmatch(c) for c in cells):
            count, head_line = self._header
            self._table = (count, head_line, self._line_start)
            self._header = None
            self._check_row(row, len(cells), line, out)
            return
        self._header = (len(cells), self._line_no)

    def _check_row(self, row: str, count: int, line: str, out: list[Violation]) -> None:
        head, head_line, _ = self._table
        if count == head:
            return
        at = self._line_start + len(line) - len(line.lstrip())
        self._emit(out, ("table", head_line), f"markdown: table row at line {self._line_no} has {count} cell(s), "
                   f"its header (line {head_line}) has {head}", at, at + len(row), row)

    def _finish(self, total: str, out: list[Violation]) -> None:
        if self._parts:
            line = "".join(self._parts)
            self._parts = []
            self._line(line, out)
        if self._fence is not None:
            char, length, at, line_no = self._fence
            self._emit(out, "fence", f"markdown: code fence {char * length} opened at line {line_no} "
                       f"(offset {at}) is never closed", at, at + length, char * length)


def markdown(severity: str = "warning") -> Rule:
    """Markdown structure, rule ``markdown``, line by line (only the current
    incomplete line is buffered).

    * Code fences (up to 3 spaces, then 3+ backticks or tildes) must be closed
      by a fence line of the same char, at least as long, by the end.
    * Tables: a line starting with ``|`` followed by a delimiter row
      (``|---|:--:|``) opens a table that runs while lines start with ``|``;
      the delimiter and every body row must have the header's cell count
      (escaped ``\\|`` is not a separator). One violation per table, on its
      first inconsistent row. Nothing inside code fences is checked.
    """
    return _Markdown(severity)


# ---------------------------------------------------------------- LaTeX

_LATEX = re.compile(r"\\(begin|end)[ \t]{0,8}\{([A-Za-z@*]{1,40})\}|\$\$")
_LATEX_KEEP = 6 + 8 + 42 - 1   # the longest marker, minus one


class _Latex(Rule):
    def __init__(self, severity: str) -> None:
        super().__init__("latex", severity)

    def _reset(self) -> None:
        self._scan = _TailScanner(_LATEX, _LATEX_KEEP)
        self._stack: list[tuple[str, int, int]] = []   # env, start, end of its \begin
        self._display: int | None = None               # offset of an open $$

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        base, found = self._scan.feed(text, start)
        for m in found:
            at, stop = base + m.start(), base + m.end()
            kind, env = m.group(1), m.group(2)
            if kind is None:
                self._display = at if self._display is None else None
            elif kind == "begin":
                self._stack.append((env, at, stop))
            elif self._stack and self._stack[-1][0] == env:
                self._stack.pop()
            else:
                self._mismatch(env, at, stop, m.group(), out)

    def _mismatch(self, env: str, at: int, stop: int, marker: str, out: list[Violation]) -> None:
        names = [e for e, _, _ in self._stack]
        if env in names:
            # Closes an outer environment: the inner ones are abandoned.
            k = len(names) - 1 - names[::-1].index(env)
            inner, inner_at, _ = self._stack[-1]
            del self._stack[k:]
            msg = f"latex: \\end{{{env}}} at offset {at} closes \\begin{{{env}}} while \\begin{{{inner}}} " \
                  f"(offset {inner_at}) is still open"
        elif names:
            msg = f"latex: \\end{{{env}}} at offset {at} does not match \\begin{{{names[-1]}}} " \
                  f"opened at {self._stack[-1][1]}"
        else:
            msg = f"latex: \\end{{{env}}} at offset {at} without a \\begin{{{env}}}"
        self._emit(out, ("end", at), msg, at, stop, marker)

    def _finish(self, total: str, out: list[Violation]) -> None:
        if self._stack:
            env, at, stop = self._stack[0]
            names = ", ".join(e for e, _, _ in self._stack)
            self._emit(out, "unclosed", f"latex: {len(self._stack)} environment(s) never closed ({names}); "
                       f"the outermost \\begin{{{env}}} is at offset {at}", at, stop, total[at:stop])
        if self._display is not None:
            at = self._display
            self._emit(out, "display", f"latex: display math $$ opened at offset {at} is never closed",
                       at, at + 2, "$$")


def latex(severity: str = "warning") -> Rule:
    """LaTeX structure, rule ``latex``: ``\\begin{env}``/``\\end{env}`` must
    nest (a mismatched ``\\end`` is reported as soon as it arrives; it closes
    the matching outer environment when there is one, else it is ignored);
    at finish, environments still open and an odd ``$$`` (display math not
    closed). Markers split across chunks are found through a tail buffer of
    at most 55 chars. ``$$`` inside code is not told apart."""
    return _Latex(severity)


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


_COMPILED = {name: _compile_category(alts) for name, alts in PATTERN_CATEGORIES.items()}


class _Patterns(Rule):
    """Regex categories, each reported once per stream (its first match)."""

    def __init__(self, name: str, severity: str, entries: list[tuple[str, str, re.Pattern, int]]) -> None:
        self.entries = entries   # (violation rule name, severity, pattern, width)
        super().__init__(name, severity)

    def _reset(self) -> None:
        self._scanners = [_Scanner(pattern, width, first_only=True) for _, _, pattern, width in self.entries]

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
        _check_severity(severity)
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
            pattern = _COMPILED[name]
        lo, width = _width(pattern, _BUILTIN_MAX if not more else 256)
        sev = severity or PATTERN_SEVERITY.get(name, "error")
        entries.append((f"pattern:{name}", sev, pattern, width))
    rule_severity = severity or max((e[1] for e in entries), key=_RANK.__getitem__)
    return _Patterns("pattern:" + ",".join(names), rule_severity, entries)


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
    lo, width = _width(pattern, max_len)
    if lo == 0 or pattern.fullmatch("") is not None:
        raise ValueError(f"l0: custom regex {pattern.pattern!r} can match the empty string")
    if lo > max_len:
        raise ValueError(f"l0: custom regex {pattern.pattern!r} needs at least {lo} chars, more than max_len={max_len}")
    _check_severity(severity)
    return _Patterns(f"custom:{name}", severity, [(f"custom:{name}", severity, pattern, width)])


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


# ---------------------------------------------------------------- presets

# Rule name -> severity, per preset; preset() builds from this table.
PRESETS: dict[str, list[tuple[str, str]]] = {
    "minimal": [
        ("json", "error"), ("zero_output", "error"), ("pattern:special_tokens", "error"),
    ],
    "recommended": [
        ("json", "error"), ("zero_output", "error"), ("pattern:special_tokens", "error"),
        ("markdown", "warning"), ("latex", "warning"),
        ("pattern:placeholder", "error"), ("pattern:instruction_leak", "error"),
        ("pattern:meta_commentary", "warning"),
    ],
    "strict": [
        ("json", "error"), ("strict_json", "error"), ("zero_output", "error"),
        ("pattern:special_tokens", "error"), ("markdown", "error"), ("latex", "error"),
        ("pattern:placeholder", "error"), ("pattern:instruction_leak", "error"),
        ("pattern:refusal", "error"), ("pattern:meta_commentary", "error"), ("pattern:hedging", "warning"),
    ],
}
_BUILDERS = {"json": json_structure, "strict_json": strict_json, "zero_output": zero_output,
             "markdown": markdown, "latex": latex}


def _build(name: str, severity: str) -> Rule:
    if name.startswith("pattern:"):
        return patterns(name[len("pattern:"):], severity=severity)
    return _BUILDERS[name](severity=severity)


def preset(name: str) -> Guardrails:
    """Guardrails for a named preset: ``minimal``, ``recommended`` or ``strict``
    (the rules and severities of :data:`PRESETS`)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"l0: unknown guardrails preset {name!r} (expected one of: {', '.join(PRESETS)})")
    return Guardrails(_build(rule, severity) for rule, severity in PRESETS[name])


def as_guardrails(spec: object) -> Guardrails | None:
    """Normalise a user's guardrails setting.

    None -> None; a preset name -> :func:`preset`; a :class:`Guardrails` ->
    itself; a :class:`Rule` -> Guardrails of it; a list/tuple mixing Rules,
    preset names and Guardrails -> one Guardrails, where a later rule with the
    same name replaces an earlier one in its place (``["recommended",
    markdown("error")]`` raises markdown to error). The result is a spec:
    callers take ``.fresh()`` per stream.
    """
    if spec is None:
        return None
    return combine(spec, preset, "guardrails", "a preset name")


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
