"""``l0.client.consensus``: agreement between texts, JSON objects and models,
over values and over ops run together (``consensus_of``), and
``choices_of``."""
from __future__ import annotations

import dataclasses
import json

import pytest

from l0.client.chunks import choices_of
from l0.client.consensus import Consensus, ConsensusFailed, consensus, consensus_of, normalize_text
from test_race import Op, Stream, chat, run


# --------------------------------------------------------------------------- consensus: text

def test_text_majority_agreement_and_dissent():
    answers = ["Paris", "Lyon", "paris.", "Marseille", "  PARIS "]
    c = consensus(answers)
    assert isinstance(c, Consensus)
    assert c.value == "Paris" and c.agreement == 0.6 and c.ok and c.strategy == "majority"
    assert c.votes == {"paris": 3, "lyon": 1, "marseille": 1}
    assert c.dissent == [(1, "Lyon"), (3, "Marseille")]
    assert c.answers == answers and c.indexes == [0, 1, 2, 3, 4] and c.fields == {} and c.conflicts == {}
    json.dumps(c.to_dict())


def test_text_normalisation():
    assert consensus(["Paris.", "paris"]).agreement == 1.0
    assert normalize_text("  Hello \n  World!? ") == "hello world"
    assert normalize_text("ＰＡＲＩＳ") == "paris"       # NFKC folds full-width letters
    assert normalize_text("3.14") == "3.14"
    c = consensus(["Paris.", "paris", "PARIS"], normalize=str.strip)
    assert c.agreement == pytest.approx(1 / 3) and c.value == "Paris."


def test_text_threshold_and_vote():
    c = consensus(["a", "a", "a", "b", "c"], threshold=0.7)
    assert not c.ok and c.value == "a" and c.agreement == 0.6
    assert consensus(["a", "a", "a", "b", "c"], threshold=0.6).ok


def test_unanimous_fail_raises_with_the_result():
    with pytest.raises(ConsensusFailed) as info:
        consensus(["yes", "Yes!", "no"], strategy="unanimous", resolve="fail")
    r = info.value.result
    assert r.value == "yes" and r.agreement == pytest.approx(2 / 3) and not r.ok
    assert r.dissent == [(2, "no")]
    c = consensus(["yes", "Yes!"], strategy="unanimous", threshold=0.0)
    assert c.ok and c.agreement == 1.0


def test_weighted():
    c = consensus(["a", "b", "b"], strategy="weighted", weights=[3, 1, 1])
    assert c.value == "a" and c.agreement == 0.6 and c.ok and c.votes == {"a": 3, "b": 2}
    c = consensus(["a", "b", "b"], strategy="weighted", weights=[0, 1, 1])
    assert c.value == "b" and c.agreement == 1.0 and c.dissent == [(0, "a")]


def test_best_with_and_without_score():
    answers = ["red", "blue", "blue", "bluish"]
    c = consensus(answers, strategy="best")
    assert c.value == "blue" and c.agreement == 0.5 and c.ok           # 1 and 2 tie: index 1
    assert c.dissent == [(0, "red"), (3, "bluish")]
    c = consensus(answers, strategy="best", score=len, threshold=0.5)
    assert c.value == "bluish" and c.agreement == 0.25 and not c.ok


def test_ties_go_to_the_lowest_index():
    c = consensus(["b", "a"])
    assert c.value == "b" and c.agreement == 0.5 and c.ok
    c = consensus([{"k": 2}, {"k": 1}, {"k": 1}, {"k": 2}])
    assert c.value == {"k": 2} and c.fields["k"].dissent == [1, 2]


def test_non_text_whole_answers_compare_as_json():
    c = consensus([4, 4.0, "4", [1, "A"], [1, "a"]])
    assert c.value == 4 and c.agreement == 0.4 and c.votes == {"4": 2, '"4"': 1, '[1,"a"]': 2}


# --------------------------------------------------------------------------- consensus: objects

OBJS = [{"city": "Paris", "pop": 2.1, "tags": ["a", "b"]},
        {"city": "paris.", "pop": 2.1, "tags": ["A", "b"]},
        {"city": "Lyon", "pop": 2.1},
        {"city": "Paris", "pop": 0.5, "tags": ["a", "b"], "extra": 1}]


def test_objects_field_by_field():
    c = consensus(OBJS)
    assert c.value == {"city": "Paris", "pop": 2.1, "tags": ["a", "b"]}
    assert c.ok and c.agreement == 0.75
    f = c.fields
    assert [f[k].agreement for k in ("city", "pop", "tags", "extra")] == [0.75, 0.75, 0.75, 0.75]
    assert f["city"].votes == {'"paris"': 3, '"lyon"': 1} and f["city"].dissent == [2]
    assert f["pop"].dissent == [3] and f["tags"].dissent == [2]
    assert f["tags"].votes == {'["a","b"]': 3, "<missing>": 1}
    assert f["extra"].missing and f["extra"].value is None and f["extra"].votes == {"<missing>": 3, "1": 1}
    assert c.votes["extra"] == {"<missing>": 3, "1": 1}
    assert [i for i, _ in c.dissent] == [2, 3] and c.conflicts == {}
    json.dumps(c.to_dict())


def test_objects_merge_lists_conflicts():
    c = consensus(OBJS, threshold=0.8, resolve="merge")
    assert not c.ok and c.value == {"city": "Paris", "pop": 2.1, "tags": ["a", "b"]}
    assert c.conflicts == {"city": ["Paris", "Lyon"], "pop": [2.1, 0.5], "tags": [["a", "b"]], "extra": [1]}
    assert consensus(OBJS, threshold=0.8, resolve="vote").conflicts == {}
    with pytest.raises(ConsensusFailed) as info:
        consensus(OBJS, threshold=0.8, resolve="fail")
    assert info.value.result.agreement == 0.75


