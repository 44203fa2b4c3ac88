"""OpenTelemetry traces and metrics for hardened streams (optional:
``pip install 'l0[otel]'``, which brings ``opentelemetry-api`` only; the
application configures the SDK and exporters as it does for everything else).

    client = l0.wrap(AsyncOpenAI(...), trace=True)             # the global providers
    client = l0.wrap(AsyncOpenAI(...), trace=l0.Tracing(tracer_provider=tp, meter_provider=mp))

Built from the session's own events, so every transport and ``l0.run`` is
traced the same way:

* a span ``l0.stream`` per session (kind, model, endpoint, ``l0.key``,
  attempts, tokens, characters, finish reason, time to first token, the
  server's verdict), with a child span ``l0.attempt`` per attempt (number,
  endpoint, mode: fresh | checkpoint | regenerate | text), which ends with an
  error status when the attempt failed;
* every L0 event as a span event on the span it happened in;
* metrics: ``l0.client.attempts`` (by mode), ``l0.client.retries`` (by
  category), ``l0.client.resumes`` (by mode), ``l0.client.sessions`` (by
  outcome: complete | error | cancelled) and the histogram
  ``l0.client.time_to_first_token`` (seconds).

No message text and no secrets by default: error messages, guardrail
excerpts and messages, and structured-output errors stay out (their type and
rule names go in); ``record_content=True`` lets them in. Endpoint URLs lose
any user:password part.
"""
from __future__ import annotations

import re
from typing import Any

from l0.client import events as ev

# event fields that can carry the model's text or a server's words
CONTENT_FIELDS = frozenset({"error", "message", "excerpt", "detail", "text"})
_USERINFO = re.compile(r"//[^/@]*@")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _USERINFO.sub("//", value)
    return value


class Tracing:
    """An event callback that keeps one span per session and one per
    attempt. ``tracer_provider``/``meter_provider``: None for the global
    ones. Raises ImportError naming the extra when ``opentelemetry-api`` is
    missing."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None, record_content: bool = False) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            raise ImportError("l0: tracing needs opentelemetry-api: pip install 'l0[otel]'") from None
        from l0 import __version__

        self._trace = trace
        self.tracer = trace.get_tracer("l0", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("l0", __version__, meter_provider=meter_provider)
        self.record_content = record_content
        self.attempts = meter.create_counter("l0.client.attempts", description="stream attempts opened")
        self.retries = meter.create_counter("l0.client.retries", description="retries scheduled")
        self.resumes = meter.create_counter("l0.client.resumes", description="streams continued after a break")
        self.sessions = meter.create_counter("l0.client.sessions", description="hardened streams ended")
        self.ttft = meter.create_histogram("l0.client.time_to_first_token", unit="s",
                                           description="from opening an attempt to its first chunk")
        self._open: dict[str, list] = {}    # stream_id -> [session span, attempt span or None, ttft seen]

    # -- the callback -----------------------------------------------------------
    def __call__(self, event: ev.Event) -> None:
        sid = event.stream_id
        if isinstance(event, ev.SessionStart):
            span = self.tracer.start_span("l0.stream", attributes=self._attrs({
                "l0.kind": event.kind, "gen_ai.request.model": event.model, "l0.endpoint": event.endpoint,
                "l0.key": event.l0_key}))
            self._open[sid] = [span, None, False]   # session span, attempt span, first token seen
        spans = self._open.get(sid)
        if spans is None:
            return   # a non-streaming call's events, or a session started before tracing was on
        session, attempt = spans[0], spans[1]
        if isinstance(event, ev.AttemptStart):
            self._end_attempt(spans)
            ctx = self._trace.set_span_in_context(session)
            spans[1] = attempt = self.tracer.start_span("l0.attempt", context=ctx, attributes=self._attrs({
                "l0.attempt": event.attempt, "l0.endpoint": event.endpoint, "l0.mode": event.mode,
                "l0.server": event.l0}))
            self.attempts.add(1, {"mode": event.mode})
            session.set_attribute("l0.attempts", event.attempt)
        (attempt or session).add_event(f"l0.{event.type}", self._event_attrs(event))
        if isinstance(event, ev.FirstToken):
            self.ttft.record(event.latency_s)
            if not spans[2]:   # the session's: its first attempt's
                spans[2] = True
                session.set_attribute("l0.time_to_first_token_s", event.latency_s)
        elif isinstance(event, ev.Failure):
            if attempt is not None:
                attempt.set_attribute("l0.failure.category", event.category)
                if event.status is not None:
                    attempt.set_attribute("http.response.status_code", event.status)
                self._error(attempt, event.category, event.error)
        elif isinstance(event, ev.RetryScheduled):
            self.retries.add(1, {"category": event.category})
        elif isinstance(event, ev.Resume):
            self.resumes.add(1, {"mode": event.mode})
            session.set_attribute("l0.resume.mode", event.mode)
        elif isinstance(event, ev.Verdict):
            session.set_attribute("l0.verdict.action", event.action)
            if event.reason:
                session.set_attribute("l0.verdict.reason", str(event.reason))
        elif isinstance(event, ev.Complete):
            session.set_attributes(self._attrs({"l0.finish_reason": event.finish_reason, "l0.tokens": event.tokens,
                                                "l0.chars": event.chars}))
            self._finish(sid, "complete")
        elif isinstance(event, ev.Error):
            self._error(session, event.category, event.error)
            self._finish(sid, "error")
        elif isinstance(event, ev.Cancelled):
            session.set_attributes({"l0.cancelled": event.how, "l0.tokens": event.delivered_tokens,
                                    "l0.chars": event.delivered_chars})
            self._finish(sid, "cancelled")

    def chain(self, other: Any) -> Any:
        """One ``on_event`` callback: this tracing, then ``other`` (if any)."""
        if other is None:
            return self

        def both(event: ev.Event) -> None:
            try:
                self(event)
            finally:
                other(event)
        return both

    # -- helpers ----------------------------------------------------------------
    def _attrs(self, d: dict) -> dict:
        return {k: _clean(v) for k, v in d.items() if v is not None}

    def _event_attrs(self, event: ev.Event) -> dict:
        out = {}
        for k, v in event.to_dict().items():
            if k in ("type", "stream_id", "ts") or v is None:
                continue
            if k in CONTENT_FIELDS and not self.record_content:
                if k == "error" and isinstance(v, str) and v:
                    out["l0.error.type"] = v.split(":", 1)[0]
                continue
            if isinstance(v, (str, bool, int, float)):
                out[f"l0.{k}"] = _clean(v)
        return out

    def _error(self, span: Any, category: str, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, message if self.record_content else category))

    def _end_attempt(self, spans: list) -> None:
        if spans[1] is not None:
            spans[1].end()
            spans[1] = None

    def _finish(self, sid: str, outcome: str) -> None:
        spans = self._open.pop(sid, None)
        if spans is None:
            return
        self._end_attempt(spans)
        spans[0].set_attribute("l0.outcome", outcome)
        spans[0].end()
        self.sessions.add(1, {"outcome": outcome})
