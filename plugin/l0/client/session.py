"""One hardened stream: the loop behind ``l0.wrap`` and ``l0.run``.

A session runs attempts on its endpoints (the primary, then each fallback)
until one finishes. Each attempt is planned from what was received so far:

* ``fresh``: nothing received yet (or a zero-output retry): the request as
  the caller made it.
* ``checkpoint`` (L0 servers): the checkpoint of the session's ``l0_key``
  merged with the token ids received, continued on ``/v1/completions`` with
  the token ids as the prompt (:mod:`l0.client.resume`): token for token.
* ``regenerate`` (L0 servers, no usable checkpoint or guided decoding, greedy
  requests): the request again; the tokens already delivered are checked and
  skipped.
* ``text`` (any server): the text received so far continued (vLLM:
  ``continue_final_message``; others: a continuation prompt, with the
  overlap dropped).

Every chunk the caller gets carries the first attempt's identity (id,
created, model), so the caller sees one stream. Chunks whose content is only
whitespace or punctuation are held back until real content arrives: a
stream that ends with nothing else is a zero-output failure and is retried
without the caller having seen any of it.

Guardrails and drift monitors (``l0.client.guardrails``, ``l0.client.drift``) see each
chunk's text as it is received (O(new text) per chunk) and once more at the
end. A violation is an event; severity ``error`` fails the attempt as a model
failure, retried from scratch while the caller has seen nothing (``hold``
keeps every chunk until the answer passed its end checks, so that is always
the case); once the caller has part of the answer an ``error`` is raised like
a ``fatal`` one: retrying would show the caller text twice.

The transport is an :class:`Endpoint` (``open`` returns an async iterator of
chunks); :mod:`l0.wrap` makes them from OpenAI SDK clients, ``l0.run`` from
stream factories.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from l0.client import chunks as ck
from l0.client import events as ev
from l0.client.adapters import OpenAIAdapter
from l0.client.content import ContentScan
from l0.client.deadline import close_stream, within
from l0.client.retry import (Category, FirstTokenTimeout, GuardrailFailed, GuardrailFatal, Retry, Stalled,
                             StreamEnded, Timeouts, ZeroOutput, _short, classify, status_of)
from l0.client.route import GiveUp, Route


@dataclass
class Plan:
    mode: str                       # fresh | checkpoint | regenerate | text
    request: Any = None             # what Endpoint.open needs (endpoint-specific)
    skip_ids: int = 0               # regenerate: tokens to check and drop
    skip_chars: int = 0             # regenerate: text to check and drop (counted apart from the ids:
                                    # a stream with stop strings sends text later than its ids)
    convert: bool = False           # restamp chunks into the caller's kind and identity
    resume_from: int = 0            # checkpoint: output tokens sent as prompt (moved back in usage)
    drop_overlap: bool = False      # text mode without server support: the model may repeat itself
    reader: Any = None              # the adapter that reads this attempt's events (None: the session's)


@dataclass
class Received:
    """What the session has from the model: delivered to the caller or held."""
    text: str = ""
    # One generation's exact ids: None once a chunk came without ids, or the
    # answer was continued from its text (the ids after that are another request's).
    token_ids: list[int] | None = field(default_factory=list)
    # Output tokens: by the ids of each chunk that has them, else one per
    # content chunk (a lagging server may put two tokens in one chunk).
    tokens: int = 0
    tool_calls: bool = False
    tools: dict = field(default_factory=dict)   # index -> {"id", "name", "arguments"}: the calls so far
    scan: ContentScan = field(default_factory=ContentScan)

    @property
    def meaningful(self) -> bool:
        """Real content so far (:mod:`l0.client.content`), or a tool call."""
        return self.tool_calls or self.scan.found

    def add(self, p: ck.Parts) -> None:
        self.text += p.text
        if p.token_ids is None:
            if p.text:
                self.token_ids = None
        elif self.token_ids is not None:
            self.token_ids.extend(p.token_ids)
        if p.token_ids:
            self.tokens += len(p.token_ids)
        elif p.text:
            self.tokens += 1
        self.tool_calls = self.tool_calls or p.tool_calls
        for index, call_id, name, arguments in p.tool_pieces or ():
            call = self.tools.setdefault(index, {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or call_id
            call["name"] = call["name"] or name
            call["arguments"] += arguments
        self.scan.feed(p.text)

    @property
    def empty(self) -> bool:
        return not self.text and not self.token_ids and not self.tool_calls


def end_checks(guard: Any, tool_calls: bool) -> list:
    """``guard.finish()``; an answer made of tool calls has no text by
    design, so ``zero_output`` does not apply to it (as the session's own
    zero-output guard counts tool calls as output)."""
    found = guard.finish()
    return [v for v in found if v.rule != "zero_output"] if tool_calls else found


def judge(violations: Sequence[Any], emit: Callable[..., Any], attempt: int) -> None:
    """Emit each violation (``emit(event_class, **fields)``: a ``drift``
    event for ``drift:*`` rules, else ``guardrail``); then raise for the
    worst: :class:`GuardrailFatal` for a fatal one, else
    :class:`GuardrailFailed` for the first error."""
    failed = None
    for v in violations:
        cls = ev.Drift if v.rule.startswith("drift:") else ev.GuardrailViolation
        emit(cls, attempt=attempt, rule=v.rule, severity=v.severity, message=v.message, start=v.start,
             end=v.end, excerpt=v.excerpt, final=v.final)
        if v.severity == "fatal" and (failed is None or failed.severity != "fatal"):
            failed = v
        elif v.severity == "error" and failed is None:
            failed = v
    if failed is not None:
        raise GuardrailFatal(failed) if failed.severity == "fatal" else GuardrailFailed(failed)


class Endpoint:
    """Where attempts run. Subclasses implement ``open`` and ``plan``."""

    name: str = "endpoint"
    model: str | None = None
    l0: bool = False

    async def prepare(self) -> None:
        """Called before this endpoint's first attempt (probe the server)."""

    async def plan(self, session: "Session") -> Plan | None:
        """The next attempt's plan; None when the stream is already complete
        (a checkpoint says it finished)."""
        return Plan("fresh")

    def open(self, plan: Plan, session: "Session") -> Awaitable[AsyncIterator[Any]]:
        raise NotImplementedError

    async def finished(self, session: "Session") -> None:
        """Called once the stream completed on this endpoint (fetch the
        server's verdict). Its failures never reach the caller."""

    async def fix_text(self, chunk: Any, kept: list[int], session: "Session") -> str:
        """Text of ``kept`` (a chunk's ids past a regeneration's catch-up point)."""
        raise NotImplementedError

    def resumes_tool_calls(self, session: "Session") -> bool:
        """Can this endpoint go on after tool-call pieces were delivered
        (an L0 server regenerating a greedy request)?"""
        return False

    async def health(self) -> tuple[bool, float | None] | None:
        """(healthy, seconds the server asks to wait) from the server's own
        health check, or None when it has none to ask (the default)."""
        return None


