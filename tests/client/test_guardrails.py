"""Streaming guardrails: exact violations per rule, clean texts, chunking
invariance (hypothesis), bounded state, presets and argument checks."""
from __future__ import annotations

import re
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l0 import drift
from l0.client.guardrails import (PATTERN_CATEGORIES, PATTERN_SEVERITY, PRESETS, SEVERITIES, Guardrails, Rule, Violation,
                           as_guardrails, custom, json_structure, latex, markdown, patterns, preset, strict_json,
                           worst, zero_output)


def chunks(text: str, size: int | list[int] | None) -> list[str]:
    """``text`` cut into chunks: all at once (None), fixed size, or cycling sizes."""
    if size is None:
        return [text]
    sizes = [size] if isinstance(size, int) else size
    out, i, k = [], 0, 0
    while i < len(text):
        step = sizes[k % len(sizes)]
        out.append(text[i:i + step])
        i += step
        k += 1
    return out


def run(spec, text: str, size=None) -> list[Violation]:
    g = (spec if isinstance(spec, Guardrails) else Guardrails(spec if isinstance(spec, list) else [spec])).fresh()
    found = []
    for piece in chunks(text, size):
        found += g.feed(piece)
    return found + g.finish()


def key(violations) -> list[tuple]:
    return sorted(tuple(v.to_dict().values()) for v in violations)


def spans(violations) -> list[tuple]:
    return [(v.rule, v.severity, v.start, v.end, v.final) for v in violations]


def only(spec, text, size=None) -> Violation:
    found = run(spec, text, size)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- exact values

@pytest.mark.parametrize("text,start,end,final,words", [
    ('{"a": [1}', 8, 9, False, "does not close '['"),
    ('{"a": [1]} trailing', 11, 12, False, "text after the top-level"),
    ('[1, 2]\n\nExplanation', 8, 9, False, "text after"),
    ('{"a": [1, {"b": "x}"', 0, 20, True, "3 bracket(s) still open"),
    ('{"a": "unterminated', 0, 19, True, "inside a string"),
    ('{', 0, 1, True, "1 bracket(s)"),
    ('```json\n{"a": [1\n```\n', 17, 18, False, "fence closes"),
    ('```json\n{"a": 1}\n}\n```', 17, 18, False, "text after"),
])
def test_json_structure_violations(text, start, end, final, words):
    v = only(json_structure(), text)
    assert (v.rule, v.severity, v.start, v.end, v.final) == ("json", "error", start, end, final)
    assert words in v.message and v.message.startswith("json: ")


@pytest.mark.parametrize("text", [
    '{"a": "} ] { [", "b": [1, {"c": "\\"}"}]}', '  [ ]  ', '```json\n{"a": 1}\n```\nThis object has one key.',
    '```\n[1, 2]\n```', "[Note: prose in brackets] and more", "{name} is a template word", "Plain prose.",
    '"just a string"', "42"])
def test_json_structure_clean(text):
    assert run(json_structure(), text) == []


def test_json_require():
    v = only(json_structure(require=True), "Sure! {\"a\": 1}")
    assert (v.rule, v.start, v.end, v.excerpt, v.final) == ("json", 0, 1, "S", False)
    v = only(json_structure(require=True), "  ")
    assert (v.start, v.end, v.final) == (0, 2, True) and "no JSON value" in v.message
    assert run(json_structure(require=True), '\n```json\n{"a": 1}\n```') == []
    # With require, "[Note] ..." is taken as JSON (tokens are strict_json's business): text after it breaks it.
    assert spans(run(json_structure(require=True), "[Note] more")) == [("json", "error", 7, 8, False)]
    assert run(json_structure(), "[Note] more") == []


@pytest.mark.parametrize("text,start,words", [
    ('{"a": 1,}', 8, "Expecting property name"),
    ('{"a": 1} x', 9, "Extra data"),
    ('[1, 2', 5, "Expecting"),
    ('```json\n{"a": tru}\n```', 14, "Expecting"),
])
def test_strict_json(text, start, words):
    v = only(strict_json(), text)
    assert (v.rule, v.severity, v.start, v.final) == ("strict_json", "error", start, True)
    assert words in v.message and f"(char {start})" in v.message


