"""L0's ``vllm.endpoint_plugins`` entry (loaded when ``VLLM_PLUGINS`` names
``l0``, as ``l0 serve`` does):

* validates ``vllm_xargs`` before vLLM sees the request, so a bad L0 option is
  an HTTP 400 for streaming requests too; names the request's checkpoint key
  in an ``x-l0-key`` response header, and with ``checkpoint.assign_keys``
  gives an unkeyed request one. (vLLM validates streaming requests
  after the 200 and its event-stream has begun; the error then arrives as an
  SSE event.)
* ``GET /l0/checkpoints/{key}``: a request's checkpoint record as JSON, from
  the store this server writes to (any replica sharing the store can answer).
  200, 400 (malformed key), 401 (the server runs with ``--api-key`` /
  ``VLLM_API_KEY`` and the bearer token is missing or wrong: checkpoints hold
  prompts and outputs, so they get the same protection as vLLM's own
  ``/v1`` routes), 404 (no such record), 500 (corrupt record), 503 (store
  unreachable, or checkpoints off: ``error.type`` is ``checkpoints_off``).
* ``GET /l0/health``: 200 with details while the replica is HEALTHY or
  DEGRADED, 503 with the reasons when FAILED (decode loop stalled, engine
  frozen, device failed: see :mod:`l0.engine.health`). ``GET /l0/status``: the
  engines' documents (per-GPU readings, watchdog, counters) and the verdict.
  ``GET /l0/metrics``: the same as Prometheus series.
* ``POST /l0/detokenize``: token ids to text as a stream renders them
  (special tokens skipped by default; vLLM's ``/detokenize`` keeps them).
  With ``health.replace_vllm_health`` vLLM's own ``/health`` answers the same.
* While FAILED, new completion requests get 503 with ``Retry-After``
  (:class:`Drain`), so load balancers and the failover client go elsewhere.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import secrets

from l0.engine.config import OptionError, params_from_xargs
from l0.contract import CHECKPOINTS_OFF, CHECKPOINTS_ROUTE, OPT_KEY

_PATHS = ("/v1/chat/completions", "/v1/completions")


def _error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "param": None,
                                 "code": 400}}).encode()


class XargsValidation:
    """Pure ASGI middleware: reads the JSON body of completion requests, checks
    the ``l0_*`` entries of ``vllm_xargs``, answers 400 on a bad one, and
    replays the body otherwise (with a key added under
    ``checkpoint.assign_keys``); the response gets ``x-l0-key``. Bodies it
    can't parse pass through (vLLM answers those itself)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in _PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                await self.app(scope, _replay([], receive, message), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        key = None
        try:
            doc = json.loads(body)
            xargs = doc.get("vllm_xargs") if isinstance(doc, dict) else None
            from l0.engine.vllm.logits_processor import server_config
            cfg = server_config()
            if isinstance(xargs, dict):
                params_from_xargs(xargs, cfg)
                key = xargs.get(OPT_KEY)
            if key is None and isinstance(doc, dict) and cfg.checkpoint.enabled and cfg.checkpoint.assign_keys:
                from l0.contract import new_key
                key = new_key()
                doc["vllm_xargs"] = {**(xargs if isinstance(xargs, dict) else {}), OPT_KEY: key}
                body = json.dumps(doc).encode()
                scope = dict(scope, headers=[(k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                                             for k, v in scope.get("headers", [])])
        except OptionError as exc:
            payload = _error_body(str(exc))
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        except (ValueError, RecursionError):  # not JSON, or nested past the parser: vLLM answers it
            pass
        if isinstance(key, str) and key:
            header = (b"x-l0-key", key.encode())

            async def send_with_key(message):
                if message["type"] == "http.response.start":
                    message = dict(message, headers=list(message.get("headers", [])) + [header])
                await send(message)
            await self.app(scope, _replay([body], receive), send_with_key)
            return
        await self.app(scope, _replay([body], receive), send)


def _replay(chunks, receive, first=None):
    """A ``receive`` that hands out the buffered body, then defers to the real
    one (vLLM listens on it for the client's disconnect while streaming)."""
    pending = ([first] if first else []) + [
        {"type": "http.request", "body": c, "more_body": False} for c in chunks]

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()
    return replay


def _api_token_hashes(args) -> list[bytes]:
    """The tokens vLLM itself guards ``/v1`` with: ``--api-key`` (one or
    more), else ``VLLM_API_KEY``. Kept as sha256 digests, compared in
    constant time."""
    import os

    keys = getattr(args, "api_key", None) if args is not None else None
    if isinstance(keys, str):
        keys = [keys]
    keys = [k for k in (keys or [os.environ.get("VLLM_API_KEY")]) if k]
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def authorized(headers, token_hashes: list[bytes]) -> bool:
    if not token_hashes:
        return True
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    digest = hashlib.sha256(token.encode()).digest()
    ok = False
    for h in token_hashes:  # no early exit: same time whichever matches
        ok |= secrets.compare_digest(digest, h)
    return ok


@functools.cache
def _checkpoint_store():
    from l0.engine.checkpoint import open_store
    from l0.engine.vllm.logits_processor import server_config

    cfg = server_config().checkpoint
    if not cfg.enabled:
        return None
    return open_store(cfg.store, cfg.ttl_s)


def _json(status: int, doc) -> "object":
    from fastapi.responses import JSONResponse
    return JSONResponse(status_code=status, content=doc)


async def get_checkpoint(key: str, request):
    """The route handler (see module docstring)."""
    from l0.contract import CorruptRecord
    from l0.engine.checkpoint.store import BadKey, StoreUnavailable, check_key

    if not authorized(request.headers, getattr(request.app.state, "l0_api_tokens", [])):
        return _json(401, {"error": "Unauthorized"})
    try:
        check_key(key)
    except BadKey as exc:
        return _json(400, {"error": {"message": str(exc), "code": 400}})
    try:
        store = _checkpoint_store()
        if store is None:
            return _json(503, {"error": {"message": "l0: checkpoints are off on this server", "code": 503,
                                        "type": CHECKPOINTS_OFF}})
        record = await asyncio.to_thread(store.get, key)
    except StoreUnavailable as exc:
        return _json(503, {"error": {"message": str(exc), "code": 503}})
    except CorruptRecord as exc:
        return _json(500, {"error": {"message": f"l0: corrupt checkpoint: {exc}", "code": 500}})
    if record is None:
        return _json(404, {"error": {"message": f"l0: no checkpoint for key {key!r}", "code": 404}})
    return _json(200, record.to_dict())


MAX_DETOKENIZE = 1 << 20  # token ids per /l0/detokenize request


def _detokenize_args(doc) -> tuple[list[int], bool]:
    """``{"tokens": [int, ...], "skip_special_tokens": bool = true}`` checked;
    raises ValueError with the message for the 400."""
    if not isinstance(doc, dict):
        raise ValueError("l0: the body must be a JSON object with 'tokens'")
    ids = doc.get("tokens")
    if not isinstance(ids, list) or len(ids) > MAX_DETOKENIZE \
            or not all(type(t) is int and 0 <= t < 1 << 31 for t in ids):
        raise ValueError(f"l0: 'tokens' must be a list of at most {MAX_DETOKENIZE} token ids (0 <= id < 2**31)")
    skip = doc.get("skip_special_tokens", True)
    if not isinstance(skip, bool):
        raise ValueError("l0: 'skip_special_tokens' must be true or false")
    return ids, skip


async def post_detokenize(request):
    """``POST /l0/detokenize``: the text of token ids as a stream renders them
    (special tokens skipped unless ``skip_special_tokens`` is false, which
    vLLM's own ``/detokenize`` cannot do) — the failover client asks it for
    the text of checkpointed tokens it never received."""
    if not authorized(request.headers, getattr(request.app.state, "l0_api_tokens", [])):
        return _json(401, {"error": "Unauthorized"})
    try:
        ids, skip = _detokenize_args(json.loads(await request.body()))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        msg = str(exc) if str(exc).startswith("l0:") else "l0: the body is not valid JSON"
        return _json(400, {"error": {"message": msg, "code": 400}})
    tokenizer = getattr(request.app.state, "l0_tokenizer", None)
    if tokenizer is None:
        return _json(503, {"error": {"message": "l0: the tokenizer is not loaded yet", "code": 503}})
    vocab = len(tokenizer)
    if any(t >= vocab for t in ids):
        return _json(400, {"error": {"message": f"l0: token ids must be below the vocabulary size {vocab}",
                                     "code": 400}})
    text = await asyncio.to_thread(tokenizer.decode, ids, skip_special_tokens=skip)
    return _json(200, {"text": text})


def replica_health():
    """The replica's combined health from the engines' status documents
    (None when no status directory is configured: health unknown → not L0's call)."""
    import os

    from l0.engine.health.status import combine, read_status

    d = os.environ.get("L0_STATUS_DIR")
    if not d:
        return None
    from l0.engine.vllm.logits_processor import server_config
    h = server_config().health
    return combine(read_status(d), stale_after_s=max(10.0, 4 * h.status_interval_s), require_engine=False)


async def get_health(request):
    from l0.engine.health.policy import Level

    h = replica_health()
    if h is None:
        return _json(200, {"status": "unknown", "reasons": ["L0_STATUS_DIR not set: L0 health off"]})
    body = {"status": h.level.name.lower(), "reasons": list(h.reasons)}
    return _json(503 if h.level == Level.FAILED else 200, body)


async def get_status(request):
    if not authorized(request.headers, getattr(request.app.state, "l0_api_tokens", [])):
        return _json(401, {"error": "Unauthorized"})
    h = replica_health()
    return _json(200, {"status": "unknown"} if h is None else h.to_dict())


async def get_metrics(request):
    """Prometheus text of L0's series (see :mod:`l0.engine.health.metrics`)."""
    import os

    from fastapi.responses import PlainTextResponse

    from l0.engine.health.metrics import render
    from l0.engine.health.status import read_status

    if not authorized(request.headers, getattr(request.app.state, "l0_api_tokens", [])):
        return _json(401, {"error": "Unauthorized"})
    h = replica_health()
    d = os.environ.get("L0_STATUS_DIR")
    text = render(read_status(d) if d else [], None if h is None else h.level)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


class ReplicaDraining(Exception):
    """Raised into a streaming response to cut it: the replica is FAILED."""


class Drain:
    """Pure ASGI middleware for the completion routes while the replica is
    FAILED: new POSTs get 503 + Retry-After before vLLM sees them, and
    streams already running are cut at their next chunk (the connection is
    dropped, not finished), so failover clients resume them elsewhere from
    their checkpoints. Health is read at most every ``refresh_s``."""

    def __init__(self, app, retry_after_s: int = 5, refresh_s: float = 0.1) -> None:
        self.app = app
        self.retry_after_s = retry_after_s
        self.refresh_s = refresh_s
        self._cached = (0.0, None)

    def _failed(self):
        import time

        from l0.engine.health.policy import Level
        at, h = self._cached
        now = time.monotonic()
        if now - at > self.refresh_s:
            h = replica_health()
            self._cached = (now, h)
        return h if h is not None and h.level == Level.FAILED else None

    async def __call__(self, scope, receive, send) -> None:
        if not (scope["type"] == "http" and scope.get("method") == "POST"
                and scope.get("path", "").startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        h = self._failed()
        if h is not None:
            payload = json.dumps({"error": {"message": "l0: replica draining: " + "; ".join(h.reasons),
                                            "type": "ServiceUnavailable", "code": 503}}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"retry-after", str(self.retry_after_s).encode()),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return

        # Cutting a stream must also end its request in the engine. Raising
        # from send leaves vLLM's response generator unclosed (it is aborted
        # only when the garbage collector finds it), so a FAILED replica
        # kept decoding the cut request to max_tokens — on shared cores,
        # starving the replica the client had moved to (seen in CI). So
        # the cut is a disconnect: the app's receive says http.disconnect,
        # Starlette cancels the response while it awaits the generator
        # (vLLM aborts the request), nothing more is sent, and the
        # connection is dropped, not finished.
        cut = asyncio.Event()

        async def guarded_receive():
            if cut.is_set():
                return {"type": "http.disconnect"}
            real, wake = asyncio.ensure_future(receive()), asyncio.ensure_future(cut.wait())
            try:
                await asyncio.wait((real, wake), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (real, wake):
                    if not t.done():
                        t.cancel()
            return real.result() if real.done() and not real.cancelled() else {"type": "http.disconnect"}

        async def guarded_send(message):
            if cut.is_set():
                return
            if message["type"] == "http.response.body" and message.get("more_body") and self._failed():
                cut.set()
                return
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)
        if cut.is_set():
            raise ReplicaDraining("l0: replica FAILED: stream cut so the client fails over")


class L0EndpointPlugin:
    """The object vLLM's endpoint-plugin loader instantiates."""

    name = "l0"
    required_tasks = None

    def attach_router(self, app) -> None:
        from fastapi import Request

        from l0.engine.vllm.logits_processor import server_config

        health = server_config().health
        import atexit

        from l0.engine.health.status import remove_status_dir
        # This API server owns the directory l0 serve made for it (same pid: l0 serve execs vLLM), which
        # holds its temp directory (and its status, unless the operator named one): at exit, its engines
        # stopped, it goes. (Each call removes only a directory this pid owns.)
        atexit.register(remove_status_dir, os.environ.get("L0_STATUS_DIR"))
        if os.environ.get("TMPDIR"):
            atexit.register(remove_status_dir, os.path.dirname(os.environ["TMPDIR"].rstrip("/")))
        app.add_middleware(XargsValidation)
        app.add_middleware(Drain, retry_after_s=health.retry_after_s)
        app.state.l0_api_tokens = _api_token_hashes(None)  # until init_state sees the args

        async def l0_get_checkpoint(key, request):
            return await get_checkpoint(key, request)

        # Real classes, not the strings `from __future__ import annotations`
        # would leave: FastAPI reads them to inject the request.
        l0_get_checkpoint.__annotations__ = {"key": str, "request": Request}

        app.add_api_route(CHECKPOINTS_ROUTE + "/{key}", l0_get_checkpoint, methods=["GET"])

        async def l0_detokenize(request):
            return await post_detokenize(request)

        async def l0_health(request):
            return await get_health(request)

        async def l0_status(request):
            return await get_status(request)

        async def l0_metrics(request):
            return await get_metrics(request)

        for fn in (l0_detokenize, l0_health, l0_status, l0_metrics):
            fn.__annotations__ = {"request": Request}
        app.add_api_route("/l0/detokenize", l0_detokenize, methods=["POST"])
        app.add_api_route("/l0/health", l0_health, methods=["GET"])
        app.add_api_route("/l0/status", l0_status, methods=["GET"])
        app.add_api_route("/l0/metrics", l0_metrics, methods=["GET"])
        if health.replace_vllm_health:
            app.add_api_route("/health", l0_health, methods=["GET"])

    async def init_state(self, engine_client, state, args) -> None:
        tokens = _api_token_hashes(args)
        state.l0_api_tokens = tokens
        try:
            tok = engine_client.get_tokenizer()
            state.l0_tokenizer = await tok if asyncio.iscoroutine(tok) else tok
        except Exception:  # no tokenizer (--skip-tokenizer-init): /l0/detokenize answers 503
            state.l0_tokenizer = None
