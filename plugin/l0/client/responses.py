"""``client.responses.create`` (OpenAI's Responses API) through ``l0.wrap``.

Streaming: the SDK's own ``ResponseStreamEvent`` objects, hardened like a
chat stream — timeouts, classified retries, the zero-output check,
guardrails, fallbacks — and a break after text was delivered resumes by
text continuation on vLLM servers: the answer so far continues on the same
server's ``/v1/chat/completions`` (``continue_final_message``), written back
as this response's ``response.output_text.delta`` events (same item id,
output index, content index; sequence numbers going on), then its
``output_text.done``, ``content_part.done``, ``output_item.done`` and
``response.completed`` carrying the whole text (and ``status``
``incomplete`` at the token budget, as vLLM writes it). Not token-exact: vLLM's
Responses stream carries no token ids. Against a server that isn't vLLM a
break after delivery moves on to the next fallback (NotResumable), as does
a break after a function call began. On L0 servers the request carries an
``l0_key`` (``vllm_xargs``), so L0 on the server records and acts on it.

Non-streaming: classified retries, the zero-output check, guardrails and
fallbacks around the SDK's own call (``l0.client.whole.respond``).
"""
from __future__ import annotations

from typing import Any, AsyncIterator

from l0.client import chunks as ck
from l0.client.adapters import Adapter
from l0.client.chunks import Parts
from l0.client.endpoints import ChatRouteEndpoint, SDKEndpoint, chat_content, image_part
from l0.client.session import NotResumable, Plan, Session

_OPENING = {"response.created", "response.in_progress", "response.content_part.added", "response.queued"}
_CLOSING = {"response.output_text.done", "response.content_part.done", "response.output_item.done"}


class ResponsesStreamError(Exception):
    """A ``response.failed`` or ``error`` event inside a 200 stream
    (``status_code`` 500: retried as a server failure)."""

    status_code = 500


class ResponsesAdapter(Adapter):
    """The Responses API's stream events (SDK objects or their dicts). One
    per stream: it remembers where the message's text goes and the last
    sequence number."""

    def __init__(self) -> None:
        self.item_id: str | None = None
        self.output_index = 0
        self.content_index = 0
        self.seq = -1

    def parts(self, event: Any) -> Parts:
        d = ck.as_dict(event)
        kind = d.get("type", "")
        if isinstance(d.get("sequence_number"), int):
            self.seq = max(self.seq, d["sequence_number"])
        if kind == "response.output_text.delta":
            self.item_id, self.output_index = d.get("item_id"), int(d.get("output_index") or 0)
            self.content_index = int(d.get("content_index") or 0)
            return Parts(text=d.get("delta") or "")
        if kind in _OPENING:
            return Parts(role_only=True)
        if kind == "response.output_item.added":
            item = d.get("item") or {}
            if item.get("type") == "message":
                self.item_id, self.output_index = item.get("id"), int(d.get("output_index") or 0)
                return Parts(role_only=True)
            if item.get("type") == "function_call":
                return Parts(tool_calls=True, tool_pieces=((int(d.get("output_index") or 0), item.get("call_id"),
                                                            item.get("name"), ""),))
            return Parts(role_only=True)
        if kind == "response.function_call_arguments.delta":
            return Parts(tool_calls=True, tool_pieces=((int(d.get("output_index") or 0), None, None,
                                                        d.get("delta") or ""),))
        if kind.startswith("response.function_call_arguments"):
            return Parts(tool_calls=True)
        if kind in ("response.completed", "response.incomplete"):
            r = d.get("response") or {}
            # (vLLM ends with response.completed whatever the status; OpenAI's API with response.incomplete)
            finish = "length" if kind == "response.incomplete" or r.get("status") == "incomplete" else "stop"
            return Parts(finish_reason=finish, usage=r.get("usage") or None)
        if kind in ("response.failed", "error"):
            r = d.get("response") or {}
            err = r.get("error") or d
            raise ResponsesStreamError(f"{kind}: {err.get('code') or ''} {err.get('message') or ''}".strip())
        if kind in _CLOSING:
            return Parts()
        if kind.endswith(".delta"):   # reasoning and other deltas: kept as they came, not the answer's text
            return Parts(delta_extra={"type": kind})
        return Parts()

    def meta(self, event: Any) -> dict:
        d = ck.as_dict(event)
        return {"response": d.get("response") or {}, "sdk": not isinstance(event, dict)}

    def make(self, session: Any, p: Parts) -> list:
        """Text as ``response.output_text.delta`` events of the message
        being written; a finish as its ``done`` events and
        ``response.completed`` (or ``response.incomplete`` at the token
        budget) with the whole text (``usage`` None: not known after a
        resume)."""
        sdk = session.meta.get("sdk", True)
        out = []
        where = {"item_id": self.item_id, "output_index": self.output_index}
        if p.text:
            out.append(self._event({"type": "response.output_text.delta", **where,
                                    "content_index": self.content_index, "delta": p.text, "logprobs": []}, sdk))
        if p.finish_reason:
            text = session.received.text + p.text
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item = {"id": self.item_id, "type": "message", "role": "assistant", "status": "completed",
                    "content": [part]}
            out.append(self._event({"type": "response.output_text.done", **where,
                                    "content_index": self.content_index, "text": text, "logprobs": []}, sdk))
            out.append(self._event({"type": "response.content_part.done", **where,
                                    "content_index": self.content_index, "part": part}, sdk))
            out.append(self._event({"type": "response.output_item.done", "output_index": self.output_index,
                                    "item": item}, sdk))
            complete = p.finish_reason != "length"
            resp = dict(session.meta.get("response") or {})
            # usage None: the continuation's counts are not the response's (its prompt held the answer so far)
            resp.update(status="completed" if complete else "incomplete", output=[item], usage=None,
                        incomplete_details=None if complete else {"reason": "max_output_tokens"})
            # written as vLLM writes it (a resume runs on vLLM only): response.completed, the status inside
            out.append(self._event({"type": "response.completed", "response": resp}, sdk))
        return out

    def _event(self, d: dict, sdk: bool) -> Any:
        self.seq += 1
        d["sequence_number"] = self.seq
        if not sdk:
            return d
        try:
            from openai.types.responses import ResponseStreamEvent
            from pydantic import TypeAdapter
        except ImportError:
            return d
        try:
            return TypeAdapter(ResponseStreamEvent).validate_python(d)
        except Exception:   # noqa: BLE001 - a server's response object the SDK's model does not take whole
            return ck.as_dict(d)


