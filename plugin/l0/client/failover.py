"""The failover client over plain HTTP: one seamless token stream across L0
replicas, without the OpenAI SDK.

    client = FailoverClient(["http://127.0.0.1:8001", "http://127.0.0.1:8002"], model="smollm2")
    async for delta in client.stream_chat([{"role": "user", "content": "..."}], max_tokens=256):
        print(delta.text, end="")
    client.last.token_ids, client.last.finish_reason

Kept for code written against it; new code uses the one client,
``l0.wrap(l0.http(url), fallbacks=[l0.http(other)])``, which this is a thin
layer over (:class:`~l0.client.session.Session`, planning in
:class:`~l0.client.endpoints.ServerEndpoint`, transport
:class:`~l0.client.http.HttpClient`). Attempt k runs on replica
``(k - 1) % len(replicas)``, each replica known to run L0 (no probe). Every
request carries an ``l0_key``; a broken stream (connection refused or reset,
the server killed, HTTP 408/429/5xx, no token within
``policy.inter_token_timeout_s``) resumes on the next replica from the
checkpoint, token for token (``resume``), or, with no checkpoint or under
guided decoding, is regenerated and the delivered tokens checked and skipped
(``regenerate``, exact under greedy decoding). A checkpoint from another
model, one that disagrees with what was received, a request the server
refuses, or running out of attempts raise :class:`~l0.client.resume.ResumeError`
carrying everything received so far.

Events (``on_event``, :class:`Event`): ``attempt`` (replica, mode
fresh|resume|regenerate|text), ``failure`` (reason), ``resume`` (token
offset), ``complete``, ``give_up``.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from l0.contract import Record, new_key
from l0.client.resume import ResumeError
from l0.client.sse import StreamError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4             # streams started, first one included
    backoff_s: float = 0.25           # before attempt k: backoff_s * 2**(k-2), capped, + jitter
    backoff_max_s: float = 5.0
    jitter_s: float = 0.1
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 300.0  # prefill of a long prompt on a busy replica
    inter_token_timeout_s: float = 30.0   # a stream silent this long has stalled
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def delay(self, attempt: int) -> float:
        if attempt <= 1:
            return 0.0
        return min(self.backoff_s * 2 ** (attempt - 2), self.backoff_max_s) + random.uniform(0, self.jitter_s)


@dataclass(frozen=True)
class Event:
    kind: str                 # attempt | failure | resume | complete | give_up
    replica: str | None = None
    attempt: int = 0
    mode: str | None = None   # fresh | resume | regenerate | text (attempt)
    reason: str | None = None
    offset: int | None = None  # tokens already generated (resume, complete)


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: list[int]


@dataclass
class StreamOutcome:
    key: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    attempts: int = 0
    events: list[Event] = field(default_factory=list)


HTTPStatus = StreamError   # the name this module published for a non-200 answer


_OLD_MODES = {"checkpoint": "resume"}


class FailoverClient:
    def __init__(self, replicas: Sequence[str], model: str, api_key: str | None = None,
                 policy: RetryPolicy = RetryPolicy(), on_event: Callable[[Event], None] | None = None) -> None:
        if not replicas:
            raise ValueError("l0: FailoverClient needs at least one replica URL")
        self.replicas = [r.rstrip("/") for r in replicas]
        self.model = model
        self.policy = policy
        self.on_event = on_event
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.last: StreamOutcome | None = None

    # -- public API -----------------------------------------------------------
    def stream_chat(self, messages: list[dict], *, key: str | None = None, **params: Any) -> AsyncIterator[Delta]:
        return self._stream("chat", {"model": self.model, "messages": messages, **params}, key)

    def stream_completion(self, prompt: str | list[int], *, key: str | None = None,
                          **params: Any) -> AsyncIterator[Delta]:
        return self._stream("completion", {"model": self.model, "prompt": prompt, **params}, key)

    async def fetch_checkpoint(self, key: str, client=None, start: int = 0) -> Record | None:
        """The record from the first replica that answers, trying them from
        ``start`` on (a 404 is an answer: None)."""
        from l0.client.endpoints import fetch_record
        from l0.client.http import client as side_client

        own = client is None
        client = client or side_client(self.policy.connect_timeout_s, self.headers)
        try:
            order = self.replicas[start:] + self.replicas[:start]
            found = await fetch_record(client, key, [(url, {}) for url in order])
            return found[0] if found else None
        finally:
            if own:
                await client.aclose()

    # -- the stream -------------------------------------------------------------
    async def _stream(self, kind: str, params: dict, key: str | None) -> AsyncIterator[Delta]:
        from l0.client import events as ev
        from l0.client.chunks import parts
        from l0.client.endpoints import SDKEndpoint
        from l0.client.http import HttpClient
        from l0.client.options import Options
        from l0.client.retry import Retry, Timeouts
        from l0.client.session import Session

        pol = self.policy
        out = self.last = StreamOutcome(key=key or new_key())
        # attempt k on replica (k - 1) % n, as this client always did: no cooldowns, no rounds
        options = Options(retry=Retry(attempts=1, max_retries=0, cooldown_s=0, deadline_s=0),
                          timeout=Timeouts(first_token_s=pol.first_token_timeout_s,
                                           inter_token_s=pol.inter_token_timeout_s),
                          sleep=pol.sleep, check_zero_output=False)
        replica_of: dict[str, str] = {}

        def translate(e) -> None:
            old = None
            if isinstance(e, ev.AttemptStart):
                out.attempts = e.attempt
                old = Event("attempt", replica_of.get(e.endpoint), e.attempt, mode=_OLD_MODES.get(e.mode, e.mode))
            elif isinstance(e, ev.Failure):
                old = Event("failure", replica_of.get(session.endpoint.name) if session.endpoint else None,
                            e.attempt, reason=e.error)
            elif isinstance(e, ev.Resume) and e.mode == "checkpoint":
                old = Event("resume", replica_of.get(session.endpoint.name), e.attempt, offset=e.token_offset)
            elif isinstance(e, ev.Complete):
                old = Event("complete", attempt=e.attempts, reason=e.finish_reason, offset=e.tokens)
            if old is not None:
                out.events.append(old)
                if self.on_event is not None:
                    self.on_event(old)

        endpoints: list = []
        for i in range(pol.max_attempts):
            replica = self.replicas[i % len(self.replicas)]
            http = HttpClient(replica, headers=self.headers, connect_timeout_s=pol.connect_timeout_s)
            ep = SDKEndpoint(http, kind, dict(params), options, assume_l0=True)
            replica_of[ep.name] = replica
            endpoints.append(ep)
        session = Session(endpoints, kind=kind, retry=options.retry, timeouts=options.timeout, emit=translate,
                          sleep=pol.sleep, check_zero_output=False, l0_key=out.key,
                          fallback_delay=lambda i: pol.delay(i + 1))
        try:
            async for chunk in session:
                p = parts(chunk)
                if p.text or p.token_ids:
                    ids = list(p.token_ids or ())
                    out.token_ids.extend(ids)
                    out.text += p.text
                    yield Delta(p.text, ids)
            out.finish_reason = session.finish_reason
        except ResumeError as exc:
            exc.token_ids, exc.text = list(out.token_ids), out.text
            raise
        except Exception as exc:  # noqa: BLE001 - every failure reaches the caller as ResumeError
            reason = f"{type(exc).__name__}: {exc}"
            e = Event("give_up", attempt=session.attempts, reason=reason, offset=len(out.token_ids))
            out.events.append(e)
            if self.on_event is not None:
                self.on_event(e)
            raise ResumeError(f"l0: gave up after {session.attempts} attempts: {reason}", out.token_ids,
                              out.text) from exc
