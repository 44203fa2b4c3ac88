"""``l0.wrap(client)``: an OpenAI SDK client whose streams are hardened, and
``l0.run(stream=factory)`` for any async stream of chunks.

    client = l0.wrap(AsyncOpenAI(base_url=..., api_key=...),
                     fallbacks=[AsyncOpenAI(base_url=other)], log="streams.jsonl")
    stream = await client.chat.completions.create(model=..., messages=..., stream=True)
    async for chunk in stream:          # openai.types.chat.ChatCompletionChunk
        ...

The wrapped client answers ``chat.completions.create`` and
``completions.create`` (streaming through a :class:`~l0.client.session.Session`;
non-streaming with classified retries and fallbacks) and hands every other
attribute to the client it wraps. Its own SDK retries are turned off (this
layer counts them); the SDK's conventions (``Retry-After``, backoff) are kept
by the default :class:`~l0.client.retry.Retry`.

Each endpoint's server is probed once (``GET /l0/health``; ``GET /version``
for vLLM) and the answer cached per base URL. Against L0 servers a request
gets an ``l0_key`` and ``return_token_ids`` and resumes from the checkpoint;
elsewhere the text received is continued.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from l0.client import chunks as ck
from l0.client import events as ev
from l0.client.retry import Category, Retry, RetryState, Timeouts, ZeroOutput, classify, decide, status_of
from l0.client.content import has_content
from l0.contract import CHECKPOINTS_OFF, CHECKPOINTS_ROUTE, OPT_KEY
from l0.client.session import Endpoint, Plan, Session, end_checks, judge

_PROBES: dict[str, "ServerInfo"] = {}
PROBE_TIMEOUT_S = 5.0
RECORD_LAG_S = 2.0   # how long a record known to exist is asked for before regenerating instead

# Request fields the SDK's create() does not know as keywords: sent through extra_body.
_COMPLETION_KEYS = {"model", "prompt", "stream", "max_tokens", "temperature", "top_p", "seed", "stop",
                    "presence_penalty", "frequency_penalty", "logit_bias", "n", "logprobs", "echo", "best_of",
                    "suffix", "user", "stream_options"}


@dataclass(frozen=True)
class ServerInfo:
    l0: bool = False
    vllm: bool = False
    known: bool = False      # False: not probed, or the probe could not reach it


@dataclass(frozen=True)
class Options:
    """Everything ``wrap``/``run`` take besides the client (see README)."""
    retry: Retry = field(default_factory=Retry)
    timeout: Timeouts = field(default_factory=Timeouts)
    fallbacks: tuple = ()
    callbacks: ev.Callbacks = field(default_factory=ev.Callbacks)
    log: Any = None                         # an EventLog (made from a path by wrap/run)
    resume: bool = True
    check_zero_output: bool = True
    l0_resume: bool = True                  # probe for L0 servers and resume from checkpoints
    verdict: bool = False                   # L0 servers: fetch the record at the end (a Verdict event)
    verdict_wait_s: float = 2.0             # how long the record may take to show the finish
    guardrails: Any = None                  # an l0.client.guardrails.Guardrails (spec; each stream runs a fresh copy)
    drift: Any = None                       # drift monitors (a Guardrails of l0.client.drift rules)
    hold: bool = False                      # streams: deliver once the answer passed its end checks
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.time


def _root(base_url: str) -> str:
    url = str(base_url).rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def _headers(client: Any) -> dict[str, str]:
    out = {}
    for source in (getattr(client, "default_headers", None) or {}, getattr(client, "auth_headers", None) or {}):
        for k, v in source.items():
            if isinstance(v, str) and not k.lower().startswith("x-stainless"):
                out[k] = v
    return out


async def probe(client: Any, refresh: bool = False) -> ServerInfo:
    """Is the server behind ``client`` (an SDK client) an L0 server
    (``/l0/health`` answers 200 or 503 with JSON), a vLLM server
    (``/version``)? Cached per base URL; a server that can't be reached is
    not cached (``known`` False)."""
    return await probe_root(_root(client.base_url), _headers(client), refresh)


async def probe_root(root: str, headers: dict[str, str], refresh: bool = False) -> ServerInfo:
    import httpx

    if not refresh and root in _PROBES:
        return _PROBES[root]
    l0 = vllm = False
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, headers=headers) as http:
            r = await http.get(root + "/l0/health")
            if r.status_code in (200, 503):
                try:
                    l0 = isinstance(r.json(), dict)
                except ValueError:
                    l0 = False
            r = await http.get(root + "/version")
            if r.status_code == 200:
                try:
                    vllm = "version" in r.json()
                except ValueError:
                    vllm = False
    except httpx.HTTPError:
        return ServerInfo()
    info = _PROBES[root] = ServerInfo(l0=l0, vllm=vllm or l0, known=True)
    return info


class ServerEndpoint(Endpoint):
    """An OpenAI-compatible server and the request (with overrides): how to
    plan each attempt (fresh, checkpoint, regenerate, text). Subclasses
    open the stream (:class:`SDKEndpoint`; :class:`l0.client.failover.HttpEndpoint`).
    ``assume_l0``: the caller knows the server runs L0 (no probe)."""

    def __init__(self, base_url: str, headers: dict[str, str], kind: str, params: dict, options: Options,
                 peers: list["ServerEndpoint"], assume_l0: bool = False) -> None:
        self.kind = kind
        self.params = params
        self.model = params.get("model")
        self.name = str(base_url)
        self.root = _root(base_url)
        self.headers = headers
        self.options = options
        self.peers = peers
        self.assume_l0 = assume_l0
        self.info = ServerInfo(l0=True, vllm=True, known=True) if assume_l0 else ServerInfo()
        self.l0 = assume_l0

    async def prepare(self) -> None:
        if not self.info.known:
            self.info = await probe_root(self.root, self.headers)
        self.l0 = self.info.l0 and self.options.l0_resume  # off: an L0 server is used as plain vLLM

    # -- planning -------------------------------------------------------------
    async def plan(self, session: Session) -> Plan | None:
        got = session.received
        if got.empty and not self.info.known:
            await self.prepare()  # the server was unreachable at the first probe
        if not got.empty and not self.options.resume:
            raise ResumeRefused("l0: resume is off and the stream broke mid-way")
        same_model = session.key_model in (None, self.model)
        if (self.l0 and session.l0_key and session.attempts and got.token_ids is not None and self.options.resume
                and same_model):
            # a keyed attempt was made: its checkpoint may hold tokens never delivered
            return await self._plan_l0(session)
        if got.empty:
            if self.l0 and (session.l0_key is None or not same_model):
                from l0.contract import new_key
                session.l0_key = new_key()  # (a fallback to another model starts its own record)
            if self.l0:
                session.key_model = self.model
            return Plan("fresh", self._fresh_request(session))
        return self._plan_text(session)  # token ids of another model mean nothing here: text

    def _fresh_request(self, session: Session) -> dict:
        params = dict(self.params)
        if self.l0:
            extra = dict(params.get("extra_body") or {})
            xargs = dict(extra.get("vllm_xargs") or {})
            xargs[OPT_KEY] = session.l0_key
            extra["vllm_xargs"] = xargs
            extra["return_token_ids"] = True
            params["extra_body"] = extra
        return {"call": self.kind, "params": params}

    async def _plan_l0(self, session: Session) -> Plan | None:
        from l0.client.resume import check_model, continuation_body, merge, needs_regeneration, remaining

        got = session.received
        # Tokens came for the key: its record exists, perhaps not yet readable.
        record = await self._fetch_checkpoint(session, wait_s=RECORD_LAG_S if got.token_ids else 0.0)
        greedy = self.params.get("temperature") == 0 or (self.params.get("extra_body") or {}).get("temperature") == 0
        # A chat request with tools: the server's tool parser reads the chat stream; a continuation
        # on /v1/completions would hand a later tool call to the caller as raw text.
        tools = self.kind == "chat" and bool(self.params.get("tools") or self.params.get("functions"))
        if record is None or needs_regeneration(record) or tools:
            if got.empty:
                return Plan("fresh", self._fresh_request(session))
            if greedy:
                return Plan("regenerate", self._fresh_request(session), skip_ids=len(got.token_ids),
                            skip_chars=len(got.text), convert=True)
            return self._plan_text(session)
        check_model(record, self.model, got.token_ids)
        outputs = merge(got.token_ids, record.output_ids, session.l0_key)
        extra = outputs[len(got.token_ids):]
        if extra:  # generated and checkpointed, never delivered: deliver first
            text = await self.detokenize_tail(got.token_ids, outputs, delivered=got.text)
            p = ck.Parts(text=text, token_ids=tuple(extra))
            session.take(p)
            session.pending.append(session._restamp(p))
        left = remaining(record, outputs)
        if record.finished or (left is not None and left <= 0):
            session.finish_reason = record.finish_reason or "length"
            session.pending.append(session._restamp(ck.Parts(finish_reason=session.finish_reason)))
            return None
        body = continuation_body(record, outputs, self.model)
        if self.params.get("stream_options") is not None:   # e.g. include_usage: the caller wants the usage chunk
            body["stream_options"] = self.params["stream_options"]
        return Plan("checkpoint", {"call": "completion", "params": _split(body)}, convert=True,
                    resume_from=len(outputs))

    def _plan_text(self, session: Session) -> Plan:
        got = session.received
        params = {k: v for k, v in self.params.items()}
        extra = dict(params.get("extra_body") or {})
        left = _reduce(params, extra, got.tokens)
        if left is not None and left <= 0:
            raise ResumeRefused("l0: the token budget is spent")
        if self.kind == "chat":
            messages = list(params["messages"]) + [{"role": "assistant", "content": got.text}]
            if self.info.vllm:
                extra.update(continue_final_message=True, add_generation_prompt=False)
                overlap = False
            else:
                messages.append({"role": "user", "content": CONTINUE_PROMPT})
                overlap = True
            params["messages"] = messages
        else:
            prompt = params.get("prompt")
            if not isinstance(prompt, str):
                raise ResumeRefused("l0: text continuation needs a string prompt")
            params["prompt"] = prompt + got.text
            overlap = False
        if extra:
            params["extra_body"] = extra
        return Plan("text", {"call": self.kind, "params": params}, convert=True, drop_overlap=overlap)

    async def open(self, plan: Plan, session: Session) -> AsyncIterator[Any]:
        raise NotImplementedError

    def _l0_peers(self) -> list["ServerEndpoint"]:
        """This endpoint, then the other L0 servers of the session (each
        server once): where checkpoints and ``/detokenize`` are asked for."""
        out, roots = [], set()
        for ep in [self] + [p for p in self.peers if p.l0]:
            if ep.root not in roots:
                roots.add(ep.root)
                out.append(ep)
        return out

    async def finished(self, session: Session) -> None:
        if (self.options.verdict or self.options.drift is not None) and self.l0 and session.l0_key:
            await self.verdict(session)

    async def verdict(self, session: Session, wait_s: float | None = None) -> dict | None:
        """The server's verdict on the stream from its checkpoint record:
        ``{"action", "interventions", "finished", "finish_reason", "key"}``
        (``action``: the last intervention's, ``"none"`` without one). Polls
        up to ``wait_s`` for the record to show the finish (its final
        snapshot lands after the last token: the row's removal reaches L0 in
        a later engine step). Emits :class:`~l0.client.events.Verdict`. None when
        no record can be read."""
        wait = self.options.verdict_wait_s if wait_s is None else wait_s
        record = await self._fetch_checkpoint(session, emit=False, wait_s=wait, ready=lambda r: r.finished,
                                              every_s=0.05)
        if record is None:
            return None
        items = [dict(i) for i in record.interventions]
        verdict = {"key": session.l0_key, "action": str(items[-1].get("action")) if items else "none",
                   "interventions": items, "finished": bool(record.finished),
                   "finish_reason": record.finish_reason}
        session.verdict = verdict
        session.emit(ev.Verdict, action=verdict["action"], reason=items[-1].get("reason") if items else None,
                     detail=verdict)
        return verdict

    async def fix_text(self, chunk: Any, kept: list[int], session: Session) -> str:
        have = session.received.token_ids or []
        return await self.detokenize_tail(have, list(have) + list(kept), delivered=session.received.text)

    async def detokenize_tail(self, have: list[int], full: list[int], delivered: str | None = None) -> str:
        """Text of ``full[len(have):]`` as it continues ``have``, rendered as
        the stream renders it: L0's ``/l0/detokenize`` (special tokens
        skipped unless the request says ``skip_special_tokens: false``), on
        this endpoint or an L0 peer; vLLM's ``/detokenize`` (which keeps
        them) only on servers without it. ``delivered``: the text the caller
        already has for ``have``. A stream holds back the bytes of a
        character split across tokens (and a space before them), so the
        text is what the whole output decodes to past ``delivered``, less a
        character still incomplete at the end (it comes with the next
        token): cut there, decoding ``have`` alone lost that space."""
        import httpx

        extra = self.params.get("extra_body") or {}
        skip = extra.get("skip_special_tokens", self.params.get("skip_special_tokens", True)) is not False

        async def detok(http, ids):
            if not ids:
                return ""
            for ep in self._l0_peers():
                try:
                    r = await http.post(ep.root + "/l0/detokenize", json={"tokens": ids, "skip_special_tokens": skip})
                    if r.status_code == 200:
                        return r.json()["text"]
                    if r.status_code in (404, 405):  # an L0 server from before the route
                        r = await http.post(ep.root + "/detokenize", json={"model": self.model, "tokens": ids})
                        if r.status_code == 200:
                            return r.json()["prompt"]
                except httpx.HTTPError:
                    continue
            raise ConnectionError("l0: no endpoint could detokenize")

        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, headers=self.headers) as http:
            b = await detok(http, list(full))
            if delivered is not None and b.startswith(delivered):
                return b[len(delivered):].rstrip("\ufffd")
            a = await detok(http, list(have))
        return b[len(a):] if b.startswith(a) else b[len(a.rstrip("\ufffd")):]

    async def _fetch_checkpoint(self, session: Session, emit: bool = True, wait_s: float = 0.0,
                                ready: "Callable[[Any], bool] | None" = None, every_s: float = 0.1):
        import httpx

        key = session.l0_key
        peers = self._l0_peers()
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as http:
            found = await fetch_record(http, key, [(ep.root, ep.headers) for ep in peers], wait_s, ready, every_s)
        if found is None:
            return None
        record, i = found
        if emit:
            session.emit(ev.CheckpointFetched, key=key, endpoint=peers[i].name, tokens=len(record.output_ids),
                         finished=bool(record.finished))
        return record


async def fetch_record(http: Any, key: str, targets: Sequence[tuple[str, dict]], wait_s: float = 0.0,
                       ready: "Callable[[Any], bool] | None" = None,
                       every_s: float = 0.1) -> "tuple[Any, int] | None":
    """The checkpoint record of ``key`` from the first of ``targets`` (server
    root URL, headers) that answers, and that target's index. A 404 is an
    answer (None); an unreachable server or a corrupt record: the next one.

    ``wait_s`` > 0: the caller knows the record exists (a server streamed
    tokens for the key, and a keyed request is snapshotted when admitted),
    so finding none is a lag, not an answer: every target is asked again
    every ``every_s`` seconds for up to ``wait_s`` seconds. The engine writes
    records from a background thread and a store can be briefly slow, and a
    miss here turns an exact resume into a whole regeneration. ``ready``: a
    record found that fails it (not finished yet, for a verdict) is asked
    for again the same way; at the deadline the last one found is returned."""
    import httpx

    from l0.contract import CorruptRecord, Record

    deadline = time.monotonic() + wait_s
    live = list(enumerate(targets))
    found = None
    while live:
        for i, (root, headers) in list(live):
            try:
                r = await http.get(f"{root}{CHECKPOINTS_ROUTE}/{key}", headers=headers)
            except httpx.HTTPError:
                continue
            if r.status_code == 404:
                break
            if r.status_code == 200:
                try:
                    found = Record.from_dict(r.json()), i
                except (CorruptRecord, ValueError):
                    continue
                if ready is None or ready(found[0]):
                    return found
                break
            if _checkpoints_off(r):
                live.remove((i, (root, headers)))   # will never have it: not asked again
        if time.monotonic() >= deadline:
            return found
        await asyncio.sleep(every_s)
    return found


def _checkpoints_off(r: Any) -> bool:
    try:
        return r.status_code == 503 and r.json()["error"]["type"] == CHECKPOINTS_OFF
    except (ValueError, KeyError, TypeError):
        return False


class SDKEndpoint(ServerEndpoint):
    """An OpenAI SDK client (async): attempts run through its own
    ``create`` (SDK retries off: this layer counts them)."""

    def __init__(self, client: Any, kind: str, params: dict, options: Options, peers: list[ServerEndpoint]) -> None:
        super().__init__(str(client.base_url), _headers(client), kind, params, options, peers)
        self.client = client.with_options(max_retries=0)

    async def open(self, plan: Plan, session: Session) -> AsyncIterator[Any]:
        req = plan.request
        params = dict(req["params"])
        params["stream"] = True
        api = self.client.chat.completions if req["call"] == "chat" else self.client.completions
        return await api.create(**params)


CONTINUE_PROMPT = ("Continue your previous answer exactly where it stopped, without repeating any of it "
                   "and without any preamble.")


class ResumeRefused(Exception):
    """The stream can't be continued (resume off, no budget left)."""