class NotResumable(Exception):
    """The stream broke after delivering what this session cannot continue
    (tool-call pieces, several choices): the caller gets the failure."""


def record_event(events: list, stream_id: str, clock: Callable[[], float], log: Any,
                 callback: Callable[[ev.Event], Any] | None, cls: type[ev.Event], **fields: Any) -> ev.Event:
    """One event of a stream: made, kept in ``events``, written to ``log``,
    handed to ``callback``. A function of those parts, not a method of the
    session: its route holds it, and a bound method made every session a
    reference cycle (with its responses and chunks), freed only by the
    garbage collector's full collection."""
    event = cls(stream_id=stream_id, ts=clock(), **fields)
    events.append(event)
    if log is not None:
        log.event(event)
    if callback is not None:
        callback(event)
    return event


class Session:
    """Iterate it (``async for chunk in session``) to get the hardened stream.
    Raises the last failure when every endpoint gave up (the exception gets
    ``l0_received``: the text delivered so far)."""

    def __init__(self, endpoints: Sequence[Endpoint], *, kind: str = "chat", retry: Retry = Retry(),
                 timeouts: Timeouts = Timeouts(), emit: Callable[[ev.Event], Any] | None = None,
                 log=None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time, check_zero_output: bool = True,
                 stream_id: str | None = None, require_finish: bool = True, l0_key: str | None = None,
                 fallback_delay: Callable[[int], float] | None = None, guardrails: Any = None,
                 drift: Any = None, hold: bool = False, adapter: Any = None, fleet: Any = None) -> None:
        if not endpoints:
            raise ValueError("l0: a session needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.kind = kind
        self.adapter = adapter if adapter is not None else OpenAIAdapter(kind)   # the caller's protocol
        self.retry = retry
        self.timeouts = timeouts
        self.emit_cb = emit
        self.log = log
        self.sleep = sleep
        self.clock = clock
        self.check_zero_output = check_zero_output
        self.require_finish = require_finish  # False: the end of the iterator is the end (plain text streams)
        self.stream_id = stream_id or "s-" + uuid.uuid4().hex[:16]
        self.received = Received()
        self.meta: dict = {}
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.verdict: dict | None = None     # what L0 on the server did (from its record)
        self.attempts = 0
        self.events: list[ev.Event] = []
        self.l0_key: str | None = l0_key     # the checkpoint key (L0 endpoints); made when None
        self.key_model: str | None = None    # the model the keyed request was made for
        self.pending: list[Any] = []         # chunks to deliver before the next attempt's
        self.held: list[Any] = []            # received, not delivered: no real content yet
        self.endpoint: Endpoint | None = None
        # guardrails and drift monitors: specs, and this answer's fresh copies
        self.checks = [g for g in (guardrails, drift) if g is not None]
        self.guards = [g.fresh() for g in self.checks]
        self.hold = hold                     # deliver nothing before the answer passed its end checks
        self.delivered = 0                   # chunks the caller has
        self.response: Any = None            # the first attempt's HTTP response (the SDK stream's), if any
        self._record = functools.partial(record_event, self.events, self.stream_id, clock, log, emit)
        self.route = Route(self.endpoints, retry, fleet, self._record, sleep, clock=clock,
                           fallback_delay=fallback_delay)   # where each attempt goes (l0.client.route)

    @classmethod
    def of(cls, endpoints: Sequence[Endpoint], o: Any, **kw: Any) -> "Session":
        """A session with an :class:`~l0.client.options.Options`' settings
        (``kw``: the rest, e.g. ``kind``, ``adapter``)."""
        return cls(endpoints, retry=o.retry, timeouts=o.timeout, emit=o.callbacks, log=o.log, sleep=o.sleep,
                   clock=o.clock, check_zero_output=o.check_zero_output, guardrails=o.guardrails, drift=o.drift,
                   hold=o.hold, fleet=o.fleet, **kw)

    # -- events ---------------------------------------------------------------
    def emit(self, cls: type[ev.Event], **fields: Any) -> ev.Event:
        return self._record(cls, **fields)

    def _deliver(self, chunk: Any) -> Any:
        self.delivered += 1
        token = getattr(self.emit_cb, "on_token", None)
        if token is not None:   # (read again only for the callback: the chunk may be one the session wrote)
            text = self.adapter.parts(chunk).text
            if text:
                self.emit_cb.token(text)
        if self.log is not None:
            self.log.chunk(self.stream_id, self.clock(), chunk)
        return chunk

    # -- the loop -------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._run()

    async def _run(self) -> AsyncIterator[Any]:
        route = self.route
        endpoint = await route.enter(route.first())
        if endpoint.l0 and self.l0_key is None:
            from l0.contract import new_key
            self.l0_key = new_key()
        route.arm(self.l0_key is not None)
        self.emit(ev.SessionStart, kind=self.kind, model=endpoint.model, endpoint=endpoint.name,
                  l0_key=self.l0_key if endpoint.l0 else None)
        try:
            while True:
                self.endpoint = endpoint
                try:
                    plan = await endpoint.plan(self)
                    if self.pending:  # checkpointed tokens never delivered, in order after held ones
                        self.held.extend(self.pending)
                        self.pending = []
                        if plan is None:
                            for guard in self.guards:
                                self._judge(end_checks(guard, self.received.tool_calls))
                        if (self.received.meaningful and not self.hold) or plan is None:
                            while self.held:
                                yield self._deliver(self.held.pop(0))
                    if plan is None:
                        self._complete()
                        return
                    self.attempts += 1
                    route.states[route.current].tries += 1
                    self.emit(ev.AttemptStart, attempt=self.attempts, endpoint=endpoint.name, mode=plan.mode,
                              l0=endpoint.l0)
                    if plan.mode != "fresh":
                        self.emit(ev.Resume, attempt=self.attempts, mode=plan.mode,
                                  token_offset=self.received.tokens, char_offset=len(self.received.text))
                    attempt = self._attempt(endpoint, plan)
                    try:
                        async for chunk in attempt:
                            yield self._deliver(chunk)
                    finally:   # now, not when the loop collects it: a close shuts the source before returning
                        await attempt.aclose()
                    if self.finish_reason is None and not self.require_finish:
                        self.finish_reason = "stop"
                    if self.finish_reason is None:
                        raise StreamEnded("the stream ended without a finish reason")
                    if self.check_zero_output and not self.received.meaningful:
                        raise ZeroOutput("zero output: the stream ended with nothing but whitespace or "
                                         f"punctuation ({len(self.received.text)} chars)")
                    for guard in self.guards:
                        self._judge(end_checks(guard, self.received.tool_calls))
                    while self.held:
                        yield self._deliver(self.held.pop(0))
                    try:
                        await endpoint.finished(self)
                    except Exception:  # noqa: BLE001 - the stream is complete; the verdict is extra
                        pass
                    self._server_drift()
                    self._complete()
                    return
                except (GeneratorExit, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - classified below
                    category = classify(exc)
                    if isinstance(exc, NotResumable):
                        category = Category.FATAL
                    self.emit(ev.Failure, attempt=self.attempts, category=category.value, error=_short(exc),
                              status=status_of(exc), delivered_tokens=self.received.tokens,
                              delivered_chars=len(self.received.text))
                    if isinstance(exc, GuardrailFailed) and self.delivered:
                        category = Category.FATAL
                        exc = GuardrailFatal(exc.violation, f" (after {len(self.received.text)} characters "
                                             "were delivered: not retried; hold=True checks before delivery)")
                    if isinstance(exc, (ZeroOutput, GuardrailFailed)):
                        self.start_over()   # nothing of value reached the caller
                    elif self.received.tool_calls and not endpoint.resumes_tool_calls(self):
                        category = Category.FATAL
                        exc = NotResumable(f"l0: the stream broke after tool-call pieces were delivered "
                                           f"({_short(exc)}); tool calls can't be continued")
                    # this endpoint can't continue what was delivered: another one may
                    elsewhere = isinstance(exc, NotResumable) and len(route.endpoints) - len(route.out) > 1
                    nxt = None
                    try:
                        nxt = await route.after_failure(exc, category, self.attempts, not_resumable=elsewhere)
                    except GiveUp:
                        pass
                    if nxt is None:
                        raise exc
                    endpoint = await route.enter(nxt)
        except (GeneratorExit, asyncio.CancelledError) as stop:
            # the caller cancelled its task or closed the stream: never retried, said once
            self.emit(ev.Cancelled, attempt=self.attempts,
                      how="closed" if isinstance(stop, GeneratorExit) else "cancelled",
                      delivered_tokens=self.received.tokens, delivered_chars=len(self.received.text))
            raise
        except Exception as exc:
            try:
                exc.l0_received = self.received.text  # type: ignore[attr-defined]
            except Exception:
                pass
            self.emit(ev.Error, category=classify(exc).value if not isinstance(exc, NotResumable) else "fatal",
                      error=_short(exc), delivered_chars=len(self.received.text))
            raise
        finally:
            route.release()
            if self.log is not None:
                self.log.end_stream(self.stream_id)

    def start_over(self) -> None:
        """Forget the answer so far (nothing of it reached the caller): the
        next attempt is fresh, under a new key, with held chunks dropped."""
        self.received = Received()
        self.held = []
        self.finish_reason = None
        self.l0_key = None
        self.guards = [g.fresh() for g in self.checks]

    def take(self, p: ck.Parts) -> None:
        """Count ``p`` as received and run the guardrails on its text (raises
        :class:`GuardrailFailed` / :class:`GuardrailFatal`)."""
        self.received.add(p)
        if p.text:
            for guard in self.guards:
                self._judge(guard.feed(p.text))

    def _judge(self, violations: Sequence[Any]) -> None:
        judge(violations, self.emit, self.attempts)

    def _server_drift(self) -> None:
        """The server's verdict as drift events: each loop L0 detected on the
        token ids (kinds ``loop``, ``near_loop``, ``no_progress``, ``echo``;
        rule ``drift:server_<kind>``) and acted on, once the verdict was read.
        A budget close is not drift; the stop that ends a close (``closed``)
        was reported with the close."""
        if not self.checks or not self.verdict:
            return
        for item in self.verdict.get("interventions") or []:
            kind = item.get("kind")
            if kind in (None, "none", "budget") or "closed" in item:
                continue
            self.emit(ev.Drift, attempt=self.attempts, rule=f"drift:server_{kind}", severity="warning",
                      message=f"L0 on the server detected {kind} (period {item.get('period')}, at token "
                              f"{item.get('token_index')}) and acted: {item.get('action')}",
                      source="server", detail=dict(item))

    def _complete(self) -> None:
        for index, call in sorted(self.received.tools.items()):
            self.emit(ev.ToolCall, index=index, id=call["id"], name=call["name"], arguments=call["arguments"])
        self.emit(ev.Complete, finish_reason=self.finish_reason, attempts=self.attempts,
                  tokens=self.received.tokens, chars=len(self.received.text), usage=self.usage)

    async def _attempt(self, endpoint: Endpoint, plan: Plan) -> AsyncIterator[Any]:
        """The chunks of one attempt, ready for the caller. Whitespace-only
        content goes to ``self.held`` until real content arrives (across
        attempts: a resumed stream delivers them before its own)."""
        t0 = time.monotonic()
        first_s, inter_s = self.timeouts.first_token_s, self.timeouts.inter_token_s
        stream = None
        try:
            opening = endpoint.open(plan, self)
            try:
                stream = await within(opening, first_s)
            except asyncio.TimeoutError:
                self.emit(ev.Timeout, attempt=self.attempts, which="first_token", after_s=first_s)
                raise FirstTokenTimeout(f"no response within {first_s:g} s") from None
            if self.response is None:
                self.response = getattr(stream, "response", None)
            it = stream.__aiter__()
            started = False
            skip, skip_chars = plan.skip_ids, plan.skip_chars
            # A continuation from token ids: the server renders its first
            # tokens' text without knowing what the caller was shown (a
            # character split across the cut comes out wrong, or with the
            # prompt's text: seen in the chaos runs), so the text of the
            # first chunks is recomputed from all the ids.
            refix = 4 if plan.mode == "checkpoint" else 0
            reader = plan.reader or self.adapter
            overlap = _Overlap(self.received.text) if plan.drop_overlap else None
            while True:
                if not started:
                    limit = None if first_s is None else max(0.0, first_s - (time.monotonic() - t0))
                else:
                    limit = inter_s
                try:
                    chunk = await within(it.__anext__(), limit)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    which = "inter_token" if started else "first_token"
                    after = limit if started else first_s
                    self.emit(ev.Timeout, attempt=self.attempts, which=which, after_s=after)
                    if started:
                        raise Stalled(f"stalled: no token for {after:g} s") from None
                    raise FirstTokenTimeout(f"no first token within {after:g} s") from None
                p = reader.parts(chunk)
                if p.usage and plan.resume_from:
                    # A continuation's prompt holds the answer's first tokens: give the caller the
                    # usage of the request it made (same total). A checkpoint plan converts, so the
                    # chunk delivered is restamped from ``p`` below.
                    p = dataclasses.replace(p, usage=_shift_usage(p.usage, plan.resume_from))
                if p.usage:
                    self.usage = p.usage
                if not self.meta:
                    self.meta = reader.meta(chunk)
                content = bool(p.text or p.token_ids or p.finish_reason or p.tool_calls)
                if content and not started:
                    started = True
                    self.emit(ev.FirstToken, attempt=self.attempts, latency_s=time.monotonic() - t0)
                    self.route.progress()
                if plan.mode != "fresh" and p.role_only and not p.usage:
                    continue  # the caller already has the role
                if skip or skip_chars:
                    # The regenerated stream is the first one again (greedy, same request): its ids
                    # and its text are checked against what was delivered and dropped, each by its
                    # own count: the text may lag the ids (vLLM holds back text that could start a
                    # stop string, and the bytes of a split character), so a chunk's text need not
                    # belong to the chunk's ids.
                    ids = list(p.token_ids or ())
                    have = self.received.token_ids or []
                    base = plan.skip_ids - skip      # regenerated tokens checked so far
                    n_old = min(len(ids), skip)
                    for i in range(n_old):
                        if have[base + i] != ids[i]:
                            raise NotResumable(f"l0: regenerated token {base + i} differs from the one delivered "
                                               "(sampling is not greedy?): refusing to continue")
                    skip -= n_old
                    text = p.text or ""
                    at = plan.skip_chars - skip_chars
                    c_old = min(len(text), skip_chars)
                    if text[:c_old] != self.received.text[at:at + c_old]:
                        raise NotResumable(f"l0: regenerated text at char {at} differs from the text delivered: "
                                           "refusing to continue")
                    skip_chars -= c_old
                    if n_old or c_old:
                        kept, rest = ids[n_old:], text[c_old:]
                        # every id delivered before: so were its tool-call pieces (a call's id differs on
                        # the regenerated stream; the caller keeps the first)
                        extra = p.delta_extra if kept or not ids else None
                        if not kept and not rest and not p.finish_reason and not p.usage and not extra:
                            continue
                        chunk = reader.trim(chunk, kept, rest)
                        p = reader.parts(chunk)
                elif refix and p.token_ids:
                    refix -= 1
                    text = await endpoint.fix_text(chunk, list(p.token_ids), self)
                    if text != (p.text or ""):
                        chunk = reader.trim(chunk, list(p.token_ids), text)
                        p = dataclasses.replace(reader.parts(chunk), usage=p.usage)   # (the shifted usage)
                changed = False
                if overlap is not None:
                    text = overlap.feed(p.text, final=bool(p.finish_reason))
                    if text is None:
                        continue
                    if text != p.text:
                        p = ck.Parts(text=text, token_ids=None, finish_reason=p.finish_reason, usage=p.usage)
                        changed = True
                outs = self._restamp(p) if changed or plan.convert else [chunk]
                if p.finish_reason:
                    self.finish_reason = p.finish_reason
                self.take(p)
                if not self.received.meaningful or self.hold:
                    self.held.extend(outs)
                    continue
                while self.held:
                    yield self.held.pop(0)
                for out in outs:
                    yield out
        finally:
            if stream is not None:   # in this task, before a cancel or close goes on up
                await close_stream(stream)

    def _restamp(self, p: ck.Parts) -> list:
        """The caller's events for ``p`` (its adapter's :meth:`~l0.client.adapters.Adapter.make`)."""
        return self.adapter.make(self, p)


def _shift_usage(usage: dict, n: int) -> dict:
    """``usage`` with ``n`` tokens moved from the prompt to the completion."""
    u = dict(usage)
    if u.get("prompt_tokens") is not None:
        u["prompt_tokens"] = u["prompt_tokens"] - n
    if u.get("completion_tokens") is not None:
        u["completion_tokens"] = u["completion_tokens"] + n
    return u


class _Overlap:
    """Drops the start of a continuation that repeats the end of the text
    already delivered (a model asked to continue often restates a few
    words). Buffers up to ``window`` characters to decide."""

    def __init__(self, delivered: str, window: int = 64, min_overlap: int = 8) -> None:
        self.tail = delivered[-window:]
        self.window, self.min = window, min_overlap
        self.buf = ""
        self.decided = False

    def feed(self, text: str, final: bool = False) -> str | None:
        if self.decided:
            return text
        self.buf += text
        if len(self.buf) < self.window and not final:
            return None
        self.decided = True
        buf, self.buf = self.buf, ""
        for k in range(min(len(buf), len(self.tail)), self.min - 1, -1):
            if self.tail.endswith(buf[:k]):
                return buf[k:]
        return buf