def test_strict_json_clean():
    for text in ('{"a": [1, 2.5e3, null, true, "x\\u00e9"]}', '```json\n{"a": 1}\n```\nNice.', "Prose. {x}",
                 "[see above]", ""):
        assert run(strict_json(), text) == []


def test_markdown_fence():
    v = only(markdown(), "Text\n```python\nprint(1)\n")
    assert spans([v]) == [("markdown", "warning", 5, 8, True)]
    assert "line 2" in v.message
    v = only(markdown(), "````\n```\nstill code\n~~~~\n")   # only ```` or longer closes ````
    assert (v.start, v.end) == (0, 4)
    assert run(markdown(), "```js\nx\n```\n~~~\ny\n~~~~\n  ```\n```") == []


def test_markdown_table():
    text = "| a | b |\n|---|---|\n| 1 | 2 |\n| 1 | 2 | 3 |\n| 4 |\n"
    v = only(markdown(), text)
    assert spans([v]) == [("markdown", "warning", 30, 43, False)]
    assert v.excerpt == "| 1 | 2 | 3 |" and "line 4 has 3 cell(s)" in v.message and "(line 1) has 2" in v.message
    # A bad delimiter row counts; a second table is reported on its own.
    two = "| a | b |\n|---|---|---|\n\n| c |\n|---|\n| x | y |\n"
    assert [(v.start, v.end) for v in run(markdown(), two)] == [(10, 23), (37, 46)]
    # Escaped pipes are text; rows in code are not checked; a lone pipe line is no table.
    assert run(markdown(), "| a | b |\n|:-|-:|\n| x\\|y | 2 |\n```\n| 1 |\n```\n| not | a table\n") == []


def test_latex():
    v = run(latex(), r"\begin{align} x \end{equation}")
    assert spans(v) == [("latex", "warning", 16, 30, False), ("latex", "warning", 0, 13, True)]
    assert "does not match \\begin{align}" in v[0].message and "never closed (align)" in v[1].message
    v = only(latex(), r"x $$ y $$ z $$ w")
    assert spans([v]) == [("latex", "warning", 12, 14, True)]
    v = only(latex(), r"\begin{a}\begin{b} \end{a}")   # closes the outer one, inner abandoned
    assert (v.start, v.end, v.final) == (19, 26, False) and "\\begin{b}" in v.message
    v = only(latex(), r"\end{cases}")
    assert "without a \\begin{cases}" in v.message


def test_patterns_each_category():
    samples = {"meta_commentary": "Well, as a large language model I", "hedging": "So I think that works",
               "refusal": "I'm sorry, but I can't do it", "instruction_leak": "Sure: my system prompt tells",
               "placeholder": "Dear [your name], thanks", "special_tokens": "done<|im_end|> more text here"}
    assert set(samples) == set(PATTERN_CATEGORIES)
    for cat, text in samples.items():
        v = only(patterns(cat), text)
        assert v.rule == f"pattern:{cat}" and v.severity == PATTERN_SEVERITY[cat]
        assert text[v.start:v.end] == v.excerpt and v.excerpt in v.message


def test_patterns_offsets_once_per_category_and_final():
    text = "As an AI language model, I cannot assist with that. TODO: fix <|im_end|>"
    found = run(patterns(), text)
    assert spans(found) == [("pattern:meta_commentary", "warning", 0, 23, False),
                            ("pattern:refusal", "error", 25, 45, False),
                            ("pattern:placeholder", "error", 52, 56, True),
                            ("pattern:special_tokens", "error", 62, 72, True)]
    # Every occurrence after the first is the same category: one report per stream.
    loop = "I think so. " * 50 + "It might be."
    assert spans(run(patterns("hedging"), loop, 3)) == [("pattern:hedging", "warning", 0, 7, False)]
    # A match across a chunk boundary is found exactly once, at the same place.
    for size in (1, 2, 3, 5):
        assert spans(run(patterns("special_tokens"), "ab<|eot_id|>cd", size)) == \
            [("pattern:special_tokens", "error", 2, 12, True)]


@pytest.mark.parametrize("text", [
    "My to do list has todos; Todo apps help. TODOS are plural, TODO_LIST is a name.",
    "See [your profile](https://example.com) and [add](https://x.y).",
    "The <strong>bold</strong> word; instructions are here; a system message.",
    "She thinks it might rain; I know it will.",   # "might rain": no "might be"
])
def test_patterns_clean(text):
    assert run(patterns(), text) == []


