"""The non-streaming path of ``l0.wrap``: one whole response with
classified retries, the zero-output check, guardrails and fallbacks, and the
same events as a stream."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any, Callable

from l0.client import chunks as ck
from l0.client import events as ev
from l0.client.content import has_content
from l0.client.deadline import within
from l0.client.endpoints import SDKEndpoint
from l0.client.options import Options
from l0.client.retry import ZeroOutput, classify, status_of
from l0.client.route import GiveUp, Route
from l0.client.session import end_checks, judge


def read_openai(kind: str) -> Callable[[Any], tuple]:
    """How a whole OpenAI response is read: (text, has tool calls, finish
    reason, usage) of its first choice (``kind``: chat or completion)."""
    def read(resp: Any) -> tuple:
        whole = ck.as_dict(resp)     # an SDK object, or l0.http's dict
        choice = (whole.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = (message.get("content") if kind == "chat" else choice.get("text")) or ""
        return text, bool(message.get("tool_calls")), choice.get("finish_reason"), whole.get("usage")
    return read


def api_of(client: Any, kind: str) -> Any:
    """The SDK client's API for ``kind``: ``chat.completions``,
    ``completions`` or ``responses``."""
    if kind == "chat":
        return client.chat.completions
    return client.responses if kind == "responses" else client.completions


def call_openai(kind: str, method: str = "create") -> Callable[[Any], Any]:
    """``endpoint -> awaitable response``: ``<method>`` (``create``,
    ``parse``) of the endpoint's client's API for ``kind``, with the
    endpoint's request."""
    def call(ep: Any) -> Any:
        return getattr(api_of(ep.client, kind), method)(**ep.params)
    return call


async def respond(endpoints: list[SDKEndpoint], kind: str, o: Options, call: Callable[[Any], Any] | None = None,
                  read: Callable[[Any], tuple] | None = None) -> Any:
    """One response with classified retries, zero-output check and fallbacks.
    ``call(endpoint)`` makes the request (default: ``create`` of ``kind``);
    ``read(response)`` gives (text, tool calls, finish reason, usage)."""
    call = call or call_openai(kind)
    read = read or read_openai(kind)
    emit = o.callbacks
    sid = "s-" + uuid.uuid4().hex[:16]

    def send(cls, **kw):
        e = cls(stream_id=sid, ts=o.clock(), **kw)
        if o.log is not None:
            o.log.event(e)
        emit(e)

    route = Route(endpoints, o.retry, o.fleet, send, o.sleep, clock=o.clock)
    ep = await route.enter(route.first())
    route.arm(False)    # a whole response has nothing to resume: counts only, unless a deadline is set
    send(ev.SessionStart, kind=kind, model=ep.model, endpoint=ep.name)
    attempts = 0
    try:
        while True:
            attempts += 1
            route.states[route.current].tries += 1
            send(ev.AttemptStart, attempt=attempts, endpoint=ep.name, mode="fresh")
            try:
                limit = o.timeout.first_token_s
                resp = await within(call(ep), limit)
                route.progress()
                text, tools, finish_reason, usage = read(resp)
                if o.check_zero_output and not tools and not has_content(text):
                    raise ZeroOutput(f"zero output ({len(text)} chars)")
                _judge_whole(text, o, send, attempts, tools)
                send(ev.Complete, finish_reason=finish_reason, attempts=attempts, chars=len(text), usage=usage)
                return resp
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, asyncio.TimeoutError):
                    send(ev.Timeout, attempt=attempts, which="first_token", after_s=o.timeout.first_token_s)
                cat = classify(exc)
                send(ev.Failure, attempt=attempts, category=cat.value, error=str(exc)[:300], status=status_of(exc))
                nxt = None
                try:
                    nxt = await route.after_failure(exc, cat, attempts)
                except GiveUp:
                    pass
                if nxt is None:
                    raise exc
                ep = await route.enter(nxt)
    except Exception as exc:
        send(ev.Error, category=classify(exc).value, error=str(exc)[:300])
        raise
    finally:
        route.release()
        if o.log is not None:
            o.log.end_stream(sid)


def _judge_whole(text: str, o: Options, send: Callable[..., Any], attempt: int, tools: bool = False) -> None:
    """A whole answer through the guardrails and drift monitors (non-streaming
    calls): events, and GuardrailFailed/GuardrailFatal for the worst."""
    found = []
    for spec in (o.guardrails, o.drift):
        if spec is not None:
            g = spec.fresh()
            found += g.feed(text) + end_checks(g, tools)
    judge(found, send, attempt)
