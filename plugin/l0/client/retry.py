"""Retry and timeout policy for the client: what failed (its category), whether
to try again, and how long to wait first. Pure logic, no I/O.

Categories (:class:`Category`):

* ``network``: the connection failed or broke (refused, reset, DNS, a chunked
  body cut short, a stream that ended without a finish reason). Retried
  without counting against ``attempts``, bounded by ``max_retries``.
* ``transient``: the server answered "not now": 408, 409, 429, 5xx, or no
  first token within ``first_token_s``. Same budget as ``network``.
* ``model``: the stream itself was bad: zero output, stalled between tokens
  (``inter_token_s``), a guardrail of severity ``error``.
  Counts against ``attempts`` (tries of the model, the first included).
* ``fatal``: 400, 401, 403, 404, 422 (any other 4xx too), and errors that are
  not the transport's or the server's (a bug in the caller's code). Never
  retried.

Waits are `tenacity <https://tenacity.readthedocs.io>`_ wait strategies
(callables of a :class:`tenacity.RetryCallState`), so tenacity's own compose
with ours (``wait_fixed(1) + wait_random(0, 1)``). Ours: :class:`wait_openai`
(the OpenAI SDK's backoff, the default) and :class:`wait_retry_after` (the
server's ``retry-after-ms`` / ``Retry-After`` header, seconds or an HTTP date,
capped). ``stop`` takes tenacity stop conditions (``stop_after_delay(60)``)
on top of the counts.
"""
from __future__ import annotations

import asyncio
import email.utils
import enum
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import tenacity
from tenacity import (wait_exponential, wait_fixed, wait_incrementing, wait_random,  # noqa: F401 (re-exported)
                      wait_random_exponential)
from tenacity.wait import wait_base


class Category(str, enum.Enum):
    NETWORK = "network"
    TRANSIENT = "transient"
    MODEL = "model"
    FATAL = "fatal"


class ModelFailure(Exception):
    """The stream arrived but is no good; counts against ``attempts``."""

    reason = "model"


class ZeroOutput(ModelFailure):
    reason = "zero_output"


class Stalled(ModelFailure):
    """No token for ``inter_token_s`` after the stream had started."""

    reason = "stalled"


class LoopStopped(ModelFailure):
    """L0 stopped the row for a loop and the policy asks to try again."""

    reason = "loop"


class GuardrailFailed(ModelFailure):
    """A guardrail of severity ``error`` found a violation: the answer is
    tried again (a fresh attempt) while nothing was delivered."""

    reason = "guardrail"

    def __init__(self, violation: Any) -> None:
        self.violation = violation
        super().__init__(f"guardrail {violation.rule}: {violation.message}")


class GuardrailFatal(Exception):
    """A guardrail of severity ``fatal`` (or an ``error`` one after the
    caller already has part of the answer): never retried."""

    def __init__(self, violation: Any, note: str = "") -> None:
        self.violation = violation
        super().__init__(f"guardrail {violation.rule}: {violation.message}{note}")


class FirstTokenTimeout(Exception):
    """No first token within ``first_token_s`` (transient: a busy replica)."""


class StreamEnded(Exception):
    """The body ended without a finish reason (network: the server went away)."""


RETRYABLE_STATUS = frozenset({408, 409, 429})
_NETWORK_NAMES = ("ConnectError", "ConnectTimeout", "ReadError", "WriteError", "RemoteProtocolError",
                  "LocalProtocolError", "NetworkError", "TransportError", "ProxyError", "IncompleteRead",
                  "IncompleteReadError", "ChunkedEncodingError", "ProtocolError")


# An Anthropic stream's ``error`` event type, as the HTTP status the same error
# has as a response (the event comes on a 200): what the policy reads.
ERROR_TYPE_STATUS = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429, "timeout_error": 504,
                     "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                     "not_found_error": 404, "request_too_large": 413}


