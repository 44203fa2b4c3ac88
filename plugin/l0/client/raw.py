"""``with_raw_response`` and ``with_streaming_response`` through ``l0.wrap``
(what frameworks such as LangChain call to read response headers).

Both are hardened: the call runs through the same session as ``create``
(retries, timeouts, fallbacks, resume), and the raw response's headers,
status and ``http_response`` are the ones of the attempt that answered
(for a stream: the first attempt's, the one the caller's headers came
from, opened before the call returns, as the SDK's call opens it).

* ``with_raw_response.create(...)``: non-streaming, the SDK's own
  ``LegacyAPIResponse`` of the attempt that answered; streaming, a
  :class:`RawResponse` whose ``parse()`` is the hardened stream.
* ``with_streaming_response.create(...)``: an async context manager giving a
  :class:`StreamingResponse`: ``await parse()``; ``iter_lines()``,
  ``iter_bytes()``, ``iter_text()`` and ``read()`` give the hardened
  stream written as server-sent events (``data: {...}``, ``data: [DONE]``),
  or a whole response's body.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

from l0.client import chunks as ck


class RawResponse:
    """A hardened call's result (``parse()``) with the HTTP response of the
    attempt that answered (``headers``, ``status_code``, ``http_response``,
    ``request_id``; anything else is the ``httpx`` response's)."""

    def __init__(self, value: Any, http_response: Any) -> None:
        self._value = value
        self.http_response = http_response

    def parse(self, **_: Any) -> Any:
        return self._value

    @property
    def headers(self) -> Any:
        return self.http_response.headers if self.http_response is not None else {}

    @property
    def status_code(self) -> int:
        return self.http_response.status_code if self.http_response is not None else 200

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http_response, name)


class StreamingResponse(RawResponse):
    """What ``with_streaming_response`` gives inside its ``async with``."""

    async def parse(self, **_: Any) -> Any:   # type: ignore[override]
        return self._value

    async def iter_lines(self) -> AsyncIterator[str]:
        if not hasattr(self._value, "__aiter__"):
            for line in (await self.read()).decode().splitlines():
                yield line
            return
        async for chunk in self._value:
            yield "data: " + json.dumps(ck.as_dict(chunk))
            yield ""
        yield "data: [DONE]"
        yield ""

    async def iter_text(self, chunk_size: int | None = None) -> AsyncIterator[str]:
        async for line in self.iter_lines():
            yield line + "\n"

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        async for text in self.iter_text():
            yield text.encode()

    async def read(self) -> bytes:
        if not hasattr(self._value, "__aiter__"):
            return json.dumps(ck.as_dict(self._value)).encode()
        return b"".join([b async for b in self.iter_bytes()])

    async def text(self) -> str:
        return (await self.read()).decode()

    async def json(self) -> Any:
        return json.loads(await self.read())

    async def close(self) -> None:
        if hasattr(self._value, "close"):
            await self._value.close()


class StreamingContext:
    """``async with client....with_streaming_response.create(...) as r``."""

    def __init__(self, opening: Any) -> None:
        self._opening = opening
        self._response: StreamingResponse | None = None

    async def __aenter__(self) -> StreamingResponse:
        value, http_response, _ = await self._opening   # (value, HTTP response, the SDK's raw response)
        self._response = StreamingResponse(value, http_response)
        return self._response

    async def __aexit__(self, *exc: Any) -> None:
        if self._response is not None:
            await self._response.close()
