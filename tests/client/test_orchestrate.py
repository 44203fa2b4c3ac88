"""``l0.client.orchestrate``: race (hedging, winners, losers closed), parallel, pipe
and consensus, over in-process async streams. Sleeps only order events
(0.01 s against 0.5 s and more); no durations are asserted."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from l0.client import events as ev
from l0.client import orchestrate as orc
from l0.client.orchestrate import (Consensus, ConsensusFailed, EmptyStream, RaceFailed, Rejected, choices_of, consensus,
                            consensus_of, normalize_text, parallel, pipe, race)

ROLE = {"object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}


def chat(text="", finish=None):
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}


def run(coro, limit: float = 10.0):
    return asyncio.run(asyncio.wait_for(coro, limit))


class Stream:
    """An async stream of ``items``: ``first`` s before the first, ``gap`` s
    before each of the others; ``fail`` (an exception) raised after ``fail_after``
    items. ``close()`` records that it was called."""

    def __init__(self, items, first=0.0, gap=0.0, fail=None, fail_after=0):
        self.items, self.first, self.gap = list(items), first, gap
        self.fail, self.fail_after = fail, fail_after
        self.pos, self.closed, self.cancelled = 0, False, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.fail is not None and self.pos == self.fail_after:
            raise self.fail
        if self.pos >= len(self.items):
            raise StopAsyncIteration
        try:
            await asyncio.sleep(self.first if self.pos == 0 else self.gap)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        item = self.items[self.pos]
        self.pos += 1
        return item

    async def close(self):
        self.closed = True


class Op:
    """A zero-argument async op returning ``result`` (a Stream or a value)
    after ``delay`` s, or raising ``exc``; counts its calls."""

    def __init__(self, result=None, delay=0.0, exc=None):
        self.result, self.delay, self.exc, self.calls = result, delay, exc, 0

    async def __call__(self):
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.exc is not None:
            raise self.exc
        return self.result


def types(events):
    return [(e.type, e.index) for e in events]


# --------------------------------------------------------------------------- race

def test_race_without_hedge_the_first_token_wins_and_losers_are_closed():
    s0, s1, s2 = Stream(["slow"], first=0.5), Stream(["fa", "st"], first=0.01), Stream(["mid"], first=0.3)
    events = []

    async def go():
        r = await race([Op(s0), Op(s1), Op(s2)], on_event=events.append)
        return r, await r.text()

    r, text = run(go())
    assert r.index == 1 and text == "fast" and r.value is None and r.stream is s1
    assert r.started == [0, 1, 2] and r.cancelled == [0, 2] and r.errors == {}
    assert s0.closed and s2.closed and not s1.closed
    assert s0.cancelled and s2.cancelled
    assert types(events) == [("race_start", 0), ("race_start", 1), ("race_start", 2),
                             ("race_cancel", 0), ("race_cancel", 2), ("race_winner", 1)]
    assert all(isinstance(e.ts, float) and isinstance(e, ev.Event) for e in events)
    assert [e.reason for e in events if e.type == "race_start"] == ["initial"] * 3


def test_role_only_chunks_do_not_win_and_iteration_yields_every_chunk_once_in_order():
    # op 0 sends its role chunk at once but its text late; op 1's text comes first.
    s0 = Stream([ROLE, chat("late")], first=0.0, gap=0.5)
    s1 = Stream([ROLE, chat("a"), chat("b"), chat("", "stop")], first=0.01, gap=0.01)

    async def go():
        r = await race([Op(s0), Op(s1)])
        first = await r.__anext__()
        second = await r.__anext__()
        rest = [c async for c in r]
        return r, [first, second, *rest]

    r, got = run(go())
    assert r.index == 1 and r.cancelled == [0] and s0.closed
    assert got == [ROLE, chat("a"), chat("b"), chat("", "stop")]
    assert r.chunks == got


def test_race_text_after_partial_iteration_is_the_whole_text():
    s = Stream(["x", "y", "z"], first=0.01, gap=0.01)

    async def go():
        r = await race([Op(s)])
        await r.__anext__()
        return r, await r.text(), await r.text()

    r, text, again = run(go())
    assert text == again == "xyz" and r.chunks == ["x", "y", "z"]


def test_hedge_second_op_not_started_when_the_first_answers_in_time():
    first, second = Op(Stream(["ok"], first=0.01)), Op(Stream(["never"]))
    r = run(race([first, second], hedge_s=0.5))
    assert r.index == 0 and r.started == [0] and r.cancelled == []
    assert second.calls == 0


def test_hedge_starts_the_next_op_when_the_first_stalls():
    s0 = Stream(["stalled"], first=30)
    second, third = Op(Stream(["quick"], first=0.01)), Op(Stream(["never"]))
    events = []
    r = run(race([Op(s0), second, third], hedge_s=0.05, on_event=events.append))
    assert r.index == 1 and r.started == [0, 1] and r.cancelled == [0]
    assert s0.closed and third.calls == 0
    assert [(e.index, e.reason) for e in events if e.type == "race_start"] == [(0, "initial"), (1, "hedge")]


def test_hedge_a_failure_starts_the_next_op_at_once():
    boom = ConnectionError("refused")
    events = []
    # hedge_s is far longer than the test's limit: only the failure can start op 1.
    r = run(race([Op(exc=boom), Op(Stream(["b"], first=0.01))], hedge_s=60, on_event=events.append), limit=5)
    assert r.index == 1 and r.started == [0, 1] and r.cancelled == [] and r.errors == {0: boom}
    assert types(events) == [("race_start", 0), ("race_error", 0), ("race_start", 1), ("race_winner", 1)]
    assert events[2].reason == "failover" and "refused" in events[1].error
    # typed like a stream's events: they go through the event log and back unchanged
    assert [ev.event_from_dict(e.to_dict()) for e in events] == events


def test_a_stream_failing_before_content_is_closed_and_the_race_goes_on():
    bad = Stream(["x"], fail=TimeoutError("stall"))
    r = run(race([Op(bad), Op(Stream(["y"], first=0.05))]))
    assert r.index == 1 and isinstance(r.errors[0], TimeoutError) and bad.closed and r.cancelled == []


def test_win_complete_with_accept():
    s0 = Stream(["b", "ad"], first=0.01, gap=0.01)          # finishes first, rejected
    s1 = Stream(["go", "od"], first=0.05, gap=0.05)
    s2 = Stream(["late"], first=1.0)
    seen = []

    def accept(text):
        seen.append(text)
        return text == "good"

    async def go():
        r = await race([Op(s0), Op(s1), Op(s2)], win="complete", accept=accept)
        return r, [c async for c in r]

    r, got = run(go())
    assert r.index == 1 and got == ["go", "od"] and seen == ["bad", "good"]
    assert isinstance(r.errors[0], Rejected) and r.errors[0].value == "bad"
    assert r.cancelled == [2] and s2.closed and s0.closed and not s1.closed


def test_win_complete_is_the_first_to_finish_not_the_first_token():
    s0 = Stream(["a", "b", "c"], first=0.01, gap=0.3)
    s1 = Stream(["x", "y"], first=0.05, gap=0.01)
    r = run(race([Op(s0), Op(s1)], win="complete"))
    assert r.index == 1 and r.cancelled == [0] and s0.closed


def test_all_fail_raises_race_failed_with_every_error():
    e0, e2 = ValueError("bad request"), ConnectionError("reset")

    with pytest.raises(RaceFailed) as info:
        run(race([Op(exc=e0), Op(Stream([ROLE])), Op(Stream(["x"], fail=e2))], hedge_s=0.01))
    errors = info.value.errors
    assert sorted(errors) == [0, 1, 2] and errors[0] is e0 and errors[2] is e2
    assert isinstance(errors[1], EmptyStream)
    assert "[0] ValueError: bad request" in str(info.value) and "[2] ConnectionError: reset" in str(info.value)


def test_value_ops():
    async def go():
        r = await race([Op("slow", delay=0.5), Op("fast", delay=0.01), Op("rejected", delay=0.0)],
                       accept=lambda v: v != "rejected")
        with pytest.raises(TypeError):
            async for _ in r:
                pass
        with pytest.raises(TypeError):
            await r.text()
        return r

    r = run(go())
    assert r.index == 1 and r.value == "fast" and r.stream is None and not r.is_stream
    assert r.cancelled == [0] and isinstance(r.errors[2], Rejected)


def test_plain_callables_and_async_generators_are_ops():
    async def gen():
        await asyncio.sleep(0.01)
        yield "g"
        yield "en"

    async def go():
        r = await race([lambda: gen(), lambda: asyncio.sleep(0.5, result="late")])
        return r, await r.text()

    r, text = run(go())
    assert r.index == 0 and text == "gen" and r.cancelled == [1]


def test_a_failing_event_callback_does_not_break_the_race():
    def bad(event):
        raise RuntimeError("observer bug")

    r = run(race([Op(Stream(["a"]))], on_event=bad))
    assert r.index == 0


def test_race_as_context_manager_closes_the_winner():
    s = Stream(["a", "b"], first=0.01, gap=0.01)

    async def go():
        async with await race([Op(s)]) as r:
            await r.__anext__()
        return r

    r = run(go())
    assert s.closed and r.chunks == ["a"]


def test_cancelling_the_race_closes_every_stream():
    s0, s1 = Stream(["a"], first=30), Stream(["b"], first=30)

    async def go():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(race([Op(s0), Op(s1)]), 0.05)

    run(go())
    assert s0.closed and s1.closed


def test_race_validation():
    with pytest.raises(ValueError, match="l0: "):
        run(race([]))
    with pytest.raises(ValueError, match="win"):
        run(race([Op("x")], win="fastest"))
    with pytest.raises(ValueError, match="hedge_s"):
        run(race([Op("x")], hedge_s=-1))


# --------------------------------------------------------------------------- parallel

def test_parallel_keeps_op_order():
    ops = [Op(i, delay=d) for i, d in enumerate([0.05, 0.01, 0.03, 0.0])]
    assert run(parallel(ops, concurrency=4)) == [0, 1, 2, 3]


def test_parallel_bounds_the_ops_in_flight():
    state = {"now": 0, "max": 0, "order": []}

    def op(i):
        async def go():
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            state["order"].append(i)
            await asyncio.sleep(0.01)
            state["now"] -= 1
            return i * i
        return go

    assert run(parallel([op(i) for i in range(10)], concurrency=3)) == [i * i for i in range(10)]
    assert state["max"] == 3 and state["order"] == list(range(10))


def test_parallel_cancels_the_rest_on_the_first_error():
    cancelled, started = [], []

    def slow(i):
        async def go():
            started.append(i)
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise
        return go

    boom = KeyError("boom")
    ops = [slow(0), Op(exc=boom, delay=0.01), slow(2), slow(3)]
    with pytest.raises(KeyError) as info:
        run(parallel(ops, concurrency=3))
    assert info.value is boom
    assert started == [0, 2] and sorted(cancelled) == [0, 2]   # op 3 never started


def test_parallel_return_exceptions():
    boom = RuntimeError("x")
    assert run(parallel([Op(1), Op(exc=boom), lambda: 3], return_exceptions=True)) == [1, boom, 3]
    assert run(parallel([])) == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_parallel_validates_concurrency(bad):
    with pytest.raises(ValueError, match="l0: parallel concurrency"):
        run(parallel([Op(1)], concurrency=bad))


# --------------------------------------------------------------------------- pipe

def test_pipe_sync_async_and_stream_steps():
    async def double(x):
        await asyncio.sleep(0)
        return x * 2

    async def spell(x):
        for ch in str(x):
            yield chat(ch)

    events = []
    out = run(pipe([lambda x: x + 1, double, spell, str.upper], 20, on_event=events.append))
    assert out == "42"
    assert types(events) == [(t, i) for i in range(4) for t in ("pipe_step", "pipe_step_done")]
    assert run(pipe([], "same")) == "same"


def test_pipe_collects_non_chunks_into_a_list():
    async def numbers(_):
        for i in range(3):
            yield i

    assert run(pipe([numbers, sum])) == 3


def test_pipe_marks_the_failing_step():
    def fail(x):
        raise ValueError(f"bad {x}")

    events = []
    with pytest.raises(ValueError) as info:
        run(pipe([lambda x: x, fail, lambda x: x], "in", on_event=events.append))
    assert info.value.l0_step == 1
    assert any("pipe step 1" in n for n in info.value.__notes__)
    assert types(events)[-1] == ("pipe_error", 1)


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


def test_module_imports_no_pydantic_at_import_time():
    import subprocess
    import sys
    code = "import sys, l0.client.orchestrate; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert orc.CLOSE_TIMEOUT_S == 2.0
