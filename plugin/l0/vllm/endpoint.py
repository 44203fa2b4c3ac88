"""L0's ``vllm.endpoint_plugins`` entry (loaded when ``VLLM_PLUGINS`` names
``l0``, as ``l0 serve`` does): validates ``vllm_xargs`` before vLLM sees the
request, so a bad L0 option is an HTTP 400 for streaming requests too. (vLLM
validates streaming requests after the 200 and its event-stream has begun; the
error then arrives as an SSE event.)
"""
from __future__ import annotations

import json

from l0.config import OptionError, params_from_xargs

_PATHS = ("/v1/chat/completions", "/v1/completions")


def _error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "param": None,
                                 "code": 400}}).encode()


class XargsValidation:
    """Pure ASGI middleware: reads the JSON body of completion requests, checks
    the ``l0_*`` entries of ``vllm_xargs``, answers 400 on a bad one, and
    replays the body unchanged otherwise. Bodies it can't parse pass through
    (vLLM answers those itself)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in _PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                await self.app(scope, _replay([], receive, message), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            doc = json.loads(body)
            xargs = doc.get("vllm_xargs") if isinstance(doc, dict) else None
            if isinstance(xargs, dict):
                from l0.vllm.logits_processor import server_config
                params_from_xargs(xargs, server_config())
        except OptionError as exc:
            payload = _error_body(str(exc))
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        except ValueError:
            pass
        await self.app(scope, _replay([body], receive), send)


def _replay(chunks, receive, first=None):
    """A ``receive`` that hands out the buffered body, then defers to the real
    one (vLLM listens on it for the client's disconnect while streaming)."""
    pending = ([first] if first else []) + [
        {"type": "http.request", "body": c, "more_body": False} for c in chunks]

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()
    return replay


class L0EndpointPlugin:
    """The object vLLM's endpoint-plugin loader instantiates."""

    name = "l0"
    required_tasks = None

    def attach_router(self, app) -> None:
        app.add_middleware(XargsValidation)

    async def init_state(self, engine_client, state, args) -> None:
        return None
