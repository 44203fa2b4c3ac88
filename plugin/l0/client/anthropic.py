"""``l0.wrap(AsyncAnthropic(...))``: the Anthropic SDK's Messages API
hardened the way ``l0.wrap`` hardens OpenAI's, yielding the SDK's own event
types.

    client = l0.wrap(anthropic.AsyncAnthropic(base_url="http://vllm:8000", api_key="-"))
    stream = await client.messages.create(model=..., max_tokens=200, messages=[...], stream=True)
    async for event in stream:            # anthropic.types.RawMessageStreamEvent
        ...
    async with client.messages.stream(model=..., max_tokens=200, messages=[...]) as s:
        async for text in s.text_stream:  # the SDK's MessageStream, over the hardened events
            ...

What is hardened: the first-token and inter-token timeouts, retries
(``Retry-After``, 429/5xx, ``overloaded_error``), the zero-output check,
guardrails, fallbacks (other Anthropic clients, or dicts of overrides), and
a break after text was delivered. A break resumes by text continuation when
the server is vLLM (L0 or not: it serves ``/v1/messages`` and
``/v1/chat/completions`` side by side): the answer so far continues on
``/v1/chat/completions`` (``continue_final_message``) and the chunks are
written back as this stream's ``content_block_delta`` events, then its
``content_block_stop``, ``message_delta`` and ``message_stop``. Against
another server (Anthropic's API) a break after delivery moves on to the
next fallback (:class:`~l0.client.session.NotResumable`), as does a break
after a ``tool_use`` block began. On L0 servers each request carries an
``l0_key`` (``vllm_xargs``), so L0 on the server records and acts on it.
Non-streaming ``messages.create`` gets classified retries, the zero-output
check, guardrails and fallbacks. ``messages.stream(output_format=...)`` is
passed through unhardened (an :class:`~l0.client.wrap.L0Warning`).
"""
from __future__ import annotations

import warnings
from typing import Any, AsyncIterator

from l0.client import chunks as ck
from l0.client.adapters import Adapter
from l0.client.chunks import Parts
from l0.client.endpoints import ChatRouteEndpoint, _headers, chat_content, image_part, without_retries
from l0.client.options import Options, options_from
from l0.client.retry import ERROR_TYPE_STATUS
from l0.client.session import NotResumable, Plan, Session

# Anthropic's stop reasons, and the OpenAI finish reasons they are read as (and written back from).
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "pause_turn": "stop", "refusal": "content_filter"}
FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "content_filter": "refusal"}


