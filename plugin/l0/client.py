"""The failover client: one seamless token stream across replicas.

    client = FailoverClient(["http://127.0.0.1:8001", "http://127.0.0.1:8002"], model="smollm2")
    async for delta in client.stream_chat([{"role": "user", "content": "..."}], max_tokens=256):
        print(delta.text, end="")
    client.last.token_ids, client.last.finish_reason

Every request carries an ``l0_key`` (generated: 128 random bits) so the
serving replica checkpoints it. When the stream breaks — connection refused
or reset, the server killed, HTTP 5xx, no token within
``policy.inter_token_timeout`` — the client fetches the checkpoint
(``GET /l0/checkpoints/{key}``) from any replica that answers, merges it with
the token ids it already has (the longer consistent prefix), and continues on
the next replica with an ordinary ``/v1/completions`` request whose prompt is
the token ids (:mod:`l0.resume`). Tokens the checkpoint has but the caller
never saw are turned into text with the replica's ``/detokenize``. The caller
sees each token once: nothing duplicated, nothing missing.

No checkpoint (the replica died before writing one, or checkpoints are off)
or guided decoding: the request is regenerated from the start and the tokens
already delivered are checked and skipped (exact under greedy decoding; a
mismatch raises :class:`~l0.resume.ResumeError`). A checkpoint from another
model, or one that disagrees with what was received, is refused with
:class:`~l0.resume.ResumeError` carrying everything received so far.

Events (``on_event``): ``attempt`` (replica, mode fresh|resume|regenerate),
``failure`` (reason), ``resume`` (token offset), ``complete``, ``give_up``.
Attempts and backoff are bounded by :class:`RetryPolicy`; the sleep is
injectable so tests never wait.
"""
from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from l0.checkpoint.record import CorruptRecord, Record
from l0.checkpoint.store import new_key
from l0.resume import ResumeError, check_model, continuation_body, merge, needs_regeneration, remaining


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
    mode: str | None = None   # fresh | resume | regenerate (attempt)
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
    pending: Delta | None = None  # checkpointed tokens not yet handed to the caller


