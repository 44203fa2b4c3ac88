"""Adapters: how a hardened stream reads one stream protocol, and writes it
back. A session sees every event as :class:`~l0.client.chunks.Parts`
(text, token ids, finish reason, tool-call flag) through its adapter, and
hands the caller the events of the protocol the caller asked for.

The protocol (a custom adapter overrides ``parts``; the rest is optional)::

    class MyAdapter(l0.Adapter):
        def parts(self, event) -> l0.Parts:       # what one event carries
            if event["kind"] == "token":
                return l0.Parts(text=event["text"])
            if event["kind"] == "end":
                return l0.Parts(finish_reason="stop")
            return l0.Parts(role_only=True)         # opens the stream: not sent again on a resume

        def make(self, session, p) -> list:        # events for text L0 made or moved (a resume)
            return [{"kind": "token", "text": p.text}] if p.text else []

    stream = l0.run(stream=lambda: my_stream(), adapter=MyAdapter())

``parts`` may raise for an event that reports a failure (it is classified
like any exception: an ``OSError`` or ``ConnectionError`` is retried as a
network failure). Built in: :class:`OpenAIAdapter` (chat and completion
chunks, their dicts, plain strings), :class:`l0.client.anthropic.AnthropicAdapter`
(the Messages API's events), :class:`l0.client.responses.ResponsesAdapter`
(the Responses API's events).
"""
from __future__ import annotations

from typing import Any

from l0.client import chunks as ck
from l0.client.chunks import Parts


class Adapter:
    """One stream protocol: read each event (:meth:`parts`), and write the
    events a session delivers that no server sent as they are (:meth:`make`:
    a resume converted from another route, checkpointed tokens, text with
    a repeated start dropped)."""

    def parts(self, event: Any) -> Parts:
        """What ``event`` carries. ``role_only=True`` for an event that only
        opens the stream (a role, a message start): dropped from a resumed
        attempt, whose caller has it already."""
        raise NotImplementedError

    def meta(self, event: Any) -> dict:
        """The stream's identity, read from the first event of the first
        attempt; every event :meth:`make` writes carries it."""
        return {}

    def make(self, session: Any, p: Parts) -> list:
        """The events that carry ``p`` (``session.meta`` is the identity;
        ``session.received`` what came before ``p``). Default: the text, as
        a string."""
        return [p.text] if p.text else []

    def trim(self, event: Any, kept: list[int], text: str) -> Any:
        """``event`` cut to its last ``kept`` token ids and ``text`` (a
        regenerated stream's event that straddles what was delivered)."""
        return self.make_one(Parts(text=text, token_ids=tuple(kept)))

    def make_one(self, p: Parts) -> Any:
        return p.text


class OpenAIAdapter(Adapter):
    """OpenAI chat/completion chunks (SDK objects or their dicts) and plain
    strings. ``kind``: what :meth:`make` writes (``chat``, ``completion``;
    ``run``: the type the stream itself used, text for strings)."""

    def __init__(self, kind: str = "chat") -> None:
        self.kind = kind

    def parts(self, event: Any) -> Parts:
        return ck.parts(event)

    def meta(self, event: Any) -> dict:
        return ck.meta_of(event)

    def make(self, session: Any, p: Parts) -> list:
        ids = list(p.token_ids) if p.token_ids is not None else None
        kind = self.kind
        if kind == "run":  # l0.run: answer in the type the stream itself used
            kind = {"chat.completion.chunk": "chat", "text_completion": "completion"}.get(
                session.meta.get("object"), kind)
        usage_only = p.role_only and p.usage is not None
        if kind == "chat":
            return [ck.chat_chunk(session.meta, p.text, ids, p.finish_reason, usage=p.usage, usage_only=usage_only,
                                  logprobs=p.logprobs, delta_extra=p.delta_extra)]
        if kind == "completion":   # (called before the chunk is taken: the text so far is where it starts)
            return [ck.completion_chunk(session.meta, p.text, ids, p.finish_reason, usage=p.usage,
                                        usage_only=usage_only, logprobs=p.logprobs,
                                        text_offset=len(session.received.text))]
        return [p.text]

    def trim(self, event: Any, kept: list[int], text: str) -> Any:
        if isinstance(event, str):
            return text
        out = ck.with_token_ids(event, kept, text)
        if type(out) is not type(event) and hasattr(type(event), "model_validate"):
            try:   # another library's chunk type (LiteLLM's): give the caller its own type back
                return type(event).model_validate(ck.as_dict(out))
            except Exception:  # noqa: BLE001 - the OpenAI type carries the same fields
                pass
        return out


class FuncAdapter(Adapter):
    """An adapter from a plain function ``event -> Parts`` (``l0.run(adapter=fn)``)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def parts(self, event: Any) -> Parts:
        return self.fn(event)


def as_adapter(a: Any, kind: str = "run") -> Adapter:
    """``a`` as an :class:`Adapter`: None (OpenAI chunks and strings), an
    adapter, or a function ``event -> Parts``. Raises TypeError otherwise."""
    if a is None:
        return OpenAIAdapter(kind)
    if isinstance(a, Adapter):
        return a
    if hasattr(a, "parts") and callable(a.parts):
        return a
    if callable(a):
        return FuncAdapter(a)
    raise TypeError(f"l0: an adapter is an l0.Adapter or a function event -> l0.Parts, not {type(a).__name__}")
