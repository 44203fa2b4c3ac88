"""``l0.client.race``: race (hedging, winners, losers closed), parallel and
pipe, over in-process async streams. Which op answers or finishes first is
set by events, not sleeps (``Stream(wait=...)``, ``Op(after=...)``): a
loser waits for the winner to finish, so a starved test process (CI, beside
a busy neighbour) cannot reorder them. Sleeps only stand for latency; no
durations are asserted."""
from __future__ import annotations

import asyncio

import pytest

from l0.client import events as ev
from l0.client import race as rc
from l0.client.race import EmptyStream, RaceFailed, Rejected, parallel, pipe, race


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
    items; ``wait=(i, other)``: item ``i`` only after ``other`` has ended (run
    out or been closed). ``close()`` records that it was called."""

    def __init__(self, items, first=0.0, gap=0.0, fail=None, fail_after=0, wait=None):
        self.items, self.first, self.gap = list(items), first, gap
        self.fail, self.fail_after, self.wait = fail, fail_after, wait
        self.pos, self.closed, self.cancelled = 0, False, False
        self.ended = asyncio.Event()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.fail is not None and self.pos == self.fail_after:
            raise self.fail
        if self.pos >= len(self.items):
            self.ended.set()
            raise StopAsyncIteration
        try:
            if self.wait is not None and self.wait[0] == self.pos:
                await self.wait[1].ended.wait()
            await asyncio.sleep(self.first if self.pos == 0 else self.gap)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        item = self.items[self.pos]
        self.pos += 1
        return item

    async def close(self):
        self.closed = True
        self.ended.set()


class Op:
    """A zero-argument async op returning ``result`` (a Stream or a value)
    after ``delay`` s, or raising ``exc``; with ``after`` (another Op) only
    once that one has returned. Counts its calls."""

    def __init__(self, result=None, delay=0.0, exc=None, after=None):
        self.result, self.delay, self.exc, self.after, self.calls = result, delay, exc, after, 0
        self.returned = asyncio.Event()

    async def __call__(self):
        self.calls += 1
        if self.after is not None:
            await self.after.returned.wait()
        await asyncio.sleep(self.delay)
        if self.exc is not None:
            raise self.exc
        self.returned.set()
        return self.result


def types(events):
    return [(e.type, e.index) for e in events]


# --------------------------------------------------------------------------- race

def test_race_without_hedge_the_first_token_wins_and_losers_are_closed():
    s1 = Stream(["fa", "st"], first=0.01)
    s0, s2 = Stream(["slow"], first=0.5, wait=(0, s1)), Stream(["mid"], first=0.3, wait=(0, s1))
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
    s1 = Stream([ROLE, chat("a"), chat("b"), chat("", "stop")], first=0.01, gap=0.01)
    s0 = Stream([ROLE, chat("late")], first=0.0, gap=0.5, wait=(1, s1))

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
    r = run(race([first, second], hedge_s=5.0))   # (the answer comes at once; 5 s is the test's margin)
    assert r.index == 0 and r.started == [0] and r.cancelled == []
    assert second.calls == 0


def test_hedge_starts_the_next_op_when_the_first_stalls():
    s0 = Stream(["stalled"], first=30)
    second, third = Op(Stream(["quick"])), Op(Stream(["never"]))
    events = []
    # op 1 answers at once; op 2 would start if op 1 took longer than hedge_s
    r = run(race([Op(s0), second, third], hedge_s=1.0, on_event=events.append))
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
    r = run(race([Op(bad), Op(Stream(["y"], first=0.05))]))   # (y can only win: x fails at once)
    assert r.index == 1 and isinstance(r.errors[0], TimeoutError) and bad.closed and r.cancelled == []


def test_win_complete_with_accept():
    s0 = Stream(["b", "ad"], first=0.01, gap=0.01)          # finishes first, rejected
    s1 = Stream(["go", "od"], first=0.05, gap=0.05, wait=(0, s0))
    s2 = Stream(["late"], first=1.0, wait=(0, s1))
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
    s1 = Stream(["x", "y"], first=0.05, gap=0.01)
    s0 = Stream(["a", "b", "c"], first=0.01, gap=0.3, wait=(1, s1))   # its first token first, then slow
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
        fast = Op("fast", delay=0.01)
        r = await race([Op("slow", delay=0.5, after=fast), fast, Op("rejected", delay=0.0)],
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
    done = asyncio.Event()

    async def gen():
        await asyncio.sleep(0.01)
        yield "g"
        yield "en"
        done.set()

    async def late():
        await done.wait()   # after the generator's end: never, it is cancelled first
        return "late"

    async def go():
        r = await race([lambda: gen(), late])
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


def test_module_imports_no_pydantic_at_import_time():
    import subprocess
    import sys
    code = "import sys, l0.client.race, l0.client.consensus; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert rc.CLOSE_TIMEOUT_S == 2.0
