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

    def verdict(self, wait_s: float | None = None) -> dict | None:
        return self._loop.run(self._stream.verdict(wait_s))

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def token_ids(self) -> list[int] | None:
        return self._stream.token_ids


class SyncWrappedClient:
    """An ``openai.OpenAI`` with hardened ``chat.completions.create`` and
    ``completions.create`` (run on an :class:`AsyncOpenAI` twin, on a loop
    thread); every other attribute is the wrapped client's."""

    def __init__(self, client: Any, inner: WrappedClient) -> None:
        self._client = client
        self._inner = inner
        self._loop = _LoopThread()
        self.chat = Namespace(client.chat, completions=Namespace(client.chat.completions,
                                                                    create=self._creator("chat")))
        self.completions = Namespace(client.completions, create=self._creator("completion"))

    def _creator(self, kind: str):
        def create(**params: Any) -> Any:
            got = self._loop.run(self._inner._create(kind, params))
            return SyncL0Stream(got, self._loop) if isinstance(got, (L0Stream, PassThrough)) else got
        return create

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
