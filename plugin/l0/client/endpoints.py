"""Where a hardened stream's attempts go, and how each is planned.

:class:`ServerEndpoint` is an OpenAI-compatible server and the request: it
probes the server once (``GET /l0/health``; ``GET /version`` for vLLM,
cached per base URL) and plans every attempt: fresh (with an ``l0_key`` on
L0 servers), from the checkpoint (token for token), regenerated (greedy, the
delivered tokens checked and skipped) or continued from the text.
:class:`SDKEndpoint` opens attempts through a client with the SDK's surface
(``openai.AsyncOpenAI``, or :class:`l0.client.http.HttpClient` with no SDK);
:class:`FactoryEndpoint` through an ``l0.run`` factory.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

from l0.client import chunks as ck
from l0.client import events as ev
from l0.client.http import client as http_client
from l0.client.options import Options
from l0.client.session import Endpoint, NotResumable, Plan, Session
from l0.contract import CHECKPOINTS_OFF, CHECKPOINTS_ROUTE, OPT_KEY

_PROBES: dict[str, "ServerInfo"] = {}
PROBE_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 0.5   # a health check after a failure; no answer in time says nothing either way
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


def without_retries(client: Any) -> Any:
    """``client`` with the SDK's own retries off (this layer counts them):
    itself when they already are, else the SDK's ``with_options`` copy. (A
    copy is a cycle of objects in the SDK: make it once per client, not per
    stream.)"""
    return client if getattr(client, "max_retries", None) == 0 else client.with_options(max_retries=0)


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
        async with http_client(PROBE_TIMEOUT_S, headers) as http:
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
    open the stream (:class:`SDKEndpoint`).
    ``assume_l0``: the caller knows the server runs L0 (no probe)."""

    def __init__(self, base_url: str, headers: dict[str, str], kind: str, params: dict, options: Options,
                 assume_l0: bool = False) -> None:
        self.kind = kind
        self.params = params
        self.model = params.get("model")
        self.name = str(base_url)
        self.root = _root(base_url)
        self.headers = headers
        self.options = options
        self.assume_l0 = assume_l0
        self.info = ServerInfo(l0=True, vllm=True, known=True) if assume_l0 else ServerInfo()
        self.l0 = assume_l0

    async def prepare(self) -> None:
        if not self.info.known:
            self.info = await probe_root(self.root, self.headers)
        self.l0 = self.info.l0 and self.options.l0_resume  # off: an L0 server is used as plain vLLM

    @property
    def greedy(self) -> bool:
        return self.params.get("temperature") == 0 or (self.params.get("extra_body") or {}).get("temperature") == 0

    def resumes_tool_calls(self, session: Session) -> bool:
        """An L0 server regenerates a greedy chat request whose tool-call
        pieces were delivered: the same calls come again, and the pieces
        the caller has are checked (by token id) and skipped."""
        return (self.l0 and self.kind == "chat" and self.greedy and self.options.resume
                and session.received.token_ids is not None and session.key_model in (None, self.model))

    async def health(self) -> tuple[bool, float | None] | None:
        """``GET /l0/health`` (half a second at most): 200 is healthy; 503 (a
        draining or failed replica) or a refused connection is not, with the
        server's ``Retry-After``. None (no opinion) from a server without L0
        (another status) or one too busy to answer in time."""
        import httpx

        from l0.client.retry import retry_after_s

        try:
            async with http_client(HEALTH_TIMEOUT_S, self.headers) as http:
                r = await http.get(self.root + "/l0/health")
        except httpx.TimeoutException:
            return None          # slow, not down: a busy replica is still a replica
        except httpx.HTTPError:
            return False, None
        if r.status_code == 200:
            return True, None
        if r.status_code == 503:
            return False, retry_after_s(r.headers)
        return None

    # -- planning -------------------------------------------------------------
    async def plan(self, session: Session) -> Plan | None:
        got = session.received
        if not self.info.known:
            # unreachable at its first probe (down, restarting): ask again, mid-stream too. Unknown, an
            # L0 replica would be resumed as a plain server, from the text (a chaos run's kills: 12
            # streams of 273 came back changed, resumed by text on the replica that had restarted)
            await self.prepare()
        if got.tool_calls and not self.resumes_tool_calls(session):
            raise NotResumable("l0: tool-call pieces were delivered, and only an L0 server regenerating a "
                               "greedy request can go on from them")
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
        if self.l0 or self.info.vllm:
            extra = dict(params.get("extra_body") or {})
            if self.l0:
                xargs = dict(extra.get("vllm_xargs") or {})
                xargs[OPT_KEY] = session.l0_key
                extra["vllm_xargs"] = xargs
            # vLLM's own option. Without L0 it only counts the tokens exactly: a lagging server
            # puts two in one chunk, and a text continuation must not overrun max_tokens.
            extra["return_token_ids"] = True
            params["extra_body"] = extra
        return {"call": self.kind, "params": params}

    async def _plan_l0(self, session: Session) -> Plan | None:
        from l0.client.resume import check_model, continuation_body, merge, needs_regeneration, remaining

        got = session.received
        # Tokens came for the key: its record exists, perhaps not yet readable.
        record = await self._fetch_checkpoint(session, wait_s=RECORD_LAG_S if got.token_ids else 0.0)
        greedy = self.greedy
        # A chat request with tools: the server's tool parser reads the chat stream; a continuation
        # on /v1/completions would hand a later tool call to the caller as raw text.
        tools = self.kind == "chat" and bool(self.params.get("tools") or self.params.get("functions"))
        # An image (audio, video) part: the record's prompt ids hold only its placeholder tokens, so a
        # continuation from them would lose it; the request again (or its text continued) keeps it.
        media = self.kind == "chat" and has_media(self.params.get("messages"))
        if record is None or needs_regeneration(record) or tools or media:
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
            text = await self.detokenize_tail(got.token_ids, outputs, delivered=got.text, peers=session.endpoints)
            p = ck.Parts(text=text, token_ids=tuple(extra))
            session.take(p)
            session.pending.extend(session._restamp(p))
        left = remaining(record, outputs)
        if record.finished or (left is not None and left <= 0):
            session.finish_reason = record.finish_reason or "length"
            session.pending.extend(session._restamp(ck.Parts(finish_reason=session.finish_reason)))
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
        got.token_ids = None     # from here on the answer is not one generation's ids
        if self.info.vllm:
            extra["return_token_ids"] = True   # (still counted exactly)
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

    def _l0_peers(self, peers: Sequence[Any]) -> list["ServerEndpoint"]:
        """This endpoint, then the other L0 servers among ``peers`` (the
        session's endpoints; each server once): where checkpoints and
        ``/detokenize`` are asked for. (An endpoint keeps no list of its
        peers: they would refer to each other, and every stream's endpoints,
        session and responses would wait for the GC's full collection.)"""
        out, roots = [], set()
        for ep in [self] + [p for p in peers if getattr(p, "l0", False)]:
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
        return await self.detokenize_tail(have, list(have) + list(kept), delivered=session.received.text,
                                          peers=session.endpoints)

    async def detokenize_tail(self, have: list[int], full: list[int], delivered: str | None = None,
                              peers: Sequence[Any] = ()) -> str:
        """Text of ``full[len(have):]`` as it continues ``have``, rendered as
        the stream renders it: L0's ``/l0/detokenize`` (special tokens
        skipped unless the request says ``skip_special_tokens: false``), on
        this endpoint or an L0 peer; vLLM's ``/detokenize`` (which keeps
        them) only on servers without it. ``delivered``: the text the caller
        already has for ``have``; ``peers``: the other endpoints that may
        answer (the session's). A stream holds back the bytes of a
        character split across tokens (and a space before them), so the
        text is what the whole output decodes to past ``delivered``, less
        the tokens at the end that leave a character incomplete (they come
        with the next token), as vLLM's stream holds them: the whole of each
        such token, the space it starts with too. (Keeping that space, and
        the server's stream then sending it again with the character, gave
        a chaos run a doubled space; decoding ``have`` alone lost it.)"""
        import httpx

        extra = self.params.get("extra_body") or {}
        skip = extra.get("skip_special_tokens", self.params.get("skip_special_tokens", True)) is not False

        async def detok(http, ids):
            if not ids:
                return ""
            for ep in self._l0_peers(peers):
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

        async def complete(http, ids, floor):
            """The text of the longest prefix of ``ids`` (``floor`` tokens at
            least) that ends on a whole character; None when even the floor
            does not (a split character is at most 4 bytes: few asks)."""
            n = len(ids)
            text = await detok(http, ids)
            while text.endswith("\ufffd") and n > floor:
                n -= 1
                text = await detok(http, ids[:n])
            return None if text.endswith("\ufffd") else text

        async with http_client(PROBE_TIMEOUT_S, self.headers) as http:
            b = await complete(http, list(full), len(have))
            if b is None:
                return ""                   # nothing past ``have`` ends a character yet
            if delivered is not None and b.startswith(delivered):
                return b[len(delivered):]
            a = await complete(http, list(have), 0)
        return b[len(a or ""):]

    async def _fetch_checkpoint(self, session: Session, emit: bool = True, wait_s: float = 0.0,
                                ready: "Callable[[Any], bool] | None" = None, every_s: float = 0.1):
        key = session.l0_key
        peers = self._l0_peers(session.endpoints)
        async with http_client(PROBE_TIMEOUT_S) as http:
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