def _split(body: dict) -> dict:
    """A raw ``/v1/completions`` body as SDK keywords plus ``extra_body``."""
    params = {k: v for k, v in body.items() if k in _COMPLETION_KEYS}
    extra = {k: v for k, v in body.items() if k not in _COMPLETION_KEYS}
    if extra:
        params["extra_body"] = extra
    return params


def _reduce(params: dict, extra: dict, used: int) -> int | None:
    """Lower the token budget (max_tokens / max_completion_tokens) by ``used``."""
    left = None
    for holder in (params, extra):
        for name in ("max_tokens", "max_completion_tokens"):
            if holder.get(name) is not None:
                left = int(holder[name]) - used
                holder[name] = max(1, left)
        if holder.get("min_tokens"):
            holder["min_tokens"] = max(0, int(holder["min_tokens"]) - used)
    return left


# -- the wrapped client ------------------------------------------------------

class L0Stream:
    """What a wrapped streaming ``create`` returns: iterate it like the SDK's
    ``AsyncStream``. ``session`` holds the events, attempts, token ids and
    the server's verdict."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._it: AsyncIterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._it is None:
            self._it = self.session.__aiter__()
        return self._it

    async def __anext__(self) -> Any:
        return await self.__aiter__().__anext__()

    async def close(self) -> None:
        if self._it is not None:
            await self._it.aclose()

    async def __aenter__(self) -> "L0Stream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def verdict(self, wait_s: float | None = None) -> dict | None:
        """What L0 on the server did to this stream (see
        :meth:`SDKEndpoint.verdict`); None when the endpoint is not an L0
        server or the record can't be read. Fetched once, then kept."""
        s = self.session
        if s.verdict is not None:
            return s.verdict
        ep = s.endpoint
        if not isinstance(ep, ServerEndpoint) or not ep.l0 or not s.l0_key:
            return None
        return await ep.verdict(s, wait_s)

    @property
    def text(self) -> str:
        return self.session.received.text

    @property
    def token_ids(self) -> list[int] | None:
        return self.session.received.token_ids