class StreamBroken(Exception):
    """One attempt failed in a way another replica may fix."""


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
        body = {"model": self.model, "messages": messages, **params}
        return self._stream("/v1/chat/completions", body, key)

    def stream_completion(self, prompt: str | list[int], *, key: str | None = None,
                          **params: Any) -> AsyncIterator[Delta]:
        body = {"model": self.model, "prompt": prompt, **params}
        return self._stream("/v1/completions", body, key)

    async def fetch_checkpoint(self, key: str, client=None, start: int = 0) -> Record | None:
        """The record from the first replica that answers, trying them from
        ``start`` on (a 404 is an answer: None)."""
        import httpx

        own = client is None
        client = client or httpx.AsyncClient(timeout=self.policy.connect_timeout_s, headers=self.headers)
        try:
            for url in self._rotation(start):
                try:
                    r = await client.get(f"{url}/l0/checkpoints/{key}")
                except httpx.HTTPError:
                    continue
                if r.status_code == 404:
                    return None
                if r.status_code == 200:
                    try:
                        return Record.from_dict(r.json())
                    except (CorruptRecord, ValueError):
                        continue
            return None
        finally:
            if own:
                await client.aclose()

    # -- the loop ---------------------------------------------------------------
    async def _stream(self, path: str, body: dict, key: str | None) -> AsyncIterator[Delta]:
        import httpx

        key = key or new_key()
        xargs = dict(body.pop("vllm_xargs", None) or {})
        xargs["l0_key"] = key
        body.update(stream=True, return_token_ids=True, vllm_xargs=xargs)
        out = self.last = StreamOutcome(key=key)
        timeout = httpx.Timeout(connect=self.policy.connect_timeout_s, read=None, write=30.0, pool=30.0)
        async with httpx.AsyncClient(timeout=timeout, headers=self.headers) as client:
            attempt, last_reason = 0, None
            while attempt < self.policy.max_attempts:
                attempt += 1
                out.attempts = attempt
                await self.policy.sleep(self.policy.delay(attempt))
                replica = self.replicas[(attempt - 1) % len(self.replicas)]
                try:
                    plan = await self._plan(client, replica, path, body, out, attempt)
                    if plan is None:  # the checkpoint says it already finished
                        if out.pending is not None:
                            delta, out.pending = out.pending, None
                            yield delta
                        break
                    mode, req_path, req_body, skip = plan
                    self._emit(out, Event("attempt", replica, attempt, mode=mode))
                    async for delta in self._one_stream(client, replica, req_path, req_body, out, skip):
                        yield delta
                    if out.finish_reason is not None:
                        break
                    raise StreamBroken("stream ended without a finish reason")
                except (StreamBroken, httpx.HTTPError) as exc:
                    last_reason = _reason(exc)
                    self._emit(out, Event("failure", replica, attempt, reason=last_reason))
                    continue
            else:
                self._emit(out, Event("give_up", attempt=attempt, reason=last_reason, offset=len(out.token_ids)))
                raise ResumeError(f"l0: gave up after {attempt} attempts: {last_reason}", out.token_ids, out.text)
        self._emit(out, Event("complete", attempt=out.attempts, reason=out.finish_reason,
                              offset=len(out.token_ids)))

    async def _plan(self, client, replica: str, path: str, body: dict, out: StreamOutcome, attempt: int):
        """(mode, path, body, tokens to skip) for this attempt, or None when done."""
        if attempt == 1:
            return "fresh", path, body, 0
        record = await self.fetch_checkpoint(out.key, client, start=self.replicas.index(replica))
        if record is None or needs_regeneration(record):
            if not out.token_ids:
                return "fresh", path, body, 0
            return "regenerate", path, body, len(out.token_ids)
        check_model(record, self.model, out.token_ids)
        outputs = merge(out.token_ids, record.output_ids, out.key)
        extra = outputs[len(out.token_ids):]
        if extra:  # generated and checkpointed, never delivered: deliver now
            text = await self._detokenize_tail(client, replica, out.token_ids, outputs)
            out.token_ids.extend(extra)
            out.text += text
            out.pending = Delta(text, list(extra))
        left = remaining(record, outputs)
        if record.finished or (left is not None and left <= 0):
            out.finish_reason = record.finish_reason or "length"
            return None
        self._emit(out, Event("resume", replica, attempt, offset=len(outputs)))
        return "resume", "/v1/completions", continuation_body(record, outputs, self.model), 0

    async def _one_stream(self, client, replica: str, path: str, body: dict, out: StreamOutcome,
                          skip: int) -> AsyncIterator[Delta]:
        import httpx

        if out.pending is not None:
            delta, out.pending = out.pending, None
            yield delta
        first = True
        seen = 0  # tokens of this stream (regenerate: the first `skip` must match)
        try:
            async with client.stream("POST", replica + path, json=body) as resp:
                if resp.status_code >= 500 or resp.status_code in (408, 429):
                    raise StreamBroken(f"HTTP {resp.status_code}")
                if resp.status_code != 200:
                    await resp.aread()
                    raise ResumeError(f"l0: {replica} refused the request: HTTP {resp.status_code}: "
                                      f"{resp.text[:500]}", out.token_ids, out.text)
                lines = resp.aiter_lines()
                while True:
                    limit = self.policy.first_token_timeout_s if first else self.policy.inter_token_timeout_s
                    try:
                        line = await asyncio.wait_for(lines.__anext__(), limit)
                    except StopAsyncIteration:
                        return
                    except asyncio.TimeoutError:
                        raise StreamBroken(f"stalled: no data for {limit:g} s") from None
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise StreamBroken(f"server error in stream: {chunk['error']}")
                    for choice in chunk.get("choices", []):
                        first = False
                        ids = list(choice.get("token_ids") or [])
                        text = choice.get("text")
                        if text is None:
                            text = (choice.get("delta") or {}).get("content") or ""
                        if skip and seen < skip:
                            take = ids[max(0, skip - seen):]
                            for i, t in enumerate(ids[: max(0, skip - seen)]):
                                if out.token_ids[seen + i] != t:
                                    raise ResumeError(
                                        f"l0: regenerated token {seen + i} differs from the one delivered "
                                        "(not greedy?): refusing to continue", out.token_ids, out.text)
                            seen += len(ids)
                            if not take:
                                text = ""
                            else:  # a chunk straddling the boundary: text can't be split by token
                                text = await self._detokenize_tail(client, replica, out.token_ids,
                                                                   out.token_ids + take)
                            ids = take
                        else:
                            seen += len(ids)
                        if ids or text:
                            out.token_ids.extend(ids)
                            out.text += text
                            yield Delta(text, ids)
                        if choice.get("finish_reason"):
                            out.finish_reason = choice["finish_reason"]
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            raise StreamBroken(_reason(exc)) from None

    async def _detokenize_tail(self, client, replica: str, have: list[int], full: list[int]) -> str:
        """Text of ``full[len(have):]`` as it continues ``have``."""
        async def detok(ids):
            if not ids:
                return ""
            for url in [replica] + [u for u in self.replicas if u != replica]:
                try:
                    r = await client.post(url + "/detokenize", json={"model": self.model, "tokens": ids})
                except Exception:
                    continue
                if r.status_code == 200:
                    return r.json()["prompt"]
            raise StreamBroken("no replica could detokenize")
        a, b = await detok(list(have)), await detok(list(full))
        return b[len(a):] if b.startswith(a) else b[len(a.rstrip("\ufffd")):]

    def _rotation(self, start: int) -> list[str]:
        return self.replicas[start:] + self.replicas[:start]

    def _emit(self, out: StreamOutcome, event: Event) -> None:
        out.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, StreamBroken) else text