class AnthropicStreamError(Exception):
    """An ``error`` event inside a 200 stream. ``status_code``: the status
    the same error has as a response (``overloaded_error``: 529, retried)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.status_code = ERROR_TYPE_STATUS.get(kind, 500)


class AnthropicAdapter(Adapter):
    """The Messages API's stream events (SDK objects or their dicts).
    One per stream: it remembers the open text block, where resumed text
    goes."""

    def __init__(self) -> None:
        self.text_index = 0           # the text block that resumed text continues
        self.closed: set[int] = set()  # blocks whose content_block_stop was read
        self.input_tokens: int | None = None

    def parts(self, event: Any) -> Parts:
        d = ck.as_dict(event)
        kind = d.get("type")
        if kind == "content_block_delta":
            delta = d.get("delta") or {}
            dk = delta.get("type")
            if dk == "text_delta":
                return Parts(text=delta.get("text") or "")
            if dk == "input_json_delta":
                return Parts(tool_calls=True, tool_pieces=((int(d.get("index") or 0), None, None,
                                                            delta.get("partial_json") or ""),))
            return Parts(delta_extra={k: v for k, v in delta.items() if k != "type"} or None)
        if kind == "content_block_start":
            block = d.get("content_block") or {}
            if block.get("type") in ("tool_use", "server_tool_use"):
                return Parts(tool_calls=True, tool_pieces=((int(d.get("index") or 0), block.get("id"),
                                                            block.get("name"), ""),))
            if block.get("type") == "text":
                self.text_index = int(d.get("index") or 0)
                if block.get("text"):
                    return Parts(text=block["text"])
            return Parts(role_only=True)
        if kind == "content_block_stop":
            self.closed.add(int(d.get("index") or 0))
            return Parts()
        if kind == "message_delta":
            reason = (d.get("delta") or {}).get("stop_reason")
            return Parts(finish_reason=STOP_REASONS.get(reason, reason) if reason else None,
                         usage=d.get("usage") or None)
        if kind == "message_start":
            usage = (d.get("message") or {}).get("usage") or {}
            self.input_tokens = usage.get("input_tokens")
            return Parts(role_only=True)
        if kind == "error":
            err = d.get("error") or {}
            raise AnthropicStreamError(str(err.get("type") or "api_error"), str(err.get("message") or ""))
        if kind == "message_stop":
            return Parts()
        return Parts(role_only=True)   # ping, and events this adapter does not know: not resent

    def meta(self, event: Any) -> dict:
        d = ck.as_dict(event)
        msg = d.get("message") or {}
        return {"id": msg.get("id"), "model": msg.get("model"), "sdk": not isinstance(event, dict)}

    def make(self, session: Any, p: Parts) -> list:
        """Text written back as ``content_block_delta`` events of the open
        text block; a finish as that block's stop (unless it came already),
        ``message_delta`` (the stop reason; ``output_tokens`` of the whole
        answer where the continuation's usage tells it) and
        ``message_stop``. A usage-only chunk writes nothing."""
        sdk = session.meta.get("sdk", True)
        out = []
        if p.text:
            out.append(_event({"type": "content_block_delta", "index": self.text_index,
                               "delta": {"type": "text_delta", "text": p.text}}, sdk))
        if p.finish_reason:
            if self.text_index not in self.closed:
                self.closed.add(self.text_index)
                out.append(_event({"type": "content_block_stop", "index": self.text_index}, sdk))
            u = p.usage or {}
            if u.get("total_tokens") is not None and self.input_tokens is not None:
                output = max(0, int(u["total_tokens"]) - int(self.input_tokens))
            else:
                output = session.received.tokens + len(p.token_ids or ())
            out.append(_event({"type": "message_delta",
                               "delta": {"stop_reason": FINISH_TO_STOP.get(p.finish_reason, "end_turn"),
                                         "stop_sequence": None},
                               "usage": {"output_tokens": output}}, sdk))
            out.append(_event({"type": "message_stop"}, sdk))
        return out


_TYPES = {"content_block_delta": "RawContentBlockDeltaEvent", "content_block_stop": "RawContentBlockStopEvent",
          "message_delta": "RawMessageDeltaEvent", "message_stop": "RawMessageStopEvent"}


def _event(d: dict, sdk: bool) -> Any:
    """The SDK's event object for ``d`` (the dict when ``sdk`` is False or
    the SDK is missing)."""
    if not sdk:
        return d
    try:
        import anthropic.types as at
    except ImportError:
        return d
    return getattr(at, _TYPES[d["type"]]).model_validate(d)


def chat_messages(params: dict) -> list[dict]:
    """A Messages request's ``system`` and ``messages`` as OpenAI chat
    messages (text and image parts). Raises NotResumable for content a
    text continuation can't carry (tool use and results, documents)."""
    out: list[dict] = []
    system = params.get("system")
    if system:
        text = system if isinstance(system, str) else "".join(b.get("text", "") for b in system)
        out.append({"role": "system", "content": text})
    for m in params.get("messages") or ():
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        parts = []
        for b in content or ():
            b = ck.as_dict(b)
            if b.get("type") == "text":
                parts.append({"type": "text", "text": b.get("text", "")})
            elif b.get("type") == "image":
                src = b.get("source") or {}
                url = src.get("url") if src.get("type") == "url" else \
                    f"data:{src.get('media_type', 'image/jpeg')};base64,{src.get('data', '')}"
                parts.append(image_part(url))
            else:
                raise NotResumable(f"l0: a {b.get('type')} block can't be carried by a text continuation")
        out.append({"role": m["role"], "content": chat_content(parts)})
    return out