class _Create:
    def __init__(self, owner: "WrappedClient", kind: str) -> None:
        self.owner, self.kind = owner, kind

    async def create(self, **params: Any) -> Any:
        return await self.owner._create(self.kind, params)


class _Namespace:
    def __init__(self, inner: Any, **attrs: Any) -> None:
        self._inner = inner
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class WrappedClient:
    """An ``AsyncOpenAI`` with hardened ``chat.completions.create`` and
    ``completions.create``; every other attribute is the wrapped client's."""

    def __init__(self, client: Any, options: Options) -> None:
        self._client = client
        self._options = options
        self.chat = _Namespace(client.chat, completions=_Namespace(client.chat.completions,
                                                                    create=_Create(self, "chat").create))
        self.completions = _Namespace(client.completions, create=_Create(self, "completion").create)
        self.last: Session | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _endpoints(self, kind: str, params: dict) -> list[SDKEndpoint]:
        eps: list[SDKEndpoint] = []
        for client, overrides in [(self._client, {})] + [_fallback(f, self._client) for f in self._options.fallbacks]:
            eps.append(SDKEndpoint(client, kind, {**params, **overrides}, self._options, eps))
        return eps

    async def _create(self, kind: str, params: dict) -> Any:
        o = self._options
        if not params.get("stream"):
            return await _non_streaming(self._endpoints(kind, params), kind, o)
        if (params.get("n") or 1) > 1:
            raise ValueError("l0: streaming with n > 1 is not hardened; ask for one choice per request")
        params = {k: v for k, v in params.items() if k != "stream"}
        session = Session(self._endpoints(kind, params), kind=kind, retry=o.retry, timeouts=o.timeout,
                          emit=o.callbacks, log=o.log, sleep=o.sleep, clock=o.clock,
                          check_zero_output=o.check_zero_output, guardrails=o.guardrails, drift=o.drift,
                          hold=o.hold)
        self.last = session
        return L0Stream(session)


