"""``l0.wrap(client)``: an OpenAI SDK client (or ``l0.http(url)``, the same
surface over plain HTTP) whose streams are hardened, and
``l0.run(stream=factory)`` for any async stream of chunks.

    client = l0.wrap(AsyncOpenAI(base_url=..., api_key=...),
                     fallbacks=[AsyncOpenAI(base_url=other)], log="streams.jsonl")
    stream = await client.chat.completions.create(model=..., messages=..., stream=True)
    async for chunk in stream:          # openai.types.chat.ChatCompletionChunk
        ...

The wrapped client answers ``chat.completions.create`` and
``completions.create`` (streaming through a :class:`~l0.client.session.Session`;
non-streaming with classified retries and fallbacks) and hands every other
attribute to the client it wraps. Its own SDK retries are turned off (this
layer counts them); the SDK's conventions (``Retry-After``, backoff) are kept
by the default :class:`~l0.client.retry.Retry`.

Each endpoint's server is probed once (``GET /l0/health``; ``GET /version``
for vLLM) and the answer cached per base URL. Against L0 servers a request
gets an ``l0_key`` and ``return_token_ids`` and resumes from the checkpoint;
elsewhere the text received is continued.
"""
from __future__ import annotations

import warnings
from typing import Any, AsyncIterator, Callable, Sequence

from l0.client.endpoints import (FactoryEndpoint, ResumeRefused, SDKEndpoint, ServerEndpoint, ServerInfo, probe,
                                 without_retries)
from l0.client.options import Options, options_from
from l0.client.retry import Category
from l0.client.session import Session


class L0Stream:
    """What a wrapped streaming ``create`` returns: iterate it like the SDK's
    ``AsyncStream``. ``session`` holds the events, attempts, token ids and
    the server's verdict."""

    hardened = True

    def __init__(self, session: Session) -> None:
        self.session = session
        self._it: Any = None
        self._ahead: list[Any] = []      # read by prefetch(), not yet handed out
        self._done = False

    def __aiter__(self) -> "L0Stream":
        return self

    async def __anext__(self) -> Any:
        if self._ahead:
            return self._ahead.pop(0)
        if self._done:
            raise StopAsyncIteration
        if self._it is None:
            self._it = self.session.__aiter__()
        return await self._it.__anext__()

    async def prefetch(self) -> None:
        """Open the stream now and keep its first event (raises what the
        first attempts raise): for callers that read the response's headers
        before iterating."""
        try:
            self._ahead.append(await self.__anext__())
        except StopAsyncIteration:
            self._done = True

    async def aclose(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._it is not None:
            await self._it.aclose()

    @property
    def response(self) -> "_StreamResponse":
        """The HTTP response of the stream's first attempt (``headers``;
        ``aclose()`` closes the hardened stream): what the SDK's stream
        helpers read from a raw stream."""
        return _StreamResponse(self)

    async def __aenter__(self) -> "L0Stream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def verdict(self, wait_s: float | None = None) -> dict | None:
        """What L0 on the server did to this stream (see
        :meth:`SDKEndpoint.verdict`); None when the endpoint is not an L0
        server or the record can't be read. Fetched once, then kept."""
        s = self.session
        if s.verdict is not None:
            return s.verdict
        ep = s.endpoint
        if not isinstance(ep, ServerEndpoint) or not ep.l0 or not s.l0_key:
            return None
        return await ep.verdict(s, wait_s)

    @property
    def text(self) -> str:
        return self.session.received.text

    @property
    def token_ids(self) -> list[int] | None:
        return self.session.received.token_ids


class _StreamResponse:
    def __init__(self, stream: L0Stream) -> None:
        self._stream = stream

    async def aclose(self) -> None:
        await self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream.session.response, name)