def chat_content(parts: list[dict]) -> Any:
    """A chat message's ``content`` from text and ``image_url`` parts: the
    joined text when every part is text, else the parts."""
    if all(x["type"] == "text" for x in parts):
        return "".join(x["text"] for x in parts)
    return parts


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def has_media(messages: Any) -> bool:
    """Does a chat request's ``messages`` carry a part that isn't text
    (``image_url``, ``input_audio``, ``video_url``, ...)?"""
    for m in messages or ():
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if isinstance(content, (list, tuple)):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
                if kind not in (None, "text"):
                    return True
    return False


def _checkpoints_off(r: Any) -> bool:
    try:
        return r.status_code == 503 and r.json()["error"]["type"] == CHECKPOINTS_OFF
    except (ValueError, KeyError, TypeError):
        return False


class ChatRouteEndpoint(ServerEndpoint):
    """An API vLLM serves beside its chat route (Anthropic's Messages,
    OpenAI's Responses). Fresh attempts go to the API itself (keyed through
    ``vllm_xargs`` on L0 servers, so L0 records and acts on them). After a
    break, on vLLM, the text so far is continued on ``/v1/chat/completions``
    (``continue_final_message``), and the session's adapter writes the chunks
    back as the API's events: not token-exact (these streams carry no token
    ids). Elsewhere the break is :class:`NotResumable` (the next fallback
    gets its turn). Subclasses name ``route`` and ``api``, build
    :meth:`chat_request` and open both routes."""

    route = "api"
    api = "this API's"

    async def plan(self, session: Session) -> Plan | None:
        got = session.received
        if not self.info.known:
            await self.prepare()   # (mid-stream too: see ServerEndpoint.plan)
        if got.empty:
            params = dict(self.params)
            if self.l0:
                if session.l0_key is None or session.key_model not in (None, self.model):
                    from l0.contract import new_key
                    session.l0_key = new_key()
                session.key_model = self.model
                extra = dict(params.get("extra_body") or {})
                extra["vllm_xargs"] = {**(extra.get("vllm_xargs") or {}), OPT_KEY: session.l0_key}
                params["extra_body"] = extra
            return Plan("fresh", {"route": self.route, "params": params})
        if not self.options.resume:
            raise ResumeRefused("l0: resume is off and the stream broke mid-way")
        if not self.info.vllm:
            raise NotResumable(f"l0: a stream of {self.api} API resumes on vLLM servers only (text continuation "
                               "on /v1/chat/completions); this one is not")
        params, extra = self.chat_request(got.text)
        extra.update(continue_final_message=True, add_generation_prompt=False)
        left = _reduce(params, extra, max(got.tokens, await self.count_tokens(got.text)))
        if left is not None and left <= 0:
            raise ResumeRefused("l0: the token budget is spent")
        params["extra_body"] = extra
        from l0.client.adapters import OpenAIAdapter
        return Plan("text", {"route": "chat", "params": params}, convert=True, reader=OpenAIAdapter("chat"))

    async def count_tokens(self, text: str) -> int:
        """``text``'s tokens by vLLM's ``/tokenize`` (0 when it can't say).
        These streams carry no token ids, and a lagging server puts two
        tokens in one event: counted by events, a continuation would ask
        for more than ``max_tokens`` leaves."""
        import httpx

        try:
            async with http_client(PROBE_TIMEOUT_S, self.headers) as http:
                r = await http.post(self.root + "/tokenize",
                                    json={"model": self.model, "prompt": text, "add_special_tokens": False})
            return int(r.json()["count"]) if r.status_code == 200 else 0
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return 0

    def chat_request(self, text: str) -> tuple[dict, dict]:
        """The chat request (SDK keywords, and ``extra_body`` fields) that
        continues ``text`` as the final assistant message. Raises
        NotResumable for a request a text continuation can't carry."""
        raise NotImplementedError


class SDKEndpoint(ServerEndpoint):
    """A client with the SDK's surface (``openai.AsyncOpenAI``, or
    :class:`l0.client.http.HttpClient`): attempts run through its own
    ``create`` (SDK retries off: this layer counts them)."""

    def __init__(self, client: Any, kind: str, params: dict, options: Options, assume_l0: bool = False) -> None:
        super().__init__(str(client.base_url), _headers(client), kind, params, options, assume_l0)
        self.client = without_retries(client)

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
        """Fresh at first. After a break: a factory that takes the text
        continues it; one that doesn't starts over when nothing reached the
        caller (``hold``, or only blanks so far), else is replayed from the
        start with the delivered text checked against its new output and
        skipped (a differing replay raises ``NotResumable``: the session
        then moves on to the next fallback)."""
        got = session.received
        if got.empty:
            return Plan("fresh")
        if self.takes_text:
            return Plan("text", convert=True)
        if not session.delivered:
            session.start_over()
            return Plan("fresh")
        return Plan("regenerate", skip_chars=len(got.text))

    async def open(self, plan: Plan, session: Session) -> AsyncIterator[Any]:
        got = self.factory(session.received.text) if self.takes_text else self.factory()
        if inspect.isawaitable(got):
            got = await got
        return got