def _fallback(f: Any, primary: Any) -> tuple[Any, dict]:
    """A fallback: an SDK client (same request), a dict of overrides (same
    client, e.g. another model), or (client, overrides)."""
    if isinstance(f, dict):
        return primary, dict(f)
    if isinstance(f, tuple) and len(f) == 2:
        return f[0], dict(f[1])
    if hasattr(f, "chat") and hasattr(f, "base_url"):
        return f, {}
    raise TypeError(f"l0: a fallback is a client, a dict of overrides or (client, overrides), not {type(f).__name__}")


async def _non_streaming(endpoints: list[SDKEndpoint], kind: str, o: Options) -> Any:
    """One response with classified retries, zero-output check and fallbacks."""
    emit = o.callbacks
    sid = "s-" + __import__("uuid").uuid4().hex[:16]

    def send(cls, **kw):
        e = cls(stream_id=sid, ts=o.clock(), **kw)
        if o.log is not None:
            o.log.event(e)
        emit(e)

    send(ev.SessionStart, kind=kind, model=endpoints[0].model, endpoint=endpoints[0].name)
    attempts, last = 0, None
    try:
        for index, ep in enumerate(endpoints):
            if index:
                send(ev.FallbackStart, index=index, endpoint=ep.name, model=ep.model)
            state = RetryState()
            while True:
                attempts += 1
                send(ev.AttemptStart, attempt=attempts, endpoint=ep.name, mode="fresh")
                api = ep.client.chat.completions if kind == "chat" else ep.client.completions
                try:
                    coro = api.create(**ep.params)
                    limit = o.timeout.first_token_s
                    resp = await (asyncio.wait_for(coro, limit) if limit else coro)
                    choice = resp.choices[0] if resp.choices else None
                    text = (getattr(getattr(choice, "message", None), "content", None) if kind == "chat"
                            else getattr(choice, "text", None)) or ""
                    tools = bool(getattr(getattr(choice, "message", None), "tool_calls", None))
                    if o.check_zero_output and not tools and not has_content(text):
                        raise ZeroOutput(f"zero output ({len(text)} chars)")
                    _judge_whole(text, o, send, attempts, tools)
                    usage = resp.usage.model_dump() if getattr(resp, "usage", None) is not None else None
                    send(ev.Complete, finish_reason=getattr(choice, "finish_reason", None), attempts=attempts,
                         chars=len(text), usage=usage)
                    return resp
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # noqa: BLE001
                    last = exc
                    if isinstance(exc, asyncio.TimeoutError):
                        send(ev.Timeout, attempt=attempts, which="first_token", after_s=o.timeout.first_token_s)
                    cat = classify(exc)
                    send(ev.Failure, attempt=attempts, category=cat.value, error=str(exc)[:300], status=status_of(exc))
                    d = decide(o.retry, state, exc, cat, clock=o.clock)
                    if not d.retry:
                        send(ev.RetryGivenUp, attempt=attempts, category=cat.value, why=d.why, error=str(exc)[:300])
                        if d.why in ("fatal", "vetoed"):
                            raise
                        break
                    send(ev.RetryScheduled, attempt=attempts, category=cat.value, delay_s=d.delay_s,
                         retries=state.retries, model_failures=state.model_failures)
                    if d.delay_s > 0:
                        await o.sleep(d.delay_s)
        assert last is not None
        raise last
    except Exception as exc:
        send(ev.Error, category=classify(exc).value, error=str(exc)[:300])
        raise
    finally:
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


