"""Drift monitors: exact violations, thresholds honoured, clean texts,
chunking invariance (hypothesis), argument checks."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l0.client.drift import (DRIFT_KINDS, as_monitors, format_collapse, hedging, meta_commentary, monitors, repetition,
                      tone_shift)
from l0.client.guardrails import Guardrails, Violation

WORDS = ("river mountain forest garden harbor bridge market village station library museum theatre kitchen "
         "window ladder candle mirror blue green quiet rapid gentle bright narrow steady careful simple robust "
         "modern ancient northern runs holds takes gives shows finds keeps moves turns builds").split()
CALM = "This is a calm and measured opening paragraph about the weather. "


def run(spec, text: str, size=None) -> list[Violation]:
    g = (spec if isinstance(spec, Guardrails) else Guardrails([spec])).fresh()
    found = []
    sizes = [size] if isinstance(size, int) else size
    i, k = 0, 0
    while i < len(text):
        step = len(text) if sizes is None else sizes[k % len(sizes)]
        found += g.feed(text[i:i + step])
        i += step
        k += 1
    return found + g.finish()


def spans(violations) -> list[tuple]:
    return [(v.rule, v.severity, v.start, v.end, v.final) for v in violations]


def key(violations) -> list[tuple]:
    return sorted(tuple(v.to_dict().values()) for v in violations)


# ---------------------------------------------------------------- repetition

def test_repetition_sentence():
    v = run(repetition(), "Hello there friend, how are you. " * 4)
    assert spans(v) == [("drift:repetition", "warning", 66, 97, False)]
    assert v[0].excerpt == "hello there friend how are you" and "occurred 3 times (first at offset 0" in v[0].message


def test_repetition_lines_are_normalised():
    text = "Line one has four words\nline ONE has four words!\nLine one, has four words\n"
    assert spans(run(repetition(), text)) == [("drift:repetition", "warning", 49, 73, False)]
    # Under min_words, or fewer repeats than asked: nothing.
    assert run(repetition(), "Short line\n" * 5) == []
    assert run(repetition(sentence_repeats=4), text) == []


def test_repetition_ngram_within_window():
    loop = "alpha beta gamma delta epsilon zeta eta theta iota kappa, " * 3
    v = run(repetition(), loop)
    assert spans(v) == [("drift:repetition", "warning", 116, 161, False)]
    assert "8-word sequence 'alpha beta gamma delta epsilon zeta eta theta' occurred 3 times" in v[0].message
    assert spans(run(repetition(n=3, ngram_repeats=2, window=10), "ab bc cd de ab bc cd")) == \
        [("drift:repetition", "warning", 12, 20, True)]     # the last word is confirmed at finish
    assert run(repetition(n=3, ngram_repeats=2, window=3), "ab bc cd de ab bc cd") == []   # out of the window
    # numbers and one-letter words are not words: a counting list that loops repeats itself
    assert run(repetition(), "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24") == []
    assert spans(run(repetition(n=2, ngram_repeats=3), "10. Pluto 11. Pluto 12. Pluto 13. Pluto")) == \
        [("drift:repetition", "warning", 24, 39, True)]
    spread = " ".join(f"w{i}" for i in range(400)) + " " + " ".join(f"w{i}" for i in range(8))
    assert run(repetition(), spread) == []


def test_repetition_reports_once_per_window():
    assert len(run(repetition(), "Yes. " * 200)) == 1
    assert len(run(repetition(window=50), "Yes. " * 200)) == 4   # words 9, 59, 109, 159


# ---------------------------------------------------------------- format collapse

def test_format_collapse_runs():
    v = run(format_collapse(), "ok " + "x" * 250)
    assert spans(v) == [("drift:format_collapse", "warning", 3, 203, False),
                        ("drift:format_collapse", "warning", 3, 53, False)]
    assert v[0].excerpt == "x" * 80 and v[1].excerpt == "x" * 50
    assert spans(run(format_collapse(no_space_run=10, char_run=5), "abc defghijklmn")) == \
        [("drift:format_collapse", "warning", 4, 14, False)]
    assert spans(run(format_collapse(char_run=5), "Yes\n\n\n\n\n\nno")) == \
        [("drift:format_collapse", "warning", 3, 8, False)]
    assert run(format_collapse(), "a" * 49 + " " + "abcdefghij" * 19) == []


def test_format_collapse_letter_share():
    text = "Words " * 80 + "x 1 2 3 4 5 6 7 8 9 " * 20
    v = run(format_collapse(), text)
    assert spans(v) == [("drift:format_collapse", "warning", 450, 650, False)]
    assert "letters are 17% of the 200 chars before offset 650, 83% before that" in v[0].message
    assert run(format_collapse(letter_drop=0.05), text) == []   # 5% is not under 5% of 83%
    assert run(format_collapse(min_chars=5000), text) == []


# ---------------------------------------------------------------- pattern flavours

def test_meta_commentary_first_hit():
    text = "Sure. As an AI language model I do not have opinions. As an AI, I also cannot."
    assert spans(run(meta_commentary(), text)) == [("drift:meta_commentary", "warning", 6, 29, False)]
    assert run(meta_commentary(severity="error"), text)[0].severity == "error"


def test_hedging_density():
    text = "I think it might be so. I believe it might be true."
    v = run(hedging(), text)
    assert spans(v) == [("drift:hedging", "warning", 0, 45, True)]
    assert v[0].excerpt == "I think … might be … I believe … might be"
    assert run(hedging(threshold=5), text) == []
    far = "I think so, and many other words come here. I believe so."
    assert run(hedging(threshold=2, window=20), far) == []
    assert len(run(hedging(threshold=2, window=60), far)) == 1


# ---------------------------------------------------------------- tone

def test_tone_shift():
    text = CALM * 4 + "THIS IS AMAZING!!! WOW!!! " * 10
    v = run(tone_shift(), text)
    assert spans(v) == [("drift:tone_shift", "warning", 200, 400, False)]
    assert "uppercase 0.02 -> 0.64" in v[0].message and "exclamation 0.00 -> 2.73" in v[0].message
    emoji = CALM * 4 + "Great 🎉🔥 yes " * 20
    v = run(tone_shift(), emoji)
    assert len(v) == 1 and "emoji 0.00 -> " in v[0].message
    assert run(tone_shift(emoji_delta=0.9, exclamation_delta=9, uppercase_delta=0.99), text + emoji) == []
    assert run(tone_shift(), CALM * 12) == []


# ---------------------------------------------------------------- together

CLEAN = [
    "The capital of France is Paris. It has many museums, including the Louvre. Its river is the Seine.",
    "Here is code:\n\n```python\ndef f(x):\n    return {'a': [x]}\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
    " ".join(" ".join(random.Random(i).sample(WORDS, 9)).capitalize() + "." for i in range(60)),
]


@pytest.mark.parametrize("text", CLEAN)
def test_clean_texts(text):
    for size in (None, 1, 5):
        assert run(monitors(), text, size) == []


def test_monitors():
    assert DRIFT_KINDS == ("repetition", "format_collapse", "meta_commentary", "hedging", "tone_shift")
    assert [r.name for r in monitors().rules] == [f"drift:{k}" for k in DRIFT_KINDS]
    assert [r.name for r in monitors("hedging", "repetition").rules] == ["drift:hedging", "drift:repetition"]
    assert all(r.severity == "warning" for r in monitors().rules)


def test_as_monitors():
    assert as_monitors(None) is None and as_monitors(False) is None
    assert [r.name for r in as_monitors(True).rules] == [f"drift:{k}" for k in DRIFT_KINDS]
    assert [r.name for r in as_monitors("hedging").rules] == ["drift:hedging"]
    g = monitors("tone_shift")
    assert as_monitors(g) is g
    mixed = as_monitors(["repetition", hedging(threshold=2), "hedging", repetition(n=4)])
    assert [r.name for r in mixed.rules] == ["drift:repetition", "drift:hedging"]
    assert mixed.rules[0].n == 4 and mixed.rules[1].threshold == 4
    for bad in ("nonsense", ["nonsense"], 3, {"kind": "hedging"}, [1.5]):
        with pytest.raises(ValueError, match="^l0: "):
            as_monitors(bad)


CORPUS = CLEAN + [
    "Hello there friend, how are you. " * 4,
    "alpha beta gamma delta epsilon zeta eta theta iota kappa, " * 3,
    "ok " + "x" * 250 + " fine " + "!" * 70,
    "Words " * 80 + "- 1 2 3 4 5 6 7 8 9 0 " * 20,
    "Sure. As an AI language model I do not have opinions.",
    "I think it might be so. I believe it might be true. I'm not sure it's possible that it is.",
    CALM * 4 + "THIS IS AMAZING!!! WOW!!! " * 10,
    CALM * 4 + "Great 🎉🔥 yes " * 20,
    "wörd " * 3 + "naïve café déjà vu again and again, " * 4 + "\r\n" * 60,
]


@settings(max_examples=150, deadline=None)
@given(text=st.sampled_from(CORPUS), sizes=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=30))
def test_chunking_invariance(text, sizes):
    assert key(run(monitors(), text, sizes)) == key(run(monitors(), text))


@pytest.mark.parametrize("make", [
    lambda: monitors("nope"), lambda: repetition(severity="meh"), lambda: repetition(n=0),
    lambda: repetition(ngram_repeats=1), lambda: repetition(window=-1), lambda: repetition(min_words=1.5),
    lambda: format_collapse(window=210), lambda: format_collapse(min_chars=200), lambda: format_collapse(char_run=1),
    lambda: format_collapse(letter_drop=0), lambda: format_collapse(every=0), lambda: hedging(threshold=0),
    lambda: hedging(window=True), lambda: tone_shift(window=199), lambda: tone_shift(uppercase_delta=-1),
    lambda: tone_shift(min_letters=0), lambda: meta_commentary(severity="x"),
])
def test_bad_arguments(make):
    with pytest.raises(ValueError, match="^l0: "):
        make()