def chat_messages(params: dict) -> list[dict]:
    """A Responses request's ``instructions`` and ``input`` as chat
    messages (text and image parts). Raises NotResumable for input a text
    continuation can't carry (function calls and outputs, previous
    responses by id)."""
    if params.get("previous_response_id") or params.get("conversation"):
        raise NotResumable("l0: a response that continues another by id can't be resumed as text")
    out: list[dict] = []
    if params.get("instructions"):
        out.append({"role": "system", "content": params["instructions"]})
    given = params.get("input")
    if isinstance(given, str):
        return out + [{"role": "user", "content": given}]
    for item in given or ():
        item = ck.as_dict(item)
        if item.get("type", "message") != "message":
            raise NotResumable(f"l0: a {item.get('type')} input item can't be carried by a text continuation")
        content = item.get("content")
        if isinstance(content, str):
            out.append({"role": item["role"], "content": content})
            continue
        parts = []
        for c in content or ():
            if c.get("type") in ("input_text", "output_text", "text"):
                parts.append({"type": "text", "text": c.get("text", "")})
            elif c.get("type") == "input_image":
                parts.append(image_part(c.get("image_url") or ""))
            else:
                raise NotResumable(f"l0: a {c.get('type')} input part can't be carried by a text continuation")
        out.append({"role": item["role"], "content": chat_content(parts)})
    return out


class ResponsesEndpoint(ChatRouteEndpoint, SDKEndpoint):
    """An OpenAI SDK client and a Responses request."""

    route = "responses"
    api = "OpenAI's Responses"

    def chat_request(self, text: str) -> tuple[dict, dict]:
        p = self.params
        params: dict = {"model": p["model"], "messages": chat_messages(p) + [{"role": "assistant", "content": text}]}
        for a, b in (("temperature", "temperature"), ("top_p", "top_p"), ("max_output_tokens", "max_tokens")):
            if p.get(a) is not None:
                params[b] = p[a]
        extra = {k: v for k, v in (p.get("extra_body") or {}).items()
                 if k in ("top_k", "min_p", "vllm_xargs", "temperature")}
        return params, extra

    async def open(self, plan: Plan, session: Session) -> AsyncIterator[Any]:
        req = plan.request
        if req["route"] == "responses":
            return await self.client.responses.create(**req["params"], stream=True)
        return await self.client.chat.completions.create(**req["params"], stream=True)


def read_response(resp: Any) -> tuple[str, bool, str | None, Any]:
    """A whole ``Response``: (text, has function calls, finish reason, usage)."""
    d = ck.as_dict(resp)
    text, tools = "", False
    for item in d.get("output") or ():
        if item.get("type") == "message":
            text += "".join(c.get("text", "") for c in item.get("content") or () if c.get("type") == "output_text")
        tools = tools or item.get("type") == "function_call"
    status = d.get("status")
    return text, tools, "stop" if status == "completed" else "length" if status == "incomplete" else status, \
        d.get("usage")


async def call_whole(ep: Any) -> Any:
    return await ep.client.responses.create(**ep.params)