def test_patterns_severity_and_extra():
    rule = patterns("hedging", "refusal")
    assert rule.name == "pattern:hedging,refusal" and rule.severity == "error"
    v = only(patterns("hedging", severity="fatal"), "I believe so")
    assert v.severity == "fatal"
    v = run(patterns(extra={"hedging": r"\bprobably\b", "brand": [r"\bacme\b"]}), "Acme probably wins")
    assert sorted(spans(v)) == [("pattern:brand", "error", 0, 4, False), ("pattern:hedging", "warning", 5, 13, True)]


def test_custom_honours_every_argument():
    v = only(custom(r"secret\d+", "sec"), "the secret42 is here")
    assert spans([v]) == [("custom:sec", "error", 4, 12, True)] and v.excerpt == "secret42"
    # severity and name
    v = only(custom("boom", "bang", severity="fatal"), "a boom b")
    assert (v.rule, v.severity) == ("custom:bang", "fatal")
    # flags, also added to a compiled pattern's own
    assert run(custom("secret", "s"), "SECRET") == []
    assert only(custom("secret", "s", flags=re.I), "SECRET").start == 0
    assert only(custom(re.compile("a b", re.I), "s", flags=re.X), "x AB").excerpt == "AB"
    assert run(custom(re.compile("a b", re.I), "s", flags=re.X), "A B") == []
    # max_len bounds the match: a longer match is not one
    assert only(custom(r"a\w*b", "ab", max_len=4), "xx a12b yy").excerpt == "a12b"
    assert run(custom(r"a\w*b", "ab", max_len=4), "xx a123b yy") == []
    assert only(custom(r"a.*b", "ab", max_len=6), "a1b2b34567b").excerpt == "a1b2b"
    # a custom rule reports its first match only, and another custom rule is another violation
    found = run([custom("x", "one"), custom("y", "two")], "x y x y")
    assert spans(found) == [("custom:one", "error", 0, 1, False), ("custom:two", "error", 2, 3, False)]


def test_custom_confirms_when_enough_text_followed():
    # A match is confirmed once its whole view (the regex's longest match + 1
    # char) has arrived, so that later text cannot change it.
    g = Guardrails([custom("needle", "n", max_len=10)])
    assert g.feed("a needle") == []
    found = g.feed(" and more text")
    assert spans(found) == [("custom:n", "error", 2, 8, False)]


def test_zero_output():
    for text in ("{}", "[]", '""', "[ ]", "{\n}", "0", "null", "false", "ok", "👍", "é"):
        assert run(zero_output(), text) == [], text
    for size in (None, 1):
        assert run(zero_output(), "{}", size) == []
    for text in ("", "  ...  ", "\n\n", "{", "-- !?", "[}"):
        v = only(zero_output(), text)
        assert spans([v]) == [("zero_output", "error", 0, len(text), True)]


# ---------------------------------------------------------------- clean texts

CLEAN = [
    "The capital of France is Paris. It has many museums, including the Louvre.\n",
    "Here is code:\n\n```python\ndef f(x):\n    return {'a': [x]}\n```\n\nDone.",
    '{"name": "Ada", "tags": ["x", "y"], "n": 0, "s": "brace } and [ in string \\" quote"}',
    '```json\n{"a": [1, 2, {"b": null}]}\n```\n',
    "| a | b |\n|:--|--:|\n| 1 | 2 |\n| `x\\|y` | 3 |\n\nAfter.",
    "\\begin{align}\n a &= b \\\\\n \\begin{cases} x \\end{cases}\n\\end{align}\nand $$x^2$$.",
    "My to do list has todos; Todo apps help. TODOS are plural, TODO_LIST is a name.",
    "0", "null", "[]", "{}", "false", '""',
    "[Note: this is prose.] Then more text.",
    "See [your profile](https://example.com) and [add](https://x.y).",
]


@pytest.mark.parametrize("text", CLEAN)
def test_clean_texts(text):
    everything = Guardrails(preset("strict").rules + drift.monitors().rules)
    for size in (None, 1, 7):
        assert run(everything, text, size) == []


# ---------------------------------------------------------------- chunking invariance