class AnthropicEndpoint(ChatRouteEndpoint):
    """An Anthropic SDK client and a Messages request: fresh attempts on
    ``/v1/messages``; resumed ones (vLLM servers) on ``/v1/chat/completions``."""

    route = "messages"
    api = "Anthropic's Messages"

    def __init__(self, client: Any, params: dict, options: Options) -> None:
        super().__init__(str(client.base_url), _headers(client), "messages", params, options)
        self.client = without_retries(client)

    def chat_request(self, text: str) -> tuple[dict, dict]:
        p = self.params
        params = {"model": p["model"], "messages": chat_messages(p) + [{"role": "assistant", "content": text}],
                  "max_tokens": p["max_tokens"],
                  "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        given = dict(p.get("extra_body") or {})
        extra: dict = {}
        # (sampling fields the SDK has no keyword for come in extra_body)
        for a, b, into in (("temperature", "temperature", params), ("top_p", "top_p", params),
                           ("stop_sequences", "stop", params), ("top_k", "top_k", extra),
                           ("vllm_xargs", "vllm_xargs", extra)):
            for holder in (given, p):
                if holder.get(a) is not None:
                    into[b] = holder[a]
        return params, extra

    async def open(self, plan: Plan, session: Session) -> AsyncIterator[Any]:
        req = plan.request
        if req["route"] == "messages":
            return await self.client.messages.create(**req["params"], stream=True)
        from l0.client.http import HttpClient

        return await HttpClient(self.root + "/v1", headers=self.headers).chat.completions.create(
            **req["params"], stream=True)


class _Messages:
    def __init__(self, owner: "AnthropicWrapped") -> None:
        self._owner = owner
        self._inner = owner._client.messages

    async def create(self, **params: Any) -> Any:
        return await self._owner._create(params)

    def stream(self, **params: Any) -> Any:
        """The SDK's ``AsyncMessageStreamManager`` over the hardened events
        (``text_stream``, ``get_final_message()``, ... as the SDK has them)."""
        from anthropic.lib.streaming import AsyncMessageStreamManager

        if params.get("output_format") is not None:
            _warn("messages.stream(output_format=...) is passed through unhardened")
            return self._inner.stream(**params)

        async def request():
            return await self._owner._create({**params, "stream": True})
        return AsyncMessageStreamManager(request(), output_format=_not_given())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _not_given() -> Any:
    from anthropic import NOT_GIVEN
    return NOT_GIVEN


def _warn(reason: str) -> None:
    from l0.client.wrap import L0Warning
    warnings.warn("l0: " + reason, L0Warning, stacklevel=3)


class AnthropicWrapped:
    """An ``anthropic.AsyncAnthropic`` whose ``messages.create`` and
    ``messages.stream`` are hardened; every other attribute is the
    wrapped client's."""

    def __init__(self, client: Any, options: Options) -> None:
        self._client = client
        self._options = options
        self.messages = _Messages(self)
        self.last: Session | None = None
        self._sources: list[tuple[Any, dict]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _endpoints(self, params: dict) -> list[AnthropicEndpoint]:
        from l0.client.wrap import sources
        if self._sources is None:
            self._sources = sources(self._client, self._options.fallbacks, "messages")
        return [AnthropicEndpoint(client, {**params, **overrides}, self._options)
                for client, overrides in self._sources]

    async def _create(self, params: dict) -> Any:
        from l0.client.wrap import L0Stream, _omitted

        o = self._options
        params = {k: v for k, v in params.items() if not _omitted(v)}
        if not params.pop("stream", False):
            from l0.client.whole import respond
            return await respond(self._endpoints(params), "messages", o, call=_call_whole, read=read_message)
        session = Session.of(self._endpoints(params), o, kind="messages", adapter=AnthropicAdapter())
        self.last = session
        return L0Stream(session)


async def _call_whole(ep: AnthropicEndpoint) -> Any:
    return await ep.client.messages.create(**ep.params)


def read_message(resp: Any) -> tuple[str, bool, str | None, Any]:
    """A whole ``Message``: (text, has tool use, finish reason, usage)."""
    d = ck.as_dict(resp)
    text = "".join(b.get("text", "") for b in d.get("content") or () if b.get("type") == "text")
    tools = any(b.get("type") == "tool_use" for b in d.get("content") or ())
    reason = d.get("stop_reason")
    return text, tools, STOP_REASONS.get(reason, reason), d.get("usage")


def async_twin(client: Any) -> Any:
    """An ``AsyncAnthropic`` with the synchronous client's address, keys,
    headers and timeout."""
    import anthropic

    return anthropic.AsyncAnthropic(api_key=client.api_key, auth_token=client.auth_token, base_url=client.base_url,
                                    timeout=client.timeout, max_retries=0,
                                    default_headers=getattr(client, "_custom_headers", None) or None)


def wrap_anthropic(client: Any, **options: Any) -> Any:
    """``l0.wrap`` for the anthropic SDK (``AsyncAnthropic`` or ``Anthropic``)."""
    import anthropic

    o = options_from(**options)
    if isinstance(client, anthropic.Anthropic):
        from l0.client.sync import SyncAnthropic

        fallbacks = tuple(async_twin(f) if isinstance(f, anthropic.Anthropic) else
                          (async_twin(f[0]), f[1]) if isinstance(f, tuple) and isinstance(f[0], anthropic.Anthropic)
                          else f for f in o.fallbacks)
        o = Options(**{**o.__dict__, "fallbacks": fallbacks})
        return SyncAnthropic(client, AnthropicWrapped(async_twin(client), o))
    return AnthropicWrapped(client, o)