def _options(retry=None, timeout=None, fallbacks=(), log=None, log_fsync="end", callbacks=None,
             resume=True, check_zero_output=True, l0_resume=True, verdict=False, verdict_wait_s=2.0,
             guardrails=None, drift=None, hold=False, sleep=None, clock=None, **cbs) -> Options:
    from l0.client.eventlog import EventLog

    if callbacks is None:
        unknown = set(cbs) - {"on_start", "on_retry", "on_fallback", "on_resume", "on_timeout", "on_complete",
                              "on_error", "on_violation", "on_drift", "on_event"}
        if unknown:
            raise TypeError(f"l0: unknown option(s) {sorted(unknown)}")
        callbacks = ev.Callbacks(**cbs)
    elif cbs:
        raise TypeError("l0: pass callbacks= or on_* keywords, not both")
    if isinstance(retry, dict):
        retry = Retry(**retry)
    if isinstance(timeout, dict):
        timeout = Timeouts(**timeout)
    elif isinstance(timeout, (int, float)):
        timeout = Timeouts(inter_token_s=float(timeout))
    if log is not None and not hasattr(log, "event"):
        log = EventLog(log, fsync=log_fsync)
    if guardrails is not None:
        from l0.client.guardrails import as_guardrails
        guardrails = as_guardrails(guardrails)
    if drift is not None and drift is not False:
        from l0.client.drift import as_monitors
        drift = as_monitors(drift)
    else:
        drift = None
    return Options(retry=retry or Retry(), timeout=timeout or Timeouts(), fallbacks=tuple(fallbacks),
                   callbacks=callbacks, log=log, resume=resume, check_zero_output=check_zero_output,
                   l0_resume=l0_resume, verdict=verdict, verdict_wait_s=verdict_wait_s,
                   guardrails=guardrails, drift=drift, hold=bool(hold),
                   sleep=sleep or asyncio.sleep, clock=clock or time.time)