VIOLATING = [
    '{"a": [1}', '{"a": [1]} trailing', '{"a": [1, {"b": "x\\"}"', '```json\n{"a": [1\n```\n', '{"a": 1,}',
    '[1, 2] {"x": "a\\\\"} z', "Text\n```python\nprint(1)\n", "| a | b |\n|---|---|\n| 1 | 2 |\n| 1 | 2 | 3 |\n",
    r"\begin{align} x \end{equation} $$ y", r"\begin  {a}\begin{b} \end{a} \end{zz}",
    "As an AI language model, I cannot assist with that. TODO: fix <|im_end|>",
    "I'm sorry, but I can't. You are a helpful assistant. [insert date] lorem ipsum {{ name }} XXX-XXX [INST]",
    "  ...  ", "",
    "Hello there friend, how are you. " * 4,
    "alpha beta gamma delta epsilon zeta eta theta iota kappa, " * 3,
    "ok " + "x" * 250 + " and " + "=" * 70,
    "This is a normal sentence about ordinary things, number %d. " * 8 + "1 2 3 4 5 6 7 8 9 0 " * 15,
    "I think it might be so. I believe it might be true. I'm not sure. It's possible that I think so.",
    "A calm and measured opening about the weather in spring, with mild words. " * 3 + "WOW THIS ROCKS!!! " * 12,
    "Opening without emoji at all here, just words and more words to fill the space. " * 3 + "🎉🔥 yes " * 40,
]
CORPUS = CLEAN + VIOLATING


def everything() -> Guardrails:
    return Guardrails(preset("strict").rules + drift.monitors().rules)


@pytest.mark.parametrize("text", CORPUS)
def test_chunking_fixed_sizes(text):
    whole = key(run(everything(), text))
    for size in (1, 2, 3, 7, 64):
        assert key(run(everything(), text, size)) == whole


def test_violating_corpus_covers_every_rule():
    found = {v.rule for text in VIOLATING for v in run(everything(), text)}
    expected = {name for name, _ in PRESETS["strict"]} | {f"drift:{k}" for k in drift.DRIFT_KINDS}
    assert expected <= found, expected - found


@settings(max_examples=150, deadline=None)
@given(text=st.sampled_from(CORPUS), sizes=st.lists(st.integers(min_value=1, max_value=16), min_size=1, max_size=40))
def test_chunking_invariance_random(text, sizes):
    assert key(run(everything(), text, sizes)) == key(run(everything(), text))


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.sampled_from(["{", "}", "[", "]", '"', "\\", " ", "a", "1", ",", ":", "\n", "```", "`",
                                       "|", "---", "$$", "\\begin{x}", "\\end{x}", "\\end{y}", "TODO", "<s>",
                                       "I think ", "might be ", "!", "🎉", "AI "]), max_size=60),
       sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=20))
def test_chunking_invariance_generated(parts, sizes):
    text = "".join(parts)
    assert key(run(everything(), text, sizes)) == key(run(everything(), text))


def _largest_str(obj, seen=None) -> int:
    """The longest string held anywhere inside a rule's state."""
    seen = seen if seen is not None else set()
    if id(obj) in seen or isinstance(obj, re.Pattern):
        return 0
    seen.add(id(obj))
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return max([_largest_str(v, seen) for v in obj.values()] + [0])
    if isinstance(obj, (list, tuple, set, deque)):
        return max([_largest_str(v, seen) for v in obj] + [0])
    fields = dict(getattr(obj, "__dict__", {}))
    for slot in getattr(type(obj), "__slots__", ()):
        fields[slot] = getattr(obj, slot, None)
    return max([_largest_str(v, seen) for v in fields.values()] + [0])


def test_state_stays_bounded():
    # Incrementality is structural: after 60k chars, no rule holds more than a
    # bounded window of text (the markdown rule holds at most the current line).
    line = "Some words with a [link](http://x.y) and $x$ and TODOS, then a number 42.\n"
    g = everything()
    for i in range(0, 800 * len(line), 5):
        g.feed((line * 800)[i:i + 5])
    for rule in g.rules:
        assert _largest_str(rule) <= 300, rule


# ---------------------------------------------------------------- Guardrails, presets, arguments

