"""Cancellation, close and fallbacks of a hardened stream (``l0.run`` over
in-process async generators): a cancelled consumer stops the stream at once
and nothing is retried; ``close()`` shuts the source before it returns; a
zero-argument fallback gets its turn after a mid-stream break. Repeated
trials, because the race this replaces lost a cancel on Python 3.11 in 20 of
20 runs."""
from __future__ import annotations

import asyncio

import pytest

import l0
from l0.client.retry import Retry
from l0.client.session import NotResumable

TRIALS = 20


def words(*ws, fail: BaseException | None = None, log: list | None = None, gap: float = 0.0):
    """A factory of async generators of ``ws`` (then ``fail``), noting in
    ``log`` when each one's ``finally`` ran."""
    async def gen():
        try:
            for w in ws:
                await asyncio.sleep(gap)
                yield w
            if fail is not None:
                raise fail
        finally:
            if log is not None:
                log.append("source closed")
    return gen


async def _no_sleep(_s):
    pass


@pytest.mark.parametrize("timeouts", [l0.Timeouts(), l0.Timeouts(first_token_s=None, inter_token_s=None)],
                         ids=["active-timeouts", "no-timeouts"])
def test_cancelling_the_consumer_stops_the_stream_at_once(timeouts):
    async def trial():
        log, events, got = [], [], []
        stream = l0.run(words(*[f"w{i} " for i in range(200)], log=log, gap=0.001), timeout=timeouts,
                        on_event=events.append)

        async def consume():
            async for chunk in stream:
                got.append(chunk)
                if len(got) == 5:
                    started.set()
        started = asyncio.Event()
        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return log, [e.type for e in events], len(got), events[-1]

    for _ in range(TRIALS):
        log, types, n, last = asyncio.run(trial())
        assert log == ["source closed"] and n < 200
        assert types == ["session_start", "attempt_start", "first_token", "cancelled"]
        assert (last.how, last.delivered_chars) == ("cancelled", len("".join(f"w{i} " for i in range(n))))


def test_close_shuts_the_source_before_it_returns():
    async def go():
        log, events = [], []
        stream = l0.run(words("a ", "b ", "c ", "d ", log=log), on_event=events.append)
        async for chunk in stream:
            if chunk == "b ":
                break
        await stream.close()
        log.append("close returned")
        return log, events
    log, events = asyncio.run(go())
    assert log == ["source closed", "close returned"]
    assert [(e.type, getattr(e, "how", None)) for e in events][-1] == ("cancelled", "closed")


def test_a_cancel_during_a_retry_wait_is_not_retried():
    async def go():
        events = []
        waits = asyncio.Event()

        async def sleep(_s):
            waits.set()
            await asyncio.sleep(3600)
        stream = l0.run(words("a ", fail=ConnectionResetError("reset")), sleep=sleep, on_event=events.append)
        task = asyncio.create_task(stream.__anext__())
        first = await task
        task = asyncio.create_task(stream.__anext__())
        await waits.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return first, [e.type for e in events]
    first, types = asyncio.run(go())
    assert first == "a "
    assert types[-2:] == ["retry_scheduled", "cancelled"] and types.count("attempt_start") == 1


def _run(primary, fallbacks, **kw):
    async def go():
        events = []
        stream = l0.run(primary, fallbacks=fallbacks, sleep=_no_sleep, on_event=events.append,
                        retry=Retry(max_retries=1), **kw)
        return "".join([c async for c in stream]), events
    return asyncio.run(go())


BROKEN = words("partial ", fail=ConnectionResetError("reset"))


def test_a_zero_argument_fallback_replays_past_what_was_delivered():
    text, events = _run(BROKEN, [words("partial ", "answer.")])
    assert text == "partial answer."
    assert [e.mode for e in events if e.type == "attempt_start"] == ["fresh", "regenerate", "regenerate"]
    assert [e.index for e in events if e.type == "fallback"] == [1]


def test_with_hold_the_fallback_starts_over():
    text, events = _run(BROKEN, [words("another ", "answer.")], hold=True)
    assert text == "another answer."   # nothing had reached the caller: no replay check
    assert [e.mode for e in events if e.type == "attempt_start"] == ["fresh", "fresh", "fresh"]


def test_a_fallback_that_cannot_continue_hands_over_to_the_next():
    text, events = _run(BROKEN, [words("something else."), words("partial ", "answer.")])
    assert text == "partial answer."
    given_up = [e.why for e in events if e.type == "retry_given_up"]
    assert given_up == ["max_retries", "not_resumable"]
    assert [e.index for e in events if e.type == "fallback"] == [1, 2]


def test_when_no_fallback_can_continue_a_typed_error_says_so():
    with pytest.raises(NotResumable, match="differs from the text delivered"):
        _run(BROKEN, [words("something else.")])
