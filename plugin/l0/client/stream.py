"""One synchronous streaming chat call with no retries, keeping exact token
ids: the measuring stick of ``l0 demo``, the end-to-end tests and the
benchmarks, which need to see a server's answer as it is (a hardened stream
is ``l0.wrap(l0.http(url))``). SSE read by :mod:`l0.client.sse`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from l0.client.sse import StreamError, chunks, error_of


@dataclass
class StreamResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    status: int = 200
    error: str | None = None


def stream_chat(url: str, model: str, prompt: str, max_tokens: int, xargs: dict[str, Any] | None = None,
                on_delta: Callable[[str, list[int]], None] | None = None, timeout: float = 600.0,
                **body: Any) -> StreamResult:
    """Greedy (unless ``body`` says otherwise) streaming chat completion.

    Returns the token ids and text received, the finish reason, or the HTTP
    status and error message when the server refuses the request.
    """
    import httpx

    payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
               "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
               "return_token_ids": True, **body}
    if xargs:
        payload["vllm_xargs"] = xargs
    out = StreamResult()
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=timeout) as resp:
        out.status = resp.status_code
        if resp.status_code != 200:
            resp.read()
            out.error = error_of(resp.status_code, {}, resp.text).message
            return out
        try:
            for chunk in chunks(resp.iter_lines()):
                for choice in chunk.get("choices", []):
                    ids = choice.get("token_ids") or []
                    delta = (choice.get("delta") or {}).get("content") or ""
                    out.token_ids += ids
                    out.text += delta
                    if choice.get("finish_reason"):
                        out.finish_reason = choice["finish_reason"]
                    if on_delta and (ids or delta):
                        on_delta(delta, ids)
        except StreamError as exc:   # the engine failed mid-stream: what came before is kept
            out.error = str(exc)
    return out
