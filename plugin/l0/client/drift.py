"""Drift monitors: signs that an answer degrades while it streams.

Same :class:`~l0.client.guardrails.Rule` interface and contracts as the guardrails
(incremental, O(new text) per chunk plus bounded windows, chunking-invariant
results, each violation reported once), default severity ``warning``, rule
names ``drift:<kind>`` for the kinds in :data:`DRIFT_KINDS`. Each monitor
reports at most once per stream (repetition: at most once per ``window``
words), so a degenerate answer raises one event, not a flood.

Checks that compare windows (:func:`format_collapse`'s letter share,
:func:`tone_shift`) evaluate at fixed checkpoints, every ``every`` chars of
the stream, which is what keeps them independent of chunking.
"""
from __future__ import annotations

import re
from collections import deque

from l0.client.guardrails.framework import (BUILTIN_MAX, EXCERPT_MAX, Guardrails, Rule, Scanner, Violation, combine,
                                            match_width)
from l0.client.guardrails.patterns import CATEGORY_PATTERNS, PatternRule

DRIFT_KINDS = ("repetition", "format_collapse", "meta_commentary", "hedging", "tone_shift")

# Words (long runs cut into 64-char pieces, so a partial word held between
# chunks stays bounded), line ends, and blanks right after a sentence end.
_TOKENS = re.compile(r"\w{1,64}|\n|(?<=[.!?])\s")
_WORD_MAX = 64


def _positive(name: str, value: object, kind: type = int) -> None:
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool) and value > 0
    if not ok:
        raise ValueError(f"l0: {name} must be a positive {'number' if kind is float else 'int'}, got {value!r}")


def _windowed(name: str, window: int, every: int) -> None:
    _positive("every", every)
    _positive(name, window)
    if window % every:
        raise ValueError(f"l0: {name}={window} must be a multiple of every={every}")


