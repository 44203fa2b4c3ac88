"""Typed lifecycle events of a client stream, and the callbacks that receive
them.

Every event has ``type`` (a class constant), ``stream_id`` and ``ts`` (wall
time, seconds). ``to_dict()``/``from_dict()`` round-trip them through the
event log. Callbacks never break a stream: an exception raised by one is
swallowed (and counted on the :class:`Callbacks` object), because the
caller's observer must not lose the caller's tokens.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    stream_id: str = ""
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SessionStart(Event):
    type: ClassVar[str] = "session_start"
    kind: str = "chat"              # chat | completion | run
    model: str | None = None
    endpoint: str | None = None
    l0_key: str | None = None       # set when the endpoint is an L0 server


@dataclass(frozen=True)
class AttemptStart(Event):
    type: ClassVar[str] = "attempt_start"
    attempt: int = 1                # streams opened in this session, from 1
    endpoint: str | None = None
    mode: str = "fresh"             # fresh | checkpoint | regenerate | text
    l0: bool = False


@dataclass(frozen=True)
class FirstToken(Event):
    type: ClassVar[str] = "first_token"
    attempt: int = 1
    latency_s: float = 0.0          # from opening this attempt


@dataclass(frozen=True)
class Timeout(Event):
    type: ClassVar[str] = "timeout"
    attempt: int = 1
    which: str = "inter_token"      # first_token | inter_token
    after_s: float = 0.0


@dataclass(frozen=True)
class Failure(Event):
    """One attempt failed (network error, HTTP error, model failure)."""
    type: ClassVar[str] = "failure"
    attempt: int = 1
    category: str = "network"
    error: str = ""
    status: int | None = None
    delivered_tokens: int = 0
    delivered_chars: int = 0


@dataclass(frozen=True)
class RetryScheduled(Event):
    type: ClassVar[str] = "retry_scheduled"
    attempt: int = 1                # the attempt that failed
    category: str = "network"
    delay_s: float = 0.0
    retries: int = 0                # retries on this endpoint so far, this one included
    model_failures: int = 0


@dataclass(frozen=True)
class RetryGivenUp(Event):
    type: ClassVar[str] = "retry_given_up"
    attempt: int = 1
    category: str = "network"
    why: str = ""                   # fatal | vetoed | attempts | max_retries | stop
    error: str = ""


@dataclass(frozen=True)
class Waiting(Event):
    """Every endpoint the stream may use next is cooling down after failures
    (:mod:`l0.client.fleet`): the stream waits for the first to be ready."""
    type: ClassVar[str] = "wait"
    attempt: int = 1                # the attempt that failed
    delay_s: float = 0.0
    endpoint: str | None = None     # where the next attempt goes
    reason: str = "cooldown"
    cooling: dict = field(default_factory=dict)   # endpoint -> seconds of cooldown left


@dataclass(frozen=True)
class FallbackStart(Event):
    """The stream moves to another endpoint (a failed one cools down, or used
    up its retries)."""
    type: ClassVar[str] = "fallback"
    index: int = 1                  # 1: the first fallback; 0: back to the primary
    endpoint: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class CheckpointFetched(Event):
    type: ClassVar[str] = "checkpoint_fetched"
    key: str = ""
    endpoint: str | None = None
    tokens: int = 0
    finished: bool = False


@dataclass(frozen=True)
class Resume(Event):
    type: ClassVar[str] = "resume"
    attempt: int = 1
    mode: str = "checkpoint"        # checkpoint | regenerate | text
    token_offset: int = 0           # tokens already delivered (or generated, for a checkpoint)
    char_offset: int = 0


@dataclass(frozen=True)
class Verdict(Event):
    """What L0 on the server did to the row (stop, penalize, close), read
    from the response."""
    type: ClassVar[str] = "verdict"
    action: str = ""
    reason: str | None = None
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GuardrailViolation(Event):
    """A guardrail rule found a violation (``l0.client.guardrails``). Severity
    ``warning``: this event only; ``error``: the attempt fails as a model
    failure; ``fatal``: the session fails."""
    type: ClassVar[str] = "guardrail"
    attempt: int = 1
    rule: str = ""
    severity: str = "warning"
    message: str = ""
    start: int = 0                  # character offsets in the answer
    end: int = 0
    excerpt: str = ""
    final: bool = False             # found by the end-of-stream check


@dataclass(frozen=True)
class Drift(Event):
    """A drift signal: from the text (``l0.client.drift`` monitors, ``source:
    "text"``) or from L0 on the server (a loop it detected, ``source:
    "server"``, the intervention in ``detail``)."""
    type: ClassVar[str] = "drift"
    attempt: int = 1
    rule: str = ""                  # drift:<kind>; from the server drift:server_<kind> (loop, near_loop, ...)
    severity: str = "warning"
    message: str = ""
    start: int = 0
    end: int = 0
    excerpt: str = ""
    final: bool = False
    source: str = "text"            # text | server
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StructuredStep(Event):
    """One step of ``l0.structured``: ``attempt`` (a request, ``how``: first |
    reask), ``invalid`` (parse or validation error), ``repaired``
    (json_repair made it valid), ``reask`` (the error goes back to the
    model), ``valid`` (``how``: first_try | resumed | closed | repaired |
    reasked)."""
    type: ClassVar[str] = "structured"
    step: str = "attempt"
    attempt: int = 1
    how: str = ""
    error: str = ""
    finish_reason: str | None = None


@dataclass(frozen=True)
class Complete(Event):
    type: ClassVar[str] = "complete"
    finish_reason: str | None = None
    attempts: int = 1
    tokens: int = 0
    chars: int = 0
    usage: dict | None = None


@dataclass(frozen=True)
class ToolCall(Event):
    """A tool call of the answer, whole (emitted when the stream completes,
    before ``complete``): its index, id, name and JSON arguments as streamed."""
    type: ClassVar[str] = "tool_call"
    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Error(Event):
    """The session failed for good; the exception is raised to the caller."""
    type: ClassVar[str] = "error"
    category: str = "fatal"
    error: str = ""
    delivered_chars: int = 0


@dataclass(frozen=True)
class Cancelled(Event):
    """The caller cancelled the consuming task (``how``: cancelled) or closed
    the stream before its end (closed): the source was closed, nothing is
    retried."""
    type: ClassVar[str] = "cancelled"
    attempt: int = 0
    how: str = "cancelled"          # cancelled | closed
    delivered_tokens: int = 0
    delivered_chars: int = 0


@dataclass(frozen=True)
class RaceStart(Event):
    """``l0.race`` started op ``index``; ``reason``: initial | hedge |
    failover (an earlier op failed)."""
    type: ClassVar[str] = "race_start"
    index: int = 0
    reason: str = "initial"


@dataclass(frozen=True)
class RaceError(Event):
    """Op ``index`` of a race failed (``error``: type and message)."""
    type: ClassVar[str] = "race_error"
    index: int = 0
    error: str = ""


@dataclass(frozen=True)
class RaceCancel(Event):
    """Op ``index`` lost the race: cancelled, its stream closed."""
    type: ClassVar[str] = "race_cancel"
    index: int = 0


@dataclass(frozen=True)
class RaceWinner(Event):
    type: ClassVar[str] = "race_winner"
    index: int = 0


@dataclass(frozen=True)
class PipeStep(Event):
    """``l0.pipe`` is about to run step ``index``."""
    type: ClassVar[str] = "pipe_step"
    index: int = 0


@dataclass(frozen=True)
class PipeStepDone(Event):
    type: ClassVar[str] = "pipe_step_done"
    index: int = 0


@dataclass(frozen=True)
class PipeError(Event):
    """Step ``index`` of a pipe raised (``error``: type and message)."""
    type: ClassVar[str] = "pipe_error"
    index: int = 0
    error: str = ""


EVENT_TYPES: dict[str, type[Event]] = {c.type: c for c in (
    SessionStart, AttemptStart, FirstToken, Timeout, Failure, RetryScheduled, RetryGivenUp, Waiting, FallbackStart,
    CheckpointFetched, Resume, Verdict, GuardrailViolation, Drift, StructuredStep, ToolCall, Complete, Error,
    Cancelled,
    RaceStart, RaceError, RaceCancel, RaceWinner, PipeStep, PipeStepDone, PipeError)}


def event_from_dict(d: dict[str, Any]) -> Event:
    """Raises KeyError for an unknown type."""
    cls = EVENT_TYPES[d["type"]]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


# callback name -> event types it receives
_CALLBACKS = {
    "on_start": (SessionStart,),
    "on_retry": (RetryScheduled,),
    "on_fallback": (FallbackStart,),
    "on_wait": (Waiting,),
    "on_resume": (Resume,),
    "on_timeout": (Timeout,),
    "on_complete": (Complete,),
    "on_error": (Error,),
    "on_violation": (GuardrailViolation,),
    "on_drift": (Drift,),
    "on_tool_call": (ToolCall,),
}


@dataclass
class Callbacks:
    """``on_start``, ``on_retry``, ``on_fallback``, ``on_wait``, ``on_resume``,
    ``on_timeout``, ``on_complete``, ``on_error``, ``on_violation``,
    ``on_drift``, ``on_tool_call`` (one event type each) and
    ``on_event`` (all of them); ``on_token`` gets each piece of text as it
    is delivered to the caller (a string, not an event: never logged)."""

    on_start: Callable[[SessionStart], Any] | None = None
    on_retry: Callable[[RetryScheduled], Any] | None = None
    on_fallback: Callable[[FallbackStart], Any] | None = None
    on_wait: Callable[[Waiting], Any] | None = None
    on_resume: Callable[[Resume], Any] | None = None
    on_timeout: Callable[[Timeout], Any] | None = None
    on_complete: Callable[[Complete], Any] | None = None
    on_error: Callable[[Error], Any] | None = None
    on_violation: Callable[[GuardrailViolation], Any] | None = None
    on_drift: Callable[[Drift], Any] | None = None
    on_tool_call: Callable[[ToolCall], Any] | None = None
    on_token: Callable[[str], Any] | None = None
    on_event: Callable[[Event], Any] | None = None
    failures: int = 0               # callbacks that raised

    def __call__(self, event: Event) -> None:
        for name, kinds in _CALLBACKS.items():
            fn = getattr(self, name)
            if fn is not None and isinstance(event, kinds):
                self._safe(fn, event)
        if self.on_event is not None:
            self._safe(self.on_event, event)

    def token(self, text: str) -> None:
        if self.on_token is not None:
            self._safe(self.on_token, text)

    def _safe(self, fn, event) -> None:
        try:
            fn(event)
        except Exception:
            self.failures += 1
