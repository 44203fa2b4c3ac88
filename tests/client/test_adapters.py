"""Adapters (``l0.Adapter``): any stream protocol through ``l0.run`` — a
custom one in a few lines, and the Anthropic Messages events — without a
server (the real servers: tests/engine/vllm/test_wrap_e2e.py)."""
from __future__ import annotations

import asyncio

import pytest

import l0
from l0.client.anthropic import AnthropicAdapter, AnthropicStreamError, chat_messages
from l0.client.session import NotResumable


def collect(stream):
    async def go():
        return [e async for e in stream]
    return asyncio.run(asyncio.wait_for(go(), 30))


async def _nosleep(s):
    pass


class Tokens(l0.Adapter):
    """A made-up protocol: {"kind": "token"|"end"|"hello", ...}."""

    def parts(self, event):
        if event["kind"] == "token":
            return l0.Parts(text=event["text"])
        if event["kind"] == "end":
            return l0.Parts(finish_reason=event["why"])
        if event["kind"] == "boom":
            raise ConnectionResetError("the peer said boom")
        return l0.Parts(role_only=True)

    def make(self, session, p):
        out = [{"kind": "token", "text": p.text}] if p.text else []
        return out + ([{"kind": "end", "why": p.finish_reason}] if p.finish_reason else [])


def test_a_custom_adapter_resumes_in_its_own_protocol():
    """A break mid-way (an event the adapter reads as a network failure):
    the factory continues from the text; the resumed attempt's opening
    event is dropped, its tokens come back as the protocol's own events."""
    calls = []

    def factory(received):
        calls.append(received)

        async def gen():
            yield {"kind": "hello"}
            if not received:
                yield {"kind": "token", "text": "Once upon "}
                yield {"kind": "boom"}
            yield {"kind": "token", "text": "a time."}
            yield {"kind": "end", "why": "stop"}
        return gen()
    events = []
    stream = l0.run(factory, adapter=Tokens(), sleep=_nosleep, on_event=events.append)
    out = collect(stream)
    assert out == [{"kind": "hello"}, {"kind": "token", "text": "Once upon "},
                   {"kind": "token", "text": "a time."}, {"kind": "end", "why": "stop"}]
    assert calls == ["", "Once upon "] and stream.text == "Once upon a time."
    assert [e.mode for e in events if e.type == "attempt_start"] == ["fresh", "text"]
    assert [e.category for e in events if e.type == "failure"] == ["network"]


def test_an_adapter_can_be_a_function():
    async def gen():
        for w in ("alpha ", "beta"):
            yield {"w": w}
    stream = l0.run(gen, adapter=lambda e: l0.Parts(text=e["w"]))
    assert collect(stream) == [{"w": "alpha "}, {"w": "beta"}] and stream.text == "alpha beta"
    with pytest.raises(TypeError, match="an adapter is"):
        l0.run(gen, adapter=42)


def _messages(text, stop="end_turn", error_after=None):
    yield {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 5}}}
    yield {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    for i, w in enumerate(text.split(" ")):
        if error_after is not None and i == error_after:
            yield {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        yield {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w + " "}}
    yield {"type": "content_block_stop", "index": 0}
    yield {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 3}}
    yield {"type": "message_stop"}


def test_the_anthropic_adapter_reads_and_writes_messages_events():
    calls = []

    def factory():
        calls.append(1)

        async def gen():
            for e in _messages("hello there world", error_after=1 if len(calls) == 1 else None):
                yield e
        return gen()
    events = []
    stream = l0.run(factory, adapter=AnthropicAdapter(), sleep=_nosleep, on_event=events.append)
    out = collect(stream)
    # an overloaded_error event is a 529: retried; nothing had reached the caller past "hello ", so the
    # zero-argument factory is replayed and the delivered text skipped
    assert [e["type"] for e in out] == ["message_start", "content_block_start"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert stream.text == "hello there world " and stream.session.finish_reason == "stop"
    assert [e.status for e in events if e.type == "failure"] == [529]

    a = AnthropicAdapter()
    with pytest.raises(AnthropicStreamError) as err:
        a.parts({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    assert err.value.status_code == 400
    assert a.parts({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}).finish_reason == "length"
    assert a.parts({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}).tool_calls


def test_messages_become_chat_messages_for_a_text_continuation():
    params = {"system": [{"type": "text", "text": "Be brief."}],
              "messages": [{"role": "user", "content": [
                  {"type": "text", "text": "What is this?"},
                  {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                  {"role": "assistant", "content": "A"}]}
    assert chat_messages(params) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "A"}]
    with pytest.raises(NotResumable, match="tool_result"):
        chat_messages({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]})


def _tool_chunks():
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta, finish=None):
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    yield chunk({"role": "assistant", "content": "Let me check. "})
    yield chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]})
    for piece in ('{"city": ', '"Paris"}'):
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield chunk({}, "tool_calls")


def test_on_tool_call_gets_each_call_whole_and_on_token_each_text_piece():
    async def gen():
        for c in _tool_chunks():
            yield c
    calls, tokens, events = [], [], []
    stream = l0.run(gen, on_tool_call=calls.append, on_token=tokens.append, on_event=events.append)
    collect(stream)
    assert [(c.index, c.id, c.name, c.arguments) for c in calls] == [(0, "call_1", "get_weather", '{"city": "Paris"}')]
    assert tokens == ["Let me check. "]
    assert [e.type for e in events][-2:] == ["tool_call", "complete"]   # tokens are never events


def test_a_break_after_tool_call_pieces_is_not_resumed_by_a_factory():
    """A factory can't regenerate by token id: the break after a tool-call
    piece raises NotResumable (only an L0 server regenerates tool calls)."""
    async def gen():
        for i, c in enumerate(_tool_chunks()):
            if i == 3:
                raise ConnectionResetError("cut")
            yield c
    with pytest.raises(NotResumable, match="tool-call pieces"):
        collect(l0.run(gen, sleep=_nosleep))
