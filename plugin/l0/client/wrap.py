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

from l0.client.endpoints import FactoryEndpoint, ResumeRefused, SDKEndpoint, ServerEndpoint, ServerInfo, probe
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
        self._it: AsyncIterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._it is None:
            self._it = self.session.__aiter__()
        return self._it

    async def __anext__(self) -> Any:
        return await self.__aiter__().__anext__()

    async def close(self) -> None:
        if self._it is not None:
            await self._it.aclose()

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


class _Create:
    def __init__(self, owner: "WrappedClient", kind: str) -> None:
        self.owner, self.kind = owner, kind

    async def create(self, **params: Any) -> Any:
        return await self.owner._create(self.kind, params)


class Namespace:
    def __init__(self, inner: Any, **attrs: Any) -> None:
        self._inner = inner
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class WrappedClient:
    """An ``AsyncOpenAI`` with hardened ``chat.completions.create`` and
    ``completions.create``; every other attribute is the wrapped client's."""

    def __init__(self, client: Any, options: Options) -> None:
        self._client = client
        self._options = options
        self.chat = Namespace(client.chat, completions=Namespace(client.chat.completions,
                                                                    create=_Create(self, "chat").create))
        self.completions = Namespace(client.completions, create=_Create(self, "completion").create)
        self.last: Session | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _endpoints(self, kind: str, params: dict) -> list[SDKEndpoint]:
        eps: list[SDKEndpoint] = []
        for client, overrides in [(self._client, {})] + [_fallback(f, self._client) for f in self._options.fallbacks]:
            eps.append(SDKEndpoint(client, kind, {**params, **overrides}, self._options, eps))
        return eps

    async def _create(self, kind: str, params: dict) -> Any:
        o = self._options
        if not params.get("stream"):
            from l0.client.whole import respond
            return await respond(self._endpoints(kind, params), kind, o)
        if (params.get("n") or 1) > 1:
            return await self._pass_through(kind, params)
        params = {k: v for k, v in params.items() if k != "stream"}
        session = Session(self._endpoints(kind, params), kind=kind, retry=o.retry, timeouts=o.timeout,
                          emit=o.callbacks, log=o.log, sleep=o.sleep, clock=o.clock,
                          check_zero_output=o.check_zero_output, guardrails=o.guardrails, drift=o.drift,
                          hold=o.hold)
        self.last = session
        return L0Stream(session)


    async def _pass_through(self, kind: str, params: dict) -> "PassThrough":
        """A valid call L0 does not harden (streamed ``n > 1``): sent as it is
        to the wrapped client, said once per process as a warning and on the
        stream (``hardened`` False, ``reason``)."""
        global _WARNED
        reason = ("streaming with n > 1 is passed through unhardened (no retry, timeout, fallback or resume): "
                  "ask for one choice per request, or use l0.samples / l0.consensus_of, to harden it")
        if not _WARNED:
            _WARNED = True
            warnings.warn("l0: " + reason, L0Warning, stacklevel=3)
        api = self._client.chat.completions if kind == "chat" else self._client.completions
        self.last = None
        return PassThrough(await api.create(**params), reason)


class L0Warning(UserWarning):
    """A valid call that ``l0.wrap`` passes through without hardening it."""


_WARNED = False


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
    session = Session(eps, kind=kind, retry=o.retry, timeouts=o.timeout, emit=o.callbacks, log=o.log,
                      sleep=o.sleep, clock=o.clock, check_zero_output=o.check_zero_output, require_finish=False,
                      guardrails=o.guardrails, drift=o.drift, hold=o.hold, adapter=reader)
    return L0Stream(session)


__all__ = ["wrap", "run", "probe", "WrappedClient", "L0Stream", "Options", "ServerInfo", "ResumeRefused",
           "Category"]
