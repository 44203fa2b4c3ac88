"""The synchronous twin of ``l0.wrap``: ``l0.wrap(openai.OpenAI(...))``
runs each call on an ``AsyncOpenAI`` twin on one event loop thread per
wrapped client, and hands chunks to the caller's thread."""
from __future__ import annotations

import asyncio
from typing import Any

from l0.client.session import Session
from l0.client.wrap import L0Stream, Namespace, PassThrough, WrappedClient


def async_twin(client: Any) -> Any:
    """An ``AsyncOpenAI`` with the synchronous client's address, key, headers
    and timeout (its own ``http_client``, if any, can't be shared)."""
    import openai

    return openai.AsyncOpenAI(api_key=client.api_key, organization=client.organization, project=client.project,
                              base_url=client.base_url, timeout=client.timeout, max_retries=0,
                              default_headers=getattr(client, "_custom_headers", None) or None,
                              default_query=getattr(client, "_custom_query", None) or None)


class _LoopThread:
    """One event loop on a daemon thread per synchronous wrapped client: its
    streams run there (the timers are asyncio's), the caller's thread waits
    for each chunk. Callbacks run on that thread."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="l0-client", daemon=True)
        self.thread.start()

    def run(self, awaitable) -> Any:
        async def wrapper():
            return await awaitable
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result()


class SyncL0Stream:
    """What a synchronous wrapped streaming ``create`` returns: iterate it
    like the SDK's ``Stream``."""

    def __init__(self, stream: L0Stream, loop: _LoopThread) -> None:
        self._stream, self._loop = stream, loop
        self._it = stream.__aiter__()
        self.session = stream.session

    def __iter__(self) -> "SyncL0Stream":
        return self

    def __next__(self) -> Any:
        try:
            return self._loop.run(self._it.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.run(self._stream.close())

    def __enter__(self) -> "SyncL0Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def hardened(self) -> bool:
        return self._stream.hardened

    @property
    def response(self) -> "_SyncResponse":
        """The first attempt's HTTP response (``headers``; ``close()`` closes
        the stream): what the SDK's stream helpers read."""
        return _SyncResponse(self)

    def verdict(self, wait_s: float | None = None) -> dict | None:
        return self._loop.run(self._stream.verdict(wait_s))

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def token_ids(self) -> list[int] | None:
        return self._stream.token_ids


class _SyncResponse:
    def __init__(self, stream: SyncL0Stream) -> None:
        self._stream = stream

    def close(self) -> None:
        self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream.session.response if self._stream.session else None, name)


class _SyncApi:
    """One hardened API of the synchronous wrapped client: ``create``,
    ``parse``, ``stream`` (chat), ``with_raw_response``; the rest (and
    ``with_streaming_response``, passed through unhardened with an
    :class:`~l0.client.wrap.L0Warning`) is the SDK's."""

    def __init__(self, owner: "SyncWrappedClient", kind: str, inner: Any) -> None:
        self._owner, self._kind, self._inner = owner, kind, inner
        self.with_raw_response = Namespace(inner.with_raw_response,
                                           create=lambda **p: owner._run(kind, p, raw=True),
                                           parse=lambda **p: owner._run(kind, p, "parse", raw=True))

    def create(self, **params: Any) -> Any:
        return self._owner._run(self._kind, params)

    def parse(self, **params: Any) -> Any:
        return self._owner._run(self._kind, params, "parse")

    def stream(self, **params: Any) -> Any:
        """``chat.completions.stream``: the SDK's ``ChatCompletionStreamManager``
        over the hardened chunks."""
        from l0.client.wrap import _warn_once

        if self._kind != "chat":
            _warn_once(f"{self._kind}.stream() is passed through unhardened: use create(stream=True)")
            return self._inner.stream(**params)
        from openai.lib._chat_completion_resources import stream

        return stream(self, **params)

    @property
    def with_streaming_response(self) -> Any:
        from l0.client.wrap import _warn_once

        _warn_once("with_streaming_response on a synchronous client is passed through unhardened")
        return self._inner.with_streaming_response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class SyncWrappedClient:
    """An ``openai.OpenAI`` with hardened ``chat.completions.create`` and
    ``completions.create`` (run on an :class:`AsyncOpenAI` twin, on a loop
    thread); every other attribute is the wrapped client's."""

    def __init__(self, client: Any, inner: WrappedClient) -> None:
        self._client = client
        self._inner = inner
        self._loop = _LoopThread()
        self.chat = Namespace(client.chat, completions=_SyncApi(self, "chat", client.chat.completions))
        self.completions = _SyncApi(self, "completion", client.completions)
        if hasattr(client, "responses"):
            self.responses = _SyncApi(self, "responses", client.responses)

    def _run(self, kind: str, params: dict, method: str = "create", raw: bool = False) -> Any:
        got = self._loop.run(self._inner._create(kind, params, method=method, raw=raw))
        if raw:
            from l0.client.raw import RawResponse

            value, http_response, whole = got
            return whole if whole is not None else RawResponse(self._sync(value), http_response)
        return self._sync(got)

    def _sync(self, got: Any) -> Any:
        return SyncL0Stream(got, self._loop) if isinstance(got, (L0Stream, PassThrough)) else got

    @property
    def last(self) -> Session | None:
        return self._inner.last

    def close(self) -> None:
        """Close the twin clients and stop the loop thread (the wrapped
        synchronous client itself is the caller's to close)."""
        async def shutdown():
            await self._inner._client.close()
            for f in self._inner._options.fallbacks:
                c = f[0] if isinstance(f, tuple) else f
                if hasattr(c, "close") and not isinstance(f, dict):
                    await c.close()
        self._loop.run(shutdown())
        self._loop.loop.call_soon_threadsafe(self._loop.loop.stop)
        self._loop.thread.join(10)
        self._loop.loop.close()

    def __enter__(self) -> "SyncWrappedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _SyncMessages:
    def __init__(self, owner: "SyncAnthropic") -> None:
        self._owner = owner

    def create(self, **params: Any) -> Any:
        got = self._owner._loop.run(self._owner._inner._create(params))
        return SyncL0Stream(got, self._owner._loop) if isinstance(got, L0Stream) else got

    def stream(self, **params: Any) -> Any:
        """The SDK's ``MessageStreamManager`` over the hardened events."""
        from anthropic.lib.streaming import MessageStreamManager

        if params.get("output_format") is not None:
            from l0.client.anthropic import _warn
            _warn("messages.stream(output_format=...) is passed through unhardened")
            return self._owner._client.messages.stream(**params)
        from anthropic import NOT_GIVEN
        return MessageStreamManager(lambda: self.create(**params, stream=True), output_format=NOT_GIVEN)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.messages, name)


class SyncAnthropic(SyncWrappedClient):
    """An ``anthropic.Anthropic`` with hardened ``messages.create`` and
    ``messages.stream`` (run on an ``AsyncAnthropic`` twin, on a loop
    thread); every other attribute is the wrapped client's."""

    def __init__(self, client: Any, inner: Any) -> None:
        self._client = client
        self._inner = inner
        self._loop = _LoopThread()
        self.messages = _SyncMessages(self)