def test_objects_partial_conflicts_and_mean_agreement():
    answers = [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]
    c = consensus(answers, resolve="merge")
    assert c.fields["a"].agreement == 1.0 and c.fields["b"].agreement == pytest.approx(1 / 3)
    assert c.agreement == pytest.approx(2 / 3) and not c.ok
    assert c.value == {"a": 1, "b": "x"} and c.conflicts == {"b": ["x", "y", "z"]}


def test_objects_unanimous_and_weighted():
    same = [{"a": 1, "b": "X"}, {"b": "x ", "a": 1.0}]
    assert consensus(same, strategy="unanimous").ok
    c = consensus([{"a": 1}, {"a": 2}, {"a": 2}], strategy="weighted", weights=[2, 0.5, 0.5])
    assert c.value == {"a": 1} and c.fields["a"].agreement == pytest.approx(2 / 3)


def test_objects_best():
    answers = [{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 9, "b": 9}]
    c = consensus(answers, strategy="best")
    assert c.value == {"a": 1, "b": 2} and c.agreement == 0.5
    assert c.fields["a"].agreement == 0.75 and c.fields["b"].agreement == 0.5
    c = consensus(answers, strategy="best", score=lambda d: d["a"])
    assert c.value == {"a": 9, "b": 9} and c.agreement == 0.25 and not c.ok


def test_pydantic_models_and_schema_and_dataclasses():
    from pydantic import BaseModel

    class City(BaseModel):
        city: str
        pop: float

    answers = [City(city="Paris", pop=2), City(city="paris", pop=2.0), City(city="Rome", pop=3)]
    c = consensus(answers, schema=City)
    assert isinstance(c.value, City) and c.value == City(city="Paris", pop=2.0)
    assert c.fields["city"].agreement == pytest.approx(2 / 3)
    assert c.to_dict()["value"] == {"city": "Paris", "pop": 2.0}

    @dataclasses.dataclass
    class P:
        x: int
        y: str

    c = consensus([P(1, "a"), P(1, "b"), P(2, "a")])
    assert c.value == {"x": 1, "y": "a"} and c.dissent == [(1, P(1, "b")), (2, P(2, "a"))]


@pytest.mark.parametrize("values,kw,match", [
    ([], {}, "at least one"),
    (["a"], {"strategy": "mode"}, "strategy"),
    (["a"], {"resolve": "guess"}, "resolve"),
    (["a"], {"threshold": 1.5}, "threshold"),
    (["a"], {"threshold": -0.1}, "threshold"),
    (["a", "b"], {"strategy": "weighted"}, "needs weights"),
    (["a", "b"], {"strategy": "weighted", "weights": [1]}, "1 weights for 2"),
    (["a", "b"], {"strategy": "weighted", "weights": [1, -1]}, ">= 0"),
    (["a", "b"], {"strategy": "weighted", "weights": [0, 0]}, "all zero"),
    (["a", "b"], {"weights": [1, 1]}, "only used"),
    (["a", "b"], {"score": len}, "only used"),
    (["a", {"a": 1}], {}, "all objects"),
    (["a"], {"schema": dict}, "schema"),
])
def test_consensus_validation(values, kw, match):
    with pytest.raises(ValueError, match="l0: .*" + match):
        consensus(values, **kw)


# --------------------------------------------------------------------------- consensus_of, choices_of

def completion(*texts, chat_kind=True):
    if chat_kind:
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                   for i, t in enumerate(texts)]
        return {"object": "chat.completion", "choices": choices[::-1]}
    return {"object": "text_completion", "choices": [{"index": i, "text": t} for i, t in enumerate(texts)]}


def test_consensus_of_runs_ops_and_skips_failures():
    boom = ConnectionError("down")
    ops = [Op("Paris"), Op(Stream([chat("Pa"), chat("ris.")])), Op(exc=boom), Op("Rome"),
           Op(completion("paris", "Rome"))]
    c = run(consensus_of(ops, concurrency=2))
    assert c.value == "Paris" and c.agreement == 0.75 and c.failed == {2: boom}
    assert c.indexes == [0, 1, 3, 4] and c.dissent == [(3, "Rome")]
    assert c.to_dict()["failed"] == {"2": "ConnectionError: down"}


def test_consensus_of_weights_follow_the_ops():
    ops = [Op("a"), Op(exc=ValueError()), Op("b"), Op("b")]
    c = run(consensus_of(ops, strategy="weighted", weights=[5, 100, 1, 1]))
    assert c.value == "a" and c.agreement == pytest.approx(5 / 7) and list(c.failed) == [1]


def test_consensus_of_all_failed():
    with pytest.raises(ConsensusFailed) as info:
        run(consensus_of([Op(exc=ValueError("x")), Op(exc=KeyError("y"))]))
    assert sorted(info.value.failed) == [0, 1] and info.value.result is None
    with pytest.raises(ValueError, match="l0: "):
        run(consensus_of([Op("a")], strategy="weighted", weights=[1, 2]))


def test_choices_of():
    assert choices_of(completion("a", "b", "c")) == ["a", "b", "c"]
    assert choices_of(completion("x", "y", chat_kind=False)) == ["x", "y"]
    from openai.types.chat import ChatCompletion
    sdk = ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 1, "message": {"role": "assistant", "content": "two"}, "finish_reason": "stop"},
                    {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "tool_calls"}]})
    assert choices_of(sdk) == ["", "two"]
    assert consensus(choices_of(completion("4", "4.", "5"))).value == "4"