def _checkpoints(text: str, start: int, every: int):
    """Split a chunk at the stream's checkpoints (multiples of ``every``):
    yields (piece, checkpoint offset at the piece's end, or None)."""
    i, end = 0, start + len(text)
    nxt = (start // every + 1) * every
    while nxt <= end:
        yield text[i:nxt - start], nxt
        i = nxt - start
        nxt += every
    if i < len(text):
        yield text[i:], None


# ---------------------------------------------------------------- repetition

class _Repetition(Rule):
    def __init__(self, severity: str, n: int, ngram_repeats: int, window: int, sentence_repeats: int,
                 min_words: int) -> None:
        for name, value in (("n", n), ("ngram_repeats", ngram_repeats), ("window", window),
                            ("sentence_repeats", sentence_repeats), ("min_words", min_words)):
            _positive(name, value)
        if ngram_repeats < 2 or sentence_repeats < 2:
            raise ValueError("l0: repeats must be at least 2")
        self.n, self.ngram_repeats, self.window = n, ngram_repeats, window
        self.sentence_repeats, self.min_words = sentence_repeats, min_words
        super().__init__("drift:repetition", severity)

    def _reset(self) -> None:
        self._carry = ""           # a word cut by the chunk's end, not yet processed
        self._prev = ""            # the last char fed, for the sentence-end lookbehind
        self._words = 0            # words so far
        self._sentence: list[str] = []
        self._sentence_at = (0, 0)
        self._sentences: dict[int, list[int]] = {}      # hash of words -> [count, first offset]
        self._recent: deque = deque(maxlen=self.n)     # (word, start, end) of the last n words
        self._grams: dict[int, list[int]] = {}          # hash of an n-gram -> word indices seen in the window
        self._prune_at = self.window
        self._quiet_until = 0      # no report before this word index (one report per window)

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        if self._carry:
            window, pos = self._carry + text, 0
        else:
            window, pos = self._prev + text, len(self._prev)
        self._prev = text[-1]
        self._tokens(window, start - (len(window) - len(text)), pos, False, out)

    def _tokens(self, window: str, base: int, pos: int, final: bool, out: list[Violation]) -> None:
        self._carry = ""
        n = len(window)
        for m in _TOKENS.finditer(window, pos):
            tok = m.group()
            if tok[0].isspace():
                self._sentence_end(out)
                continue
            s, e = m.span()
            if e == n and not final and len(tok) < _WORD_MAX:
                self._carry = tok   # the word may go on in the next chunk
                return
            if tok.isdigit() or len(tok) == 1:
                # numbers are not words here: a list looping as "11. Pluto 12.
                # Pluto ..." repeats itself (seen on SmolLM2) though no two of its
                # n-grams are equal, while a list of numbers is no repetition; nor are
                # one-letter words ("1 x 7 = 7, 2 x 6 = 12")
                continue
            self._word(tok.lower(), base + s, base + e, out)

    def _word(self, word: str, start: int, end: int, out: list[Violation]) -> None:
        idx = self._words
        self._words += 1
        if not self._sentence:
            self._sentence_at = (start, end)
        self._sentence.append(word)
        self._sentence_at = (self._sentence_at[0], end)
        recent = self._recent
        recent.append((word, start, end))
        if len(recent) < self.n:
            return
        key = hash(tuple(w for w, _, _ in recent))
        seen = self._grams.get(key)
        if seen is None:
            self._grams[key] = [idx]
        else:
            seen = [i for i in seen if i > idx - self.window]
            seen.append(idx)
            self._grams[key] = seen
            if len(seen) >= self.ngram_repeats and idx >= self._quiet_until:
                phrase = " ".join(w for w, _, _ in recent)
                self._quiet_until = idx + self.window
                self._emit(out, ("ngram", idx), f"drift:repetition: the {self.n}-word sequence {phrase!r} occurred "
                           f"{len(seen)} times in the last {self.window} words (latest at offset {recent[0][1]})",
                           recent[0][1], end, phrase)
        if idx >= self._prune_at:   # drop n-grams that left the window: memory stays O(window)
            self._grams = {k: v for k, v in self._grams.items() if v[-1] > idx - self.window}
            self._prune_at = idx + self.window

    def _sentence_end(self, out: list[Violation]) -> None:
        words, self._sentence = self._sentence, []
        if len(words) < self.min_words:
            return
        key = hash(tuple(words))
        rec = self._sentences.get(key)
        start, end = self._sentence_at
        if rec is None:
            self._sentences[key] = [1, start]
            return
        rec[0] += 1
        idx = self._words - 1
        if rec[0] >= self.sentence_repeats and idx >= self._quiet_until:
            self._quiet_until = idx + self.window
            text = " ".join(words)
            self._emit(out, ("sentence", start), f"drift:repetition: the sentence {text[:60]!r} occurred {rec[0]} "
                       f"times (first at offset {rec[1]}, now at {start})", start, end, text)

    def _finish(self, total: str, out: list[Violation]) -> None:
        if self._carry:
            self._tokens(self._carry, len(total) - len(self._carry), 0, True, out)
        self._sentence_end(out)


def repetition(severity: str = "warning", n: int = 8, ngram_repeats: int = 3, window: int = 300,
               sentence_repeats: int = 3, min_words: int = 4) -> Rule:
    """The answer repeats itself, rule ``drift:repetition``.

    Words are ``\\w+`` runs, lowercased, numbers and one-letter words left out (a counting list
    that loops, "11. Pluto 12. Pluto", repeats itself; "1, 2, 3" does not).
    Fires when

    * a sentence or line (split at line ends and at blanks after ``.!?``;
      normalised to its words, so case, punctuation and spacing do not
      matter; at least ``min_words`` words) occurs ``sentence_repeats`` times
      in the answer (default 3), or
    * a sequence of ``n`` words (default 8) occurs ``ngram_repeats`` times
      (default 3) within the last ``window`` words (default 300).

    The span is the latest occurrence. At most one report per ``window``
    words. O(1) per word (rolling n-gram hashes); memory: the window's
    n-grams and one counter per distinct sentence.
    """
    return _Repetition(severity, n, ngram_repeats, window, sentence_repeats, min_words)


# ---------------------------------------------------------------- format collapse

_LEAD_NON_BLANK = re.compile(r"\S*")
_TRAIL_NON_BLANK = re.compile(r"\S*\Z")
_LETTER = re.compile(r"[^\W\d_]")


class _FormatCollapse(Rule):
    def __init__(self, severity: str, no_space_run: int, char_run: int, min_chars: int, window: int,
                 letter_drop: float, every: int) -> None:
        _positive("no_space_run", no_space_run)
        _positive("char_run", char_run)
        _positive("letter_drop", letter_drop, float)
        _windowed("window", window, every)
        if char_run < 2:
            raise ValueError("l0: char_run must be at least 2")
        if min_chars <= window:
            raise ValueError(f"l0: min_chars ({min_chars}) must exceed window ({window})")
        self.no_space_run, self.char_run, self.min_chars = no_space_run, char_run, min_chars
        self.window, self.letter_drop, self.every = window, letter_drop, every
        self._long_run = re.compile(r"\S{%d}" % no_space_run)
        self._same_run = re.compile(r"(.)\1{%d}" % (char_run - 1), re.DOTALL)
        super().__init__("drift:format_collapse", severity)

    def _reset(self) -> None:
        self._ns_start, self._ns_len, self._ns_head = 0, 0, ""   # the current run without blanks (head: excerpt)
        self._ch, self._ch_start, self._ch_len = "", 0, 0  # the current run of one char
        self._letters = 0
        self._marks: deque = deque(maxlen=self.window // self.every + 1)   # letters before each checkpoint
        self._tail = ""            # the last EXCERPT_MAX chars, for the letter-share excerpt

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        if "no_space" not in self._seen:
            self._blank_runs(text, start, out)
        if "char_run" not in self._seen:
            self._char_runs(text, start, out)
        if "letters" not in self._seen:
            self._letter_share(text, start, out)

    def _blank_runs(self, text: str, start: int, out: list[Violation]) -> None:
        lead = _LEAD_NON_BLANK.match(text).end()
        if lead:
            if not self._ns_len:
                self._ns_start, self._ns_head = start, ""
            if len(self._ns_head) < EXCERPT_MAX:
                self._ns_head += text[:min(lead, EXCERPT_MAX - len(self._ns_head))]
            self._ns_len += lead
            if self._ns_len >= self.no_space_run:
                return self._report_blank(self._ns_start, self._ns_head, out)
        if lead < len(text):   # a blank ends that run; runs inside the chunk, then the trailing one
            m = self._long_run.search(text, lead)
            if m is not None:
                return self._report_blank(start + m.start(), m.group()[:EXCERPT_MAX], out)
            t = _TRAIL_NON_BLANK.search(text, lead).start()
            self._ns_start, self._ns_len, self._ns_head = start + t, len(text) - t, text[t:t + EXCERPT_MAX]

    def _report_blank(self, at: int, head: str, out: list[Violation]) -> None:
        self._emit(out, "no_space", f"drift:format_collapse: {self.no_space_run} chars without a blank from "
                   f"offset {at}", at, at + self.no_space_run, head[:self.no_space_run])

    def _char_runs(self, text: str, start: int, out: list[Violation]) -> None:
        first = text[0]
        lead = len(text) - len(text.lstrip(first))
        if first == self._ch:
            self._ch_len += lead
        else:
            self._ch, self._ch_start, self._ch_len = first, start, lead
        if self._ch_len >= self.char_run:
            return self._report_char(self._ch_start, first, out)
        if lead < len(text):
            m = self._same_run.search(text, lead)
            if m is not None:
                return self._report_char(start + m.start(), m.group(1), out)
            last = text[-1]
            trail = len(text) - len(text.rstrip(last))
            self._ch, self._ch_start, self._ch_len = last, start + len(text) - trail, trail

    def _report_char(self, at: int, char: str, out: list[Violation]) -> None:
        self._emit(out, "char_run", f"drift:format_collapse: {char!r} repeated {self.char_run}+ times from "
                   f"offset {at}", at, at + self.char_run, char * self.char_run)

    def _letter_share(self, text: str, start: int, out: list[Violation]) -> None:
        for piece, mark in _checkpoints(text, start, self.every):
            self._letters += len(_LETTER.findall(piece))
            self._tail = (self._tail + piece)[-EXCERPT_MAX:]
            if mark is None:
                continue
            self._marks.append(self._letters)
            if mark < self.min_chars or len(self._marks) < self._marks.maxlen:
                continue
            before = self._marks[0]
            recent = (self._letters - before) / self.window
            earlier = before / (mark - self.window)
            if recent < self.letter_drop * earlier:
                at = mark - self.window
                self._emit(out, "letters", f"drift:format_collapse: letters are {recent:.0%} of the "
                           f"{self.window} chars before offset {mark}, {earlier:.0%} before that", at, mark,
                           self._tail)
                return


def format_collapse(severity: str = "warning", no_space_run: int = 200, char_run: int = 50, min_chars: int = 400,
                    window: int = 200, letter_drop: float = 0.3, every: int = 50) -> Rule:
    """The output's form degenerates, rule ``drift:format_collapse``. Fires
    (once per stream for each of the three signs) on:

    * ``no_space_run`` (200) consecutive chars without whitespace (span: the
      run's first ``no_space_run`` chars). Long URLs or minified JSON can do it
      legitimately: it is a warning.
    * the same char ``char_run`` (50) times in a row, whitespace included
      (span: the first ``char_run`` of them);
    * letter share collapse: at each checkpoint ``p`` (multiples of
      ``every``, 50) once ``p >= min_chars`` (400), the share of letters in
      the last ``window`` (200) chars, ``text[p-window:p]``, is below
      ``letter_drop`` (0.3) times the share of letters in everything before
      it, ``text[:p-window]`` (span: that window).
    """
    return _FormatCollapse(severity, no_space_run, char_run, min_chars, window, letter_drop, every)


# ---------------------------------------------------------------- pattern flavours

def meta_commentary(severity: str = "warning") -> Rule:
    """The model talks about itself ("As an AI language model..."), rule
    ``drift:meta_commentary``: the ``meta_commentary`` patterns of
    :data:`~l0.client.guardrails.PATTERN_CATEGORIES`, on the first hit."""
    pattern = CATEGORY_PATTERNS["meta_commentary"]
    return PatternRule("drift:meta_commentary", severity,
                     [("drift:meta_commentary", severity, pattern, match_width(pattern, BUILTIN_MAX)[1])])


class _Hedging(Rule):
    def __init__(self, severity: str, threshold: int, window: int) -> None:
        _positive("threshold", threshold)
        _positive("window", window)
        self.threshold, self.window = threshold, window
        self._pattern = CATEGORY_PATTERNS["hedging"]
        self._pattern_width = match_width(self._pattern, BUILTIN_MAX)[1]
        super().__init__("drift:hedging", severity)

    def _reset(self) -> None:
        self._scan = Scanner(self._pattern, self._pattern_width, first_only=False)
        self._hits: deque = deque()   # (start, text) of the hedges in the window

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        if not self._seen:
            self._count(self._scan.feed(text), out)

    def _finish(self, total: str, out: list[Violation]) -> None:
        if not self._seen:
            self._count(self._scan.flush(), out)

    def _count(self, found: list[tuple[int, int, str]], out: list[Violation]) -> None:
        hits = self._hits
        for at, stop, match in found:
            while hits and hits[0][0] < stop - self.window:
                hits.popleft()
            hits.append((at, match))
            if len(hits) >= self.threshold:
                first = hits[0][0]
                self._emit(out, "density", f"drift:hedging: {len(hits)} hedges in the {stop - first} chars from "
                           f"offset {first} (threshold {self.threshold} within {self.window} chars)",
                           first, stop, " … ".join(m for _, m in hits))
                return


def hedging(severity: str = "warning", threshold: int = 4, window: int = 600) -> Rule:
    """Hedge density, rule ``drift:hedging``: ``threshold`` (4) matches of
    the ``hedging`` patterns ("I think", "might be", ...) starting within
    ``window`` chars (600, about 100 words) of the latest one's end. Once."""
    return _Hedging(severity, threshold, window)


# ---------------------------------------------------------------- tone

_SENTENCE_END = re.compile(r"[.!?]+")
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]")


def _style(text: str) -> dict:
    letters = len(_LETTER.findall(text))
    upper = sum(map(str.isupper, text))
    visible = len(text) - sum(map(str.isspace, text))
    return {"letters": letters,
            "uppercase": upper / letters if letters else 0.0,
            "exclamation": text.count("!") / max(1, len(_SENTENCE_END.findall(text))),
            "emoji": len(_EMOJI.findall(text)) / visible if visible else 0.0}


class _ToneShift(Rule):
    def __init__(self, severity: str, window: int, every: int, uppercase_delta: float, exclamation_delta: float,
                 emoji_delta: float, min_letters: int) -> None:
        _windowed("window", window, every)
        for name, value in (("uppercase_delta", uppercase_delta), ("exclamation_delta", exclamation_delta),
                            ("emoji_delta", emoji_delta)):
            _positive(name, value, float)
        _positive("min_letters", min_letters)
        self.window, self.every = window, every
        self.deltas = {"uppercase": uppercase_delta, "exclamation": exclamation_delta, "emoji": emoji_delta}
        self.min_letters = min_letters
        super().__init__("drift:tone_shift", severity)

    def _reset(self) -> None:
        self._recent = ""            # the last `window` chars, as of the last checkpoint
        self._pending: list[str] = []
        self._opening: dict | None = None
        self._code = False           # a code fence in the opening: its style is code, not tone

    def _feed(self, text: str, start: int, out: list[Violation]) -> None:
        if self._seen:
            return
        for piece, mark in _checkpoints(text, start, self.every):
            self._pending.append(piece)
            if mark is None:
                continue
            self._recent = (self._recent + "".join(self._pending))[-self.window:]
            self._pending = []
            if mark == self.window:
                self._opening = _style(self._recent)
                self._code = self._code or "```" in self._recent
            elif mark >= 2 * self.window and self._compare(mark, out):
                return

    def _compare(self, mark: int, out: list[Violation]) -> bool:
        if self._code or "```" in self._recent:
            return False  # code (SQL in capitals, say) next to prose is not a change of tone
        old, new = self._opening, _style(self._recent)
        moved = []
        for feature, delta in self.deltas.items():
            if feature == "uppercase" and min(old["letters"], new["letters"]) < self.min_letters:
                continue
            if abs(new[feature] - old[feature]) >= delta:
                moved.append(f"{feature} {old[feature]:.2f} -> {new[feature]:.2f}")
        if not moved:
            return False
        at = mark - self.window
        self._emit(out, "tone", f"drift:tone_shift: the {self.window} chars before offset {mark} differ from the "
                   f"opening: {', '.join(moved)}", at, mark, self._recent)
        return True


def tone_shift(severity: str = "warning", window: int = 200, every: int = 50, uppercase_delta: float = 0.3,
               exclamation_delta: float = 1.0, emoji_delta: float = 0.05, min_letters: int = 20) -> Rule:
    """The style drifts from the opening, rule ``drift:tone_shift``.

    The opening is the first ``window`` (200) chars. At each checkpoint ``p``
    (multiples of ``every``, 50) with ``p >= 2 * window``, the recent window
    ``text[p-window:p]`` is compared with the opening on:

    * uppercase ratio (uppercase letters / letters), only when both windows
      have ``min_letters`` (20) letters: fires at an absolute difference
      ``>= uppercase_delta`` (0.3);
    * exclamation marks per sentence (``!`` count / runs of ``.!?``, at least
      1): ``>= exclamation_delta`` (1.0);
    * emoji ratio (chars in U+1F000-U+1FAFF, U+2600-U+27BF / non-blank
      chars): ``>= emoji_delta`` (0.05).

    Either direction counts. Once per stream; span: the recent window. No
    comparison when either window holds a code fence: code's style (SQL in
    capitals) is not the answer's tone (seen on SmolLM2: a false positive).
    """
    return _ToneShift(severity, window, every, uppercase_delta, exclamation_delta, emoji_delta, min_letters)


# ---------------------------------------------------------------- all together

_MONITORS = {"repetition": repetition, "format_collapse": format_collapse, "meta_commentary": meta_commentary,
             "hedging": hedging, "tone_shift": tone_shift}


def monitors(*kinds: str) -> Guardrails:
    """Guardrails with the drift monitors of ``kinds`` (default: all of
    :data:`DRIFT_KINDS`), each with its default thresholds and severity."""
    for kind in kinds:
        if kind not in _MONITORS:
            raise ValueError(f"l0: unknown drift monitor {kind!r} (expected one of: {', '.join(DRIFT_KINDS)})")
    return Guardrails(_MONITORS[kind]() for kind in (kinds or DRIFT_KINDS))


def as_monitors(spec: object) -> Guardrails | None:
    """Normalise a user's drift setting (the counterpart of
    :func:`l0.client.guardrails.as_guardrails`).

    None or False -> None; True -> :func:`monitors` (all kinds); a kind name
    -> that monitor; a :class:`Guardrails` -> itself; a :class:`Rule` ->
    Guardrails of it; a list/tuple mixing kind names, Rules and Guardrails ->
    one Guardrails, a later rule with the same name replacing an earlier one
    in its place. The result is a spec: callers take ``.fresh()`` per stream.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return monitors()
    return combine(spec, monitors, "drift", "a drift kind")


__all__ = ["DRIFT_KINDS", "as_monitors", "repetition", "format_collapse", "meta_commentary", "hedging",
           "tone_shift", "monitors"]