def wrap(client: Any, **options: Any) -> "WrappedClient | SyncWrappedClient":
    """Harden ``client`` (``openai.AsyncOpenAI`` or ``openai.OpenAI``).
    Options: ``retry`` (:class:`~l0.client.retry.Retry` or its fields as a dict),
    ``timeout`` (:class:`~l0.client.retry.Timeouts`, a dict, or seconds between
    tokens), ``fallbacks`` (clients, dicts of overrides, or (client,
    overrides)), ``log`` (a path: the atomic event log) and ``log_fsync``,
    ``resume``, ``check_zero_output``, ``l0_resume``, ``verdict`` (fetch
    what L0 did from the record when the stream ends) and
    ``verdict_wait_s``, ``guardrails`` (a preset name, rules, or an
    :class:`l0.client.guardrails.Guardrails`), ``drift`` (True, drift kinds, or
    monitors; against L0 servers the server's loop verdict joins them),
    ``hold`` (streams: deliver once the answer passed its end checks, so an
    ``error`` violation is retried unseen), callbacks ``on_start`` ...
    ``on_violation``, ``on_drift``, ``on_event`` (or
    ``callbacks=Callbacks(...)``), ``sleep`` and ``clock`` (injectable).
    Raises TypeError for another object or an unknown option."""
    import openai

    if isinstance(client, openai.OpenAI):
        o = _options(**options)
        fallbacks = tuple(_async_twin(f) if isinstance(f, openai.OpenAI) else
                          (_async_twin(f[0]), f[1]) if isinstance(f, tuple) and isinstance(f[0], openai.OpenAI)
                          else f for f in o.fallbacks)
        o = Options(**{**o.__dict__, "fallbacks": fallbacks})
        return SyncWrappedClient(client, WrappedClient(_async_twin(client), o))
    if not isinstance(client, openai.AsyncOpenAI) and not hasattr(client, "chat"):
        raise TypeError(f"l0.wrap takes an openai.AsyncOpenAI or openai.OpenAI client, not {type(client).__name__}")
    return WrappedClient(client, _options(**options))