def in_band_status(body: Any) -> int | None:
    """The status an error event inside a stream carries: OpenAI-shaped
    ``{"message", "type", "code": 500}`` (vLLM's, when generation fails
    mid-stream: its engine dead, its request aborted; 503 when retryable), or
    wrapped in ``{"error": {...}}``, or Anthropic's ``{"type": "error",
    "error": {"type": "overloaded_error", ...}}``. None when it says none."""
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error")
    for obj in (body, inner if isinstance(inner, Mapping) else {}):
        code = obj.get("code")
        if isinstance(code, int) and 100 <= code <= 599:
            return code
        kind = obj.get("type")
        if isinstance(kind, str) and kind in ERROR_TYPE_STATUS:
            return ERROR_TYPE_STATUS[kind]
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (openai's ``APIStatusError``,
    httpx's ``HTTPStatusError``); for an error event inside a stream (the
    SDKs raise it with the stream's 200, or with no status at all: openai's
    ``APIError``), the status the event says (:func:`in_band_status`), else None."""
    code = getattr(exc, "status_code", None)
    if not isinstance(code, int):
        code = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(code, int) and code >= 400:
        return code
    said = in_band_status(getattr(exc, "body", None))
    if said is not None:
        return said
    return code if isinstance(code, int) else None


def headers_of(exc: BaseException) -> Mapping[str, str]:
    resp = getattr(exc, "response", None)
    h = getattr(resp, "headers", None)
    return h if h is not None else {}


def classify(exc: BaseException) -> Category:
    """The category of one failure (see module docstring)."""
    if isinstance(exc, ModelFailure):
        return Category.MODEL
    if isinstance(exc, (FirstTokenTimeout, asyncio.TimeoutError, TimeoutError)):
        return Category.TRANSIENT
    if isinstance(exc, StreamEnded):
        return Category.NETWORK
    code = status_of(exc)
    if code is not None:
        return Category.TRANSIENT if code in RETRYABLE_STATUS or code >= 500 else Category.FATAL
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"APITimeoutError", "TimeoutException", "ReadTimeout", "PoolTimeout"}:
        return Category.TRANSIENT
    if (names & {"APIConnectionError", *_NETWORK_NAMES} or isinstance(exc, (ConnectionError, EOFError))
            or (isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError)))):
        return Category.NETWORK
    return Category.FATAL


def _short(exc: BaseException) -> str:
    """``Type: message`` of a failure, at most about 300 characters (events, errors)."""
    text = str(exc) or type(exc).__name__
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, else ``Retry-After``
    as seconds or an HTTP date. None when absent, unparsable or negative."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            v = float(ms) / 1000.0
            return v if v >= 0 else None
    except (TypeError, ValueError):
        pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        v = float(raw)
        return v if v >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    v = when - (time.time() if now is None else now)
    return max(0.0, v)


def should_retry_header(exc: BaseException) -> bool | None:
    """``x-should-retry: true|false`` (the server's override), else None."""
    v = headers_of(exc).get("x-should-retry")
    if v == "true":
        return True
    if v == "false":
        return False
    return None


class wait_openai(wait_base):
    """The OpenAI SDK's backoff: ``min(initial * 2**n, max) * U(1 - jitter, 1)``
    for the n-th retry (n from 0)."""

    def __init__(self, initial: float = 0.5, maximum: float = 8.0, jitter: float = 0.25,
                 rng: Callable[[], float] = random.random) -> None:
        self.initial, self.maximum, self.jitter, self.rng = initial, maximum, jitter, rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        n = max(0, retry_state.attempt_number - 1)
        return min(self.initial * 2 ** n, self.maximum) * (1 - self.jitter * self.rng())


class wait_retry_after(wait_base):
    """The server's ``retry-after-ms`` / ``Retry-After`` when the failure
    carries one (capped at ``cap`` seconds), else ``fallback``."""

    def __init__(self, fallback: Callable[[tenacity.RetryCallState], float] | None = None,
                 cap: float = 120.0, clock: Callable[[], float] = time.time) -> None:
        self.fallback = fallback if fallback is not None else wait_openai()
        self.cap, self.clock = cap, clock

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if exc is not None:
            asked = retry_after_s(headers_of(exc), now=self.clock())
            if asked is not None:
                return min(asked, self.cap)
        return self.fallback(retry_state)


BACKOFFS = {
    # name -> factory(base_s, max_s): the original L0's strategies as tenacity waits
    "exponential": lambda b, m: wait_exponential(multiplier=b, min=b, max=m),
    "full-jitter": lambda b, m: wait_random_exponential(multiplier=b, max=m),
    "fixed-jitter": lambda b, m: wait_fixed(b) + wait_random(0, b),
    "linear": lambda b, m: wait_incrementing(start=b, increment=b, max=m),
    "fixed": lambda b, m: wait_fixed(b),
    "openai": lambda b, m: wait_openai(initial=b, maximum=m),
}


def backoff(name: str, base_s: float = 0.5, max_s: float = 8.0) -> wait_base:
    """A named strategy (``exponential``, ``full-jitter``, ``fixed-jitter``,
    ``linear``, ``fixed``, ``openai``). Raises ValueError for another name."""
    try:
        return BACKOFFS[name](base_s, max_s)
    except KeyError:
        raise ValueError(f"l0: unknown backoff {name!r}; choose one of {sorted(BACKOFFS)}") from None


DEFAULT_L0_DEADLINE_S = 300.0


@dataclass(frozen=True)
class Retry:
    """When to try again and how long to wait.

    ``attempts``: tries of the model, the first included (model failures use
    them up). ``max_retries``: retries of every category together, per
    endpoint (each fallback starts afresh). ``wait``: any tenacity wait;
    ``waits`` overrides it per category. ``respect_retry_after``: the
    server's ``Retry-After`` first (capped at ``max_retry_after_s``), as the
    OpenAI SDK does. ``should_retry(exc, category, state) -> bool | None``:
    the caller's veto (False: give up now; True: retry if the budget allows;
    None: the policy decides). ``stop``: a tenacity stop condition checked
    too. ``retry_on_loop``: an L0 loop stop is a model failure (regenerate),
    not a finished answer.

    Fleets (:mod:`l0.client.fleet`): a failed endpoint cools down for
    ``cooldown_s`` (doubling per failure in a row, at most ``max_cooldown_s``;
    0: off) and, while it does, the next attempt goes at once to another
    endpoint serving the same model that is not cooling down (and whose
    ``/l0/health`` says so, for L0 servers), the first in list order.
    ``deadline_s``: how long a stream keeps trying after a failure, counted
    from its first failure since the last token it received. Within it, once
    every endpoint used up ``max_retries`` they all get them again (another
    round, waiting for the first to cool down: a ``wait`` event); past it the
    stream gives up (``why="deadline"``). None: 300 s for streams on L0
    servers (they resume from checkpoints, so waiting loses nothing), counts
    only for others; 0: counts only.
    """

    attempts: int = 3
    max_retries: int = 6
    wait: Callable[[tenacity.RetryCallState], float] = field(default_factory=wait_openai)
    waits: Mapping[Category, Callable[[tenacity.RetryCallState], float]] = field(default_factory=dict)
    respect_retry_after: bool = True
    max_retry_after_s: float = 120.0
    should_retry: Callable[[BaseException, Category, "RetryState"], bool | None] | None = None
    stop: Any = None
    retry_on_loop: bool = False
    cooldown_s: float = 5.0
    max_cooldown_s: float = 30.0
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("l0: Retry.attempts must be at least 1 (the first try)")
        if self.max_retries < 0:
            raise ValueError("l0: Retry.max_retries must be >= 0")
        for name in ("cooldown_s", "max_cooldown_s", "deadline_s"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"l0: Retry.{name} must be >= 0")

    def deadline_for(self, l0: bool) -> float:
        """The time budget of a stream (0: counts only); see the class doc."""
        if self.deadline_s is None:
            return DEFAULT_L0_DEADLINE_S if l0 else 0.0
        return self.deadline_s


@dataclass
class RetryState:
    """Counts for one endpoint: tries made, retries per category."""

    tries: int = 0                 # streams opened
    model_failures: int = 0
    retries: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float = 0.0
    why: str = ""                  # when not retrying: fatal | vetoed | attempts | max_retries | stop | deadline


def decide(policy: Retry, state: RetryState, exc: BaseException, category: Category,
           clock: Callable[[], float] = time.time) -> Decision:
    """Whether to retry after ``exc`` (already counted in ``state.tries``) and
    the delay. Updates ``state``'s counters when it retries."""
    forced = should_retry_header(exc)
    if category is Category.FATAL and forced is not True:
        return Decision(False, why="fatal")
    if forced is False:
        return Decision(False, why="vetoed")
    if policy.should_retry is not None:
        verdict = policy.should_retry(exc, category, state)
        if verdict is False:
            return Decision(False, why="vetoed")
    if category is Category.MODEL and state.model_failures + 1 >= policy.attempts:
        return Decision(False, why="attempts")
    if state.retries >= policy.max_retries:
        return Decision(False, why="max_retries")
    rs = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    rs.attempt_number = state.retries + 1
    rs.start_time = state.started
    rs.set_exception((type(exc), exc, exc.__traceback__))
    if policy.stop is not None and policy.stop(rs):
        return Decision(False, why="stop")
    wait = policy.waits.get(category, policy.wait)
    if policy.respect_retry_after:
        wait = wait_retry_after(wait, cap=policy.max_retry_after_s, clock=clock)
    delay = max(0.0, float(wait(rs)))
    if category is Category.MODEL:
        state.model_failures += 1
    state.retries += 1
    state.by_category[category.value] = state.by_category.get(category.value, 0) + 1
    return Decision(True, delay)


@dataclass(frozen=True)
class Timeouts:
    """Active timeouts: a hung stream is interrupted, not waited on.
    ``first_token_s``: from opening the request to the first chunk (prefill
    of a long prompt on a busy replica: generous). ``inter_token_s``: between
    chunks. None: no limit."""

    first_token_s: float | None = 60.0
    inter_token_s: float | None = 30.0

    def __post_init__(self) -> None:
        for name in ("first_token_s", "inter_token_s"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"l0: Timeouts.{name} must be > 0 or None")


Sleep = Callable[[float], Awaitable[None]]