def test_guardrails_feed_offsets_text_and_finish():
    g = Guardrails([patterns("special_tokens"), json_structure()])
    assert g.feed("ab") == [] and g.feed("c<s>") == []
    assert g.text == "abc<s>" and len(g) == 6
    g.feed(" then more words here, long enough to confirm it")
    assert spans(g.violations) == [("pattern:special_tokens", "error", 3, 6, False)]
    assert g.finish() == [] and g.finish() == []
    with pytest.raises(ValueError, match="^l0: "):
        g.feed("x")
    twin = g.fresh()
    assert twin.text == "" and twin.violations == [] and [r.name for r in twin.rules] == [r.name for r in g.rules]
    assert twin.rules[0] is not g.rules[0]


def test_fresh_copies_are_independent():
    spec = Guardrails([json_structure(), patterns("placeholder"), drift.repetition()])
    a, b = spec.fresh(), spec.fresh()
    a.feed('{"a": [1}')
    assert spans(a.violations) == [("json", "error", 8, 9, False)]
    assert b.feed('{"a": 1}') == [] and b.finish() == []
    rule = json_structure()
    rule.feed("{", 0)
    assert rule.fresh().finish("") == []


def test_violation_to_dict_and_worst():
    v = Violation("json", "error", "m", 1, 2, "x")
    assert v.to_dict() == {"rule": "json", "severity": "error", "message": "m", "start": 1, "end": 2,
                           "excerpt": "x", "final": False}
    assert worst([]) is None and worst([v, Violation("a", "warning", "", 0, 0)]) == "error"
    assert SEVERITIES == ("warning", "error", "fatal")


def test_excerpt_is_clipped():
    v = only(json_structure(), "[" * 100)
    assert len(v.excerpt) == 80


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_what_the_table_says(name):
    g = preset(name)
    assert [(r.name, r.severity) for r in g.rules] == PRESETS[name]


def test_as_guardrails():
    assert as_guardrails(None) is None
    assert [r.name for r in as_guardrails("minimal").rules] == [n for n, _ in PRESETS["minimal"]]
    g = Guardrails([latex()])
    assert as_guardrails(g) is g
    assert [r.name for r in as_guardrails(markdown()).rules] == ["markdown"]
    mixed = as_guardrails(["minimal", markdown("error"), custom("x", "y"), "minimal"])
    assert [(r.name, r.severity) for r in mixed.rules] == PRESETS["minimal"] + [("markdown", "error"),
                                                                                ("custom:y", "error")]
    over = as_guardrails(["recommended", markdown("error")])
    assert dict((r.name, r.severity) for r in over.rules)["markdown"] == "error"
    for bad in (42, {"rules": []}, ["minimal", 3], b"minimal", True):
        with pytest.raises(ValueError, match="^l0: "):
            as_guardrails(bad)


@pytest.mark.parametrize("make", [
    lambda: json_structure(severity="bad"), lambda: markdown("Error"), lambda: latex(None),
    lambda: zero_output("info"), lambda: strict_json(""), lambda: preset("nope"), lambda: preset(None),
    lambda: patterns("nope"), lambda: patterns("hedging", severity="loud"), lambda: patterns(extra={"x": 3}),
    lambda: patterns(extra={"x": "("}),
    lambda: custom("(", "x"), lambda: custom("a", "x", max_len=0), lambda: custom("a", "x", max_len="5"),
    lambda: custom("a", "x", max_len=True), lambda: custom("a*", "x"), lambda: custom("(?=a)", "x"),
    lambda: custom("abc", ""), lambda: custom("abcdef", "x", max_len=3), lambda: custom(b"a", "x"),
    lambda: custom(re.compile(b"a"), "x"), lambda: custom("a", "x", severity="nope"), lambda: custom(3, "x"),
    lambda: Guardrails([42]),
])
def test_bad_arguments(make):
    with pytest.raises(ValueError, match="^l0: "):
        make()


def test_rule_is_the_public_base():
    class Shout(Rule):
        def __init__(self):
            super().__init__("custom:shout", "warning")

        def _reset(self):
            self.count = 0

        def _feed(self, text, start, out):
            for i, c in enumerate(text):
                if c == "!":
                    self.count += 1
                    if self.count == 3:
                        self._emit(out, "bang", "three bangs", start + i, start + i + 1, c)

    assert spans(run(Shout(), "a!b!c!d!", 1)) == [("custom:shout", "warning", 5, 6, False)]