def _async_twin(client: Any) -> Any:
    """An ``AsyncOpenAI`` with the synchronous client's address, key, headers
    and timeout (its own ``http_client``, if any, can't be shared)."""
    import openai

    return openai.AsyncOpenAI(api_key=client.api_key, organization=client.organization, project=client.project,
                              base_url=client.base_url, timeout=client.timeout, max_retries=0,
                              default_headers=getattr(client, "_custom_headers", None) or None,
                              default_query=getattr(client, "_custom_query", None) or None)


class _LoopThread:
    """One event loop on a daemon thread per synchronous wrapped client: its
    streams run there (the timers are asyncio's), the caller's thread waits
    for each chunk. Callbacks run on that thread."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="l0-client", daemon=True)
        self.thread.start()

    def run(self, awaitable) -> Any:
        async def wrapper():
            return await awaitable
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result()


class SyncL0Stream:
    """What a synchronous wrapped streaming ``create`` returns: iterate it
    like the SDK's ``Stream``."""

    def __init__(self, stream: L0Stream, loop: _LoopThread) -> None:
        self._stream, self._loop = stream, loop
        self._it = stream.__aiter__()
        self.session = stream.session

    def __iter__(self) -> "SyncL0Stream":
        return self

    def __next__(self) -> Any:
        try:
            return self._loop.run(self._it.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.run(self._stream.close())

    def __enter__(self) -> "SyncL0Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verdict(self, wait_s: float | None = None) -> dict | None:
        return self._loop.run(self._stream.verdict(wait_s))

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def token_ids(self) -> list[int] | None:
        return self._stream.token_ids


class SyncWrappedClient:
    """An ``openai.OpenAI`` with hardened ``chat.completions.create`` and
    ``completions.create`` (run on an :class:`AsyncOpenAI` twin, on a loop
    thread); every other attribute is the wrapped client's."""

    def __init__(self, client: Any, inner: WrappedClient) -> None:
        self._client = client
        self._inner = inner
        self._loop = _LoopThread()
        self.chat = _Namespace(client.chat, completions=_Namespace(client.chat.completions,
                                                                    create=self._creator("chat")))
        self.completions = _Namespace(client.completions, create=self._creator("completion"))

    def _creator(self, kind: str):
        def create(**params: Any) -> Any:
            got = self._loop.run(self._inner._create(kind, params))
            return SyncL0Stream(got, self._loop) if isinstance(got, L0Stream) else got
        return create

    @property
    def last(self) -> Session | None:
        return self._inner.last

    def close(self) -> None:
        """Close the twin clients and stop the loop thread (the wrapped
        synchronous client itself is the caller's to close)."""
        async def shutdown():
            await self._inner._client.close()
            for f in self._inner._options.fallbacks:
                c = f[0] if isinstance(f, tuple) else f
                if hasattr(c, "close") and not isinstance(f, dict):
                    await c.close()
        self._loop.run(shutdown())
        self._loop.loop.call_soon_threadsafe(self._loop.loop.stop)
        self._loop.thread.join(10)
        self._loop.loop.close()

    def __enter__(self) -> "SyncWrappedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# -- l0.run: any async stream factory -----------------------------------------

class FactoryEndpoint(Endpoint):
    """A stream factory: ``factory()`` or, if it takes one argument,
    ``factory(received_text)`` (the text to continue from; "" at first)."""

    def __init__(self, factory: Callable[..., Any], name: str) -> None:
        self.factory = factory
        self.name = name
        try:
            self.takes_text = len(inspect.signature(factory).parameters) >= 1
        except (TypeError, ValueError):
            self.takes_text = False

    async def plan(self, session: Session) -> Plan:
        if session.received.empty:
            return Plan("fresh")
        if not self.takes_text:
            raise ResumeRefused("l0: the stream broke mid-way and its factory takes no text to continue from")
        return Plan("text", convert=True)

    async def open(self, plan: Plan, session: Session) -> AsyncIterator[Any]:
        got = self.factory(session.received.text) if self.takes_text else self.factory()
        if inspect.isawaitable(got):
            got = await got
        return got


def run(stream: Callable[..., Any], *, fallbacks: Sequence[Callable[..., Any]] = (), kind: str = "run",
        **options: Any) -> L0Stream:
    """Harden any async iterator of chunks (SDK chunks, their dicts, or
    strings). ``stream`` and each fallback are factories called per attempt;
    one that takes an argument gets the text received so far and continues
    it. Same options as :func:`wrap`."""
    o = _options(**options)
    eps = [FactoryEndpoint(stream, "primary")] + [FactoryEndpoint(f, f"fallback-{i + 1}")
                                                  for i, f in enumerate(fallbacks)]
    session = Session(eps, kind=kind, retry=o.retry, timeouts=o.timeout, emit=o.callbacks, log=o.log,
                      sleep=o.sleep, clock=o.clock, check_zero_output=o.check_zero_output, require_finish=False,
                      guardrails=o.guardrails, drift=o.drift, hold=o.hold)
    return L0Stream(session)


__all__ = ["wrap", "run", "probe", "WrappedClient", "L0Stream", "Options", "ServerInfo", "ResumeRefused",
           "Category"]
