"""Format rules: JSON structure (streaming), strict JSON (at the end),
Markdown fences and tables, LaTeX environments."""
from __future__ import annotations

import json
import re

from l0.client.guardrails.framework import Rule, TailScanner, Violation

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
        self._scan = TailScanner(_LATEX, _LATEX_KEEP)
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