class _Api:
    """One hardened API of the wrapped client (``chat.completions``,
    ``completions``, ``responses``); every other attribute is the SDK's."""

    def __init__(self, owner: "WrappedClient", kind: str, inner: Any) -> None:
        self._owner, self._kind, self._inner = owner, kind, inner
        self.with_raw_response = _RawApi(self, streaming=False)
        self.with_streaming_response = _RawApi(self, streaming=True)

    async def create(self, **params: Any) -> Any:
        return await self._owner._create(self._kind, params)

    async def parse(self, **params: Any) -> Any:
        """The SDK's ``parse`` (a parsed ``response_format`` or tool
        arguments), with classified retries and fallbacks."""
        return await self._owner._create(self._kind, params, method="parse")

    def stream(self, **params: Any) -> Any:
        """``chat.completions.stream``: the SDK's own stream manager
        (``content.delta`` events, ``get_final_completion()``, parsed
        ``response_format``) over the hardened chunks. Other APIs' stream
        helpers are passed through unhardened (an :class:`L0Warning`)."""
        if self._kind != "chat":
            _warn_once(f"{self._kind}.stream() is passed through unhardened: use create(stream=True)")
            return self._inner.stream(**params)
        from openai.lib._chat_completion_resources import async_stream

        return async_stream(self, **params)   # the SDK's helper, calling this object's create

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RawApi:
    """``with_raw_response`` / ``with_streaming_response`` of one hardened API (:mod:`l0.client.raw`)."""

    def __init__(self, api: _Api, streaming: bool) -> None:
        self._api, self._streaming = api, streaming

    def create(self, **params: Any) -> Any:
        return self._call("create", params)

    def parse(self, **params: Any) -> Any:
        return self._call("parse", params)

    def _call(self, method: str, params: dict) -> Any:
        from l0.client.raw import StreamingContext

        opening = self._api._owner._create(self._api._kind, params, method=method, raw=True)
        if self._streaming:
            return StreamingContext(opening)

        async def legacy():
            from l0.client.raw import RawResponse

            value, http_response, whole = await opening
            return whole if whole is not None else RawResponse(value, http_response)
        return legacy()

    def __getattr__(self, name: str) -> Any:
        inner = self._api._inner
        return getattr(inner.with_streaming_response if self._streaming else inner.with_raw_response, name)


def _omitted(v: Any) -> bool:
    """The SDK's placeholders for an argument not given (its helpers pass them on)."""
    return type(v).__name__ in ("NotGiven", "Omit")


