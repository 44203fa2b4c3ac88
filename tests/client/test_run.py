"""``l0.run`` over stream factories: the session loop without a server
(retries by category, active timeouts, zero output, fallbacks, resume from
text, events, callbacks). No real waits: sleeps are recorded, and the only
timeouts are the ones under test."""
from __future__ import annotations

import asyncio

import pytest

import l0
from l0.client.retry import Retry, Timeouts, ZeroOutput


def collect(stream, limit: float = 30.0):
    async def go():
        out = []
        async for chunk in stream:
            out.append(chunk)
        return out
    return asyncio.run(asyncio.wait_for(go(), limit))


def types(events):
    return [e.type for e in events]


class Recorder:
    def __init__(self):
        self.sleeps, self.events = [], []

    async def sleep(self, s):
        self.sleeps.append(s)

    def options(self, **kw):
        kw.setdefault("retry", Retry(wait=lambda rs: 0.25))
        return dict(sleep=self.sleep, on_event=self.events.append, **kw)


def test_a_healthy_stream_is_passed_through():
    rec = Recorder()

    async def factory():
        for piece in ["Hello", ", ", "world", "."]:
            yield piece
    stream = l0.run(factory, **rec.options())
    assert collect(stream) == ["Hello", ", ", "world", "."]
    assert types(rec.events) == ["session_start", "attempt_start", "first_token", "complete"]
    done = rec.events[-1]
    assert (done.finish_reason, done.attempts, done.chars) == ("stop", 1, 13)
    assert rec.sleeps == []


def test_a_network_break_resumes_from_the_text_received():
    rec, calls = Recorder(), []

    def factory(received: str):
        calls.append(received)

        async def gen():
            if not received:
                yield "The quick "
                yield "brown "
                raise ConnectionResetError("peer reset")
            yield "fox."
        return gen()
    stream = l0.run(factory, **rec.options())
    assert "".join(collect(stream)) == "The quick brown fox."
    assert calls == ["", "The quick brown "]
    assert types(rec.events) == ["session_start", "attempt_start", "first_token", "failure", "retry_scheduled",
                                 "attempt_start", "resume", "first_token", "complete"]
    failure = rec.events[3]
    assert (failure.category, failure.delivered_chars) == ("network", 16)
    resume = rec.events[6]
    assert (resume.mode, resume.char_offset) == ("text", 16)
    assert rec.sleeps == [0.25]


def test_zero_output_is_retried_and_the_caller_never_sees_it():
    rec, n = Recorder(), []

    async def factory():
        n.append(1)
        if len(n) == 1:
            for piece in ["  ", "\n", "..."]:
                yield piece
            return
        yield "An answer."
    assert collect(l0.run(factory, **rec.options())) == ["An answer."]
    failures = [e for e in rec.events if e.type == "failure"]
    assert [(f.category, f.error.split(":")[0]) for f in failures] == [("model", "ZeroOutput")]
    assert rec.events[-1].attempts == 2


def test_zero_output_uses_up_attempts_then_raises():
    rec = Recorder()

    async def factory():
        yield " "
    with pytest.raises(ZeroOutput):
        collect(l0.run(factory, **rec.options(retry=Retry(attempts=2, wait=lambda rs: 0.0))))
    assert types(rec.events)[-2:] == ["retry_given_up", "error"]
    assert rec.events[-2].why == "attempts"
    assert len([e for e in rec.events if e.type == "attempt_start"]) == 2


def test_a_hung_stream_is_interrupted_by_the_inter_token_timeout():
    rec, calls = Recorder(), []
    never = asyncio.Event

    def factory(received: str):
        calls.append(received)

        async def gen():
            if not received:
                yield "part one, "
                await never().wait()  # hangs: no chunk, no close
            yield "part two."
        return gen()
    stream = l0.run(factory, timeout=Timeouts(first_token_s=30, inter_token_s=0.2), **rec.options())
    assert "".join(collect(stream)) == "part one, part two."
    timeouts = [e for e in rec.events if e.type == "timeout"]
    assert [(t.which, t.after_s) for t in timeouts] == [("inter_token", 0.2)]
    failure = next(e for e in rec.events if e.type == "failure")
    assert failure.category == "model" and failure.error.startswith("Stalled")
    assert calls == ["", "part one, "]


