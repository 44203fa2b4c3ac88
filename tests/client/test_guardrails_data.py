"""Guardrails and drift monitors on SmolLM2's recorded answers (tests/data):
quiet on the answers labelled clean, firing on the labelled ones, and the
repetition monitor on the runaway answers. The answers are real model
output (recorded with L0 off by build_labelled_set.py / build_json_set.py);
content_labels.json says which finished answers a rule should flag."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from l0 import drift, guardrails as g

DATA = Path(__file__).resolve().parents[1] / "data"
ANSWERS = [json.loads(line) for name in ("smollm2_labelled.jsonl", "smollm2_holdout.jsonl", "smollm2_json.jsonl")
           for line in (DATA / name).read_text().splitlines() if line.strip()]
LABELS = {k: v for k, v in json.loads((DATA / "content_labels.json").read_text()).items() if not k.startswith("_")}
ENDED = [r for r in ANSWERS if r["label"] in ("finished", "clean")]
RUNAWAY = [r for r in ANSWERS if r["label"] == "runaway"]


def fired(text: str, chunk: int = 5) -> set[str]:
    """Rules of the strict preset and every drift monitor that fire on
    ``text`` fed in ``chunk``-character pieces."""
    rails = g.Guardrails(g.preset("strict").rules + drift.monitors().rules)
    found = []
    for i in range(0, len(text), chunk):
        found += rails.feed(text[i:i + chunk])
    return {v.rule for v in found + rails.finish()}


def test_the_sets_are_what_the_labels_say():
    assert len(ENDED) == 90 and len(RUNAWAY) == 84
    assert set(LABELS) <= {r["id"] for r in ENDED} and len(LABELS) == 17


@pytest.mark.parametrize("answer", [r for r in ENDED if r["id"] not in LABELS], ids=lambda r: r["id"])
def test_no_rule_fires_on_a_clean_answer(answer):
    assert fired(answer["text"]) == set()


@pytest.mark.parametrize("answer", [r for r in ENDED if r["id"] in LABELS], ids=lambda r: r["id"])
def test_the_labelled_answers_get_exactly_their_rules(answer):
    assert fired(answer["text"]) == set(LABELS[answer["id"]]["rules"])


def test_the_drift_monitors_flag_the_runaway_answers():
    """83 of the 84 runaway answers: 68 repeat an 8-word sequence or a
    sentence three times, the rest collapse into character loops ("1.1.1.1",
    emoji, blank lines) or shift tone ("S, S, S"). The one missed (h28)
    counts on, "128. 20 / 129. 20": numbers only, which the word monitor
    leaves out on purpose (lists of numbers are not repetition)."""
    drifted = {r["id"]: {x for x in fired(r["text"]) if x.startswith("drift:")} for r in RUNAWAY}
    assert sum("drift:repetition" in d for d in drifted.values()) == 68
    assert [k for k, d in drifted.items() if not d] == ["h28"]


def test_incomplete_json_in_the_runaway_json_answers():
    """Every runaway JSON answer was cut at the budget mid-JSON: the JSON
    rules say so at the end, and only at the end."""
    json_runaway = [r for r in RUNAWAY if r["id"].startswith("j")]
    assert len(json_runaway) == 46
    for r in json_runaway:
        rails = g.Guardrails([g.json_structure(), g.strict_json()])
        during = rails.feed(r["text"])
        end = rails.finish()
        assert during == [] and {v.rule for v in end} == {"json", "strict_json"} and all(v.final for v in end)
