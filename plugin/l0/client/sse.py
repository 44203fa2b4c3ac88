"""The one server-sent-events reader of the client: OpenAI-compatible
``/v1/chat/completions`` and ``/v1/completions`` streams as chunk dicts.

``data: {...}`` lines are chunks, ``data: [DONE]`` and every other line
(comments, ``event:``, blank keep-alives) are skipped. An error event sent
after the 200 (``data: {"error": ...}``: the engine failed mid-stream) raises
:class:`StreamError`, status 500, which the retry policy treats as transient.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterable, Iterator


class StreamError(Exception):
    """A non-200 answer, or an error event inside a stream. ``status_code``
    and ``response.headers`` are what :func:`l0.client.retry.classify` and
    ``Retry-After`` read; ``message``: the server's words; ``body``: its JSON
    error, if any."""

    def __init__(self, status_code: int, headers: dict, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message[:500]}")
        self.status_code = status_code
        self.message = message
        self.body = body
        self.response = type("Response", (), {"headers": headers, "status_code": status_code})()


def chunk_of(line: str) -> dict | None:
    """The chunk one SSE line carries, None for any other line. Raises
    :class:`StreamError` for an error event and ValueError for bad JSON."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    chunk = json.loads(data)
    if isinstance(chunk, dict) and "error" in chunk:
        err = chunk["error"]
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        raise StreamError(500, {}, f"server error in stream: {message}", chunk)
    return chunk


async def achunks(lines: AsyncIterator[str]) -> AsyncIterator[dict]:
    """The chunks of an async iterator of SSE lines (``httpx``'s ``aiter_lines``)."""
    async for line in lines:
        chunk = chunk_of(line)
        if chunk is not None:
            yield chunk


def chunks(lines: Iterable[str]) -> Iterator[dict]:
    """The chunks of SSE lines (``httpx``'s ``iter_lines``)."""
    for line in lines:
        chunk = chunk_of(line)
        if chunk is not None:
            yield chunk


def error_of(status: int, headers: dict, text: str) -> StreamError:
    """A non-200 answer as :class:`StreamError` with the server's message
    (OpenAI's ``{"error": {"message": ...}}``) when the body has one."""
    body: Any = None
    message = text
    try:
        body = json.loads(text)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
        elif isinstance(body, dict) and body.get("message"):
            message = str(body["message"])
    except ValueError:
        pass
    return StreamError(status, headers, message, body)