def test_a_stream_that_never_starts_hits_the_first_token_timeout():
    rec, n = Recorder(), []

    async def factory():
        n.append(1)
        if len(n) == 1:
            await asyncio.Event().wait()
        yield "late but here"
    stream = l0.run(factory, timeout=Timeouts(first_token_s=0.2, inter_token_s=None), **rec.options())
    assert collect(stream) == ["late but here"]
    assert [(e.which, e.after_s) for e in rec.events if e.type == "timeout"] == [("first_token", 0.2)]
    assert next(e for e in rec.events if e.type == "failure").category == "transient"


def test_fatal_errors_are_not_retried():
    rec, n = Recorder(), []

    async def factory():
        n.append(1)
        raise KeyError("bug")
        yield  # pragma: no cover

    with pytest.raises(KeyError):
        collect(l0.run(factory, **rec.options()))
    assert len(n) == 1
    assert types(rec.events) == ["session_start", "attempt_start", "failure", "retry_given_up", "error"]
    assert rec.events[3].why == "fatal"


def test_fallbacks_in_order_after_the_primary_gives_up():
    rec, used = Recorder(), []

    def failing(name):
        async def gen():
            used.append(name)
            raise ConnectionRefusedError(name)
            yield  # pragma: no cover
        return gen

    async def good():
        used.append("good")
        yield "from the second fallback"
    stream = l0.run(failing("primary"), fallbacks=[failing("first"), good],
                    **rec.options(retry=Retry(max_retries=1, wait=lambda rs: 0.0)))
    assert collect(stream) == ["from the second fallback"]
    assert used == ["primary", "primary", "first", "first", "good"]
    assert [(e.index, e.endpoint) for e in rec.events if e.type == "fallback"] == [(1, "fallback-1"),
                                                                                   (2, "fallback-2")]


def test_callbacks_get_their_events_and_a_raising_callback_breaks_nothing():
    got = {}

    def keep(name):
        return lambda e: got.setdefault(name, []).append(e.type)

    def boom(e):
        raise RuntimeError("observer bug")

    calls = []

    def factory(received: str):
        calls.append(received)

        async def gen():
            if not received:
                yield "one "
                raise ConnectionResetError()
            yield "two"
        return gen()
    stream = l0.run(factory, retry=Retry(wait=lambda rs: 0.0), sleep=_nosleep, on_start=keep("start"),
                    on_retry=keep("retry"), on_resume=keep("resume"), on_complete=keep("complete"),
                    on_event=boom)
    assert "".join(collect(stream)) == "one two"
    assert got == {"start": ["session_start"], "retry": ["retry_scheduled"], "resume": ["resume"],
                   "complete": ["complete"]}


async def _nosleep(s):
    return None


def test_sdk_chunks_are_restamped_on_resume():
    from openai.types.chat import ChatCompletionChunk

    def chunk(text, finish=None, cid="chatcmpl-1"):
        return ChatCompletionChunk.model_validate({
            "id": cid, "object": "chat.completion.chunk", "created": 5, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})

    def factory(received: str):
        async def gen():
            if not received:
                yield chunk("Hello")
                raise ConnectionResetError()
            yield chunk(" there", "stop", cid="chatcmpl-2")
        return gen()
    out = collect(l0.run(factory, retry=Retry(wait=lambda rs: 0.0), sleep=_nosleep))
    assert all(isinstance(c, ChatCompletionChunk) for c in out)
    assert [c.id for c in out] == ["chatcmpl-1", "chatcmpl-1"]
    assert "".join(c.choices[0].delta.content for c in out) == "Hello there"
    assert out[-1].choices[0].finish_reason == "stop"


def test_unknown_options_are_refused():
    with pytest.raises(TypeError, match="unknown option"):
        l0.run(lambda: None, on_finish=print)