class Namespace:
    def __init__(self, inner: Any, **attrs: Any) -> None:
        self._inner = inner
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class WrappedClient:
    """An ``AsyncOpenAI`` with hardened ``chat.completions`` (``create``,
    ``parse``, ``stream``), ``completions.create`` and ``responses.create``
    (each with ``with_raw_response`` and ``with_streaming_response``);
    every other attribute is the wrapped client's."""

    def __init__(self, client: Any, options: Options) -> None:
        self._client = client
        self._options = options
        self.chat = Namespace(client.chat, completions=_Api(self, "chat", client.chat.completions))
        self.completions = _Api(self, "completion", client.completions)
        if hasattr(client, "responses"):
            self.responses = _Api(self, "responses", client.responses)
        self.last: Session | None = None
        self._sources: list[tuple[Any, dict]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _endpoints(self, kind: str, params: dict) -> list[SDKEndpoint]:
        cls = SDKEndpoint
        if kind == "responses":
            from l0.client.responses import ResponsesEndpoint as cls   # type: ignore[assignment]
        if self._sources is None:
            self._sources = sources(self._client, self._options.fallbacks)
        return [cls(client, kind, {**params, **overrides}, self._options) for client, overrides in self._sources]

    async def _create(self, kind: str, params: dict, method: str = "create", raw: bool = False) -> Any:
        """``raw``: (value, the answering attempt's HTTP response, the SDK's
        raw response of a whole answer or None)."""
        o = self._options
        params = {k: v for k, v in params.items() if not _omitted(v)}
        if not params.get("stream"):
            return await self._whole(kind, params, method, raw)
        if (params.get("n") or 1) > 1:
            got = await self._pass_through(kind, params)
            return (got, getattr(got, "response", None), None) if raw else got
        params = {k: v for k, v in params.items() if k != "stream"}
        adapter = None
        if kind == "responses":
            from l0.client.responses import ResponsesAdapter
            adapter = ResponsesAdapter()
        session = Session.of(self._endpoints(kind, params), o, kind=kind, adapter=adapter)
        self.last = session
        stream = L0Stream(session)
        if raw:   # the caller reads headers now: open the first attempt, as the SDK's call does
            await stream.prefetch()
            return stream, session.response, None
        return stream

    async def _whole(self, kind: str, params: dict, method: str, raw: bool) -> Any:
        from l0.client.whole import api_of, call_openai, read_openai, respond

        read = read_openai(kind)
        if kind == "responses":
            from l0.client.responses import read_response as read
        if raw:
            def call(ep):
                return getattr(api_of(ep.client, kind).with_raw_response, method)(**ep.params)
            got = await respond(self._endpoints(kind, params), kind, self._options, call=call,
                                read=lambda r: read(r.parse()))
            return got.parse(), got.http_response, got
        return await respond(self._endpoints(kind, params), kind, self._options, call=call_openai(kind, method),
                             read=read)

    async def _pass_through(self, kind: str, params: dict) -> "PassThrough":
        """A valid call L0 does not harden (streamed ``n > 1``): sent as it is
        to the wrapped client, said once per process as a warning and on the
        stream (``hardened`` False, ``reason``)."""
        reason = ("streaming with n > 1 is passed through unhardened (no retry, timeout, fallback or resume): "
                  "ask for one choice per request, or use l0.samples / l0.consensus_of, to harden it")
        _warn_once(reason)
        from l0.client.whole import api_of

        self.last = None
        return PassThrough(await api_of(self._client, kind).create(**params), reason)


class L0Warning(UserWarning):
    """A valid call that ``l0.wrap`` passes through without hardening it."""


_WARNED = False


def _warn_once(reason: str) -> None:
    """One :class:`L0Warning` per process for the calls passed through unhardened."""
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn("l0: " + reason, L0Warning, stacklevel=4)


class PassThrough:
    """The wrapped client's own stream, not hardened (``hardened`` False,
    ``reason`` says why): iterate and close it as the SDK's; every other
    attribute is the SDK stream's."""

    hardened = False
    session = None

    def __init__(self, stream: Any, reason: str) -> None:
        self._stream, self.reason = stream, reason

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._stream.__aiter__()

    async def __anext__(self) -> Any:
        return await self._stream.__anext__()

    async def close(self) -> None:
        await self._stream.close()

    async def __aenter__(self) -> "PassThrough":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def sources(primary: Any, fallbacks: Sequence[Any], api: str = "chat") -> list[tuple[Any, dict]]:
    """(client with the SDK's retries off, request overrides) for the primary
    and each fallback, in order: made once per wrapped client, every stream's
    endpoints share them."""
    quiet: dict[int, Any] = {}

    def once(c: Any) -> Any:
        if id(c) not in quiet:
            quiet[id(c)] = without_retries(c)
        return quiet[id(c)]
    return [(once(primary), {})] + [(once(c), o) for c, o in (_fallback(f, primary, api) for f in fallbacks)]


def _fallback(f: Any, primary: Any, api: str = "chat") -> tuple[Any, dict]:
    """A fallback: an SDK client (same request), a dict of overrides (same
    client, e.g. another model), or (client, overrides). ``api``: the
    attribute a client of the primary's SDK has (``chat``; ``messages``)."""
    if isinstance(f, dict):
        return primary, dict(f)
    if isinstance(f, tuple) and len(f) == 2:
        return f[0], dict(f[1])
    if hasattr(f, api) and hasattr(f, "base_url"):
        return f, {}
    raise TypeError(f"l0: a fallback is a client, a dict of overrides or (client, overrides), not {type(f).__name__}")


def wrap(client: Any, **options: Any) -> "WrappedClient | Any":
    """Harden ``client`` (``openai.AsyncOpenAI``, ``openai.OpenAI``,
    ``l0.http(url)``: no SDK needed, or ``anthropic.AsyncAnthropic`` /
    ``anthropic.Anthropic``: :mod:`l0.client.anthropic`).
    Options: ``retry`` (:class:`~l0.client.retry.Retry` or its fields as a dict),
    ``timeout`` (:class:`~l0.client.retry.Timeouts`, a dict, or seconds between
    tokens), ``fallbacks`` (clients, dicts of overrides, or (client,
    overrides)), ``log`` (a path: the atomic event log) and ``log_fsync``,
    ``resume``, ``check_zero_output``, ``l0_resume``, ``verdict`` (fetch
    what L0 did from the record when the stream ends) and
    ``verdict_wait_s``, ``guardrails`` (a preset name, rules, or an
    :class:`l0.client.guardrails.Guardrails`), ``drift`` (True, drift kinds, or
    monitors; against L0 servers the server's loop verdict joins them),
    ``hold`` (streams: deliver once the answer passed its end checks, so an
    ``error`` violation is retried unseen), callbacks ``on_start`` ...
    ``on_violation``, ``on_drift``, ``on_event`` (or
    ``callbacks=Callbacks(...)``), ``trace`` (True or an ``l0.Tracing``:
    OpenTelemetry spans and metrics, :mod:`l0.client.tracing`), ``sleep`` and
    ``clock`` (injectable).
    Raises TypeError for another object or an unknown option."""
    from l0.client.http import HttpClient

    if isinstance(client, HttpClient):
        return WrappedClient(client, options_from(**options))
    if type(client).__module__.split(".")[0] == "anthropic":
        from l0.client.anthropic import wrap_anthropic
        return wrap_anthropic(client, **options)
    try:
        import openai
    except ImportError:
        raise TypeError(f"l0.wrap takes an openai client (pip install openai) or l0.http(url), "
                        f"not {type(client).__name__}") from None

    if isinstance(client, openai.OpenAI):
        from l0.client.sync import SyncWrappedClient, async_twin

        o = options_from(**options)
        fallbacks = tuple(async_twin(f) if isinstance(f, openai.OpenAI) else
                          (async_twin(f[0]), f[1]) if isinstance(f, tuple) and isinstance(f[0], openai.OpenAI)
                          else f for f in o.fallbacks)
        o = Options(**{**o.__dict__, "fallbacks": fallbacks})
        return SyncWrappedClient(client, WrappedClient(async_twin(client), o))
    if not isinstance(client, openai.AsyncOpenAI) and not hasattr(client, "chat"):
        raise TypeError(f"l0.wrap takes an openai.AsyncOpenAI or openai.OpenAI client, not {type(client).__name__}")
    return WrappedClient(client, options_from(**options))



def run(stream: Callable[..., Any], *, fallbacks: Sequence[Callable[..., Any]] = (), kind: str = "run",
        adapter: Any = None, **options: Any) -> L0Stream:
    """Harden any async iterator of events: OpenAI chunks, their dicts, or
    strings; any other protocol through ``adapter`` (an
    :class:`l0.Adapter`, or a function ``event -> l0.Parts``; see
    :mod:`l0.client.adapters`). ``stream`` and each fallback are factories
    called per attempt; one that takes an argument gets the text received
    so far and continues it. Same options as :func:`wrap`."""
    from l0.client.adapters import as_adapter

    reader = as_adapter(adapter, kind)
    o = options_from(**options)
    eps = [FactoryEndpoint(stream, "primary")] + [FactoryEndpoint(f, f"fallback-{i + 1}")
                                                  for i, f in enumerate(fallbacks)]
    session = Session.of(eps, o, kind=kind, require_finish=False, adapter=reader)
    return L0Stream(session)


__all__ = ["wrap", "run", "probe", "WrappedClient", "L0Stream", "Options", "ServerInfo", "ResumeRefused",
           "Category"]
