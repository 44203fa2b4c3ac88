"""The client's one SSE reader (l0/client/sse.py) and its plain-HTTP transport
(``l0.http``, l0/client/http.py) against a real HTTP server on loopback that
speaks OpenAI's stream format: a stream broken mid-way by an error event is
retried through ``l0.wrap`` exactly as an SDK stream is; refusals carry their
status, headers and message."""
from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import l0
from l0.client import sse
from l0.client.sse import StreamError


def test_chunk_of_reads_data_lines_only():
    assert sse.chunk_of('data: {"a": 1}') == {"a": 1}
    assert sse.chunk_of('data:{"a": 2}') == {"a": 2}
    for other in ("data: [DONE]", "", ": keep-alive", "event: message", "data: "):
        assert sse.chunk_of(other) is None
    with pytest.raises(ValueError):
        sse.chunk_of("data: {not json")


def test_an_error_event_raises_a_transient_stream_error():
    from l0.client.retry import Category, classify

    with pytest.raises(StreamError) as got:
        list(sse.chunks(['data: {"x": 1}', 'data: {"error": {"message": "engine died", "code": 500}}']))
    assert got.value.status_code == 500 and "engine died" in got.value.message
    assert classify(got.value) is Category.TRANSIENT


def test_error_of_keeps_the_servers_words():
    e = sse.error_of(429, {"retry-after": "3"}, json.dumps({"error": {"message": "slow down"}}))
    assert (e.status_code, e.message, e.response.headers["retry-after"]) == (429, "slow down", "3")
    assert sse.error_of(502, {}, "<html>bad gateway</html>").message == "<html>bad gateway</html>"


def test_http_rejects_what_is_not_a_url():
    with pytest.raises(ValueError, match="http"):
        l0.http("127.0.0.1:8000")
    assert l0.http("http://h:1").base_url == "http://h:1/v1/"
    assert l0.http("http://h:1/v1/").base_url == "http://h:1/v1/"


WORDS = ["Once", " upon", " a", " time", "."]


class _Handler(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions from a script the test sets on the server:
    ``"ok"`` streams WORDS, ``"break"`` streams two words then an error event,
    ``"busy"`` answers 429 with Retry-After, ``"whole"`` one JSON response."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        # vLLM's /version when the test says the server is vLLM (no /l0/health: not L0)
        if self.path == "/version" and getattr(self.server, "vllm", False):
            data = json.dumps({"version": "0.32.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            data = b"{}"
            self.send_response(404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        srv.bodies.append((self.path, body, self.headers.get("Authorization")))
        if self.path == "/tokenize":          # vLLM's; this fake's tokenizer: a token per word
            self._json(200, {"count": len(body["prompt"].split()), "tokens": []})
            return
        act = srv.script.pop(0) if srv.script else "ok"
        if act == "busy":
            self._json(429, {"error": {"message": "busy", "type": "rate"}}, {"Retry-After": "2"})
            return
        if act == "whole":
            self._json(200, {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "".join(WORDS)}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        # a text continuation (the server is not L0) starts after the words it was given
        done = "".join(m.get("content") or "" for m in body["messages"] if m["role"] == "assistant")
        i = 0
        while done.startswith("".join(WORDS[:i + 1])) and i < len(WORDS):
            i += 1
        for n, w in enumerate(WORDS[i:]):
            if act == "break" and n == 2:
                self.wfile.write(b'data: {"error": {"message": "engine died", "code": 500}}\n\n')
                return
            last = i + n == len(WORDS) - 1
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": "stop" if last else None}]}
            self.wfile.write(b": keep-alive\n\n" + f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.script, srv.bodies = [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _text(chunk) -> str:
    from l0.client.chunks import parts
    return parts(chunk).text


def _stream(client, **kw):
    async def go():
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True, **kw)
        return [c async for c in stream], stream
    return asyncio.run(go())


def test_unwrapped_http_streams_and_merges_extra_body(server):
    chunks, _ = _stream(l0.http(server.url, api_key="k"), extra_body={"top_k": 3})
    assert "".join(_text(c) for c in chunks) == "".join(WORDS)
    path, body, auth = server.bodies[0]
    assert (path, body["top_k"], body["stream"], auth) == ("/v1/chat/completions", 3, True, "Bearer k")
    assert "extra_body" not in body


@pytest.mark.parametrize("sdk", ["l0.http", "openai"])
def test_a_broken_stream_is_continued_by_wrap(server, sdk):
    """The server's error event mid-stream (vLLM's, when generation fails:
    ``{"error": {..., "code": 500}}``) is a 5xx whichever client reads it
    (the OpenAI SDK raises it as an ``APIError`` without a status: it was
    taken for a fatal error and the stream was lost)."""
    server.script = ["break"]
    events, sleeps = [], []

    async def sleep(s):
        sleeps.append(s)
    if sdk == "openai":
        from openai import AsyncOpenAI
        inner = AsyncOpenAI(base_url=server.url + "/v1", api_key="-")
    else:
        inner = l0.http(server.url)
    client = l0.wrap(inner, on_event=events.append, sleep=sleep, l0_resume=False)
    chunks, stream = _stream(client)
    assert stream.text == "".join(WORDS) == "".join(_text(c) for c in chunks)
    failure = [e for e in events if e.type == "failure"]
    assert [(f.category, f.status) for f in failure] == [("transient", 500)]
    assert [e.mode for e in events if e.type == "attempt_start"] == ["fresh", "text"]
    # the continuation carried what was delivered
    assert server.bodies[1][1]["messages"][-1]["role"] in ("assistant", "user")


def test_a_refusal_is_retried_after_retry_after(server):
    server.script = ["busy"]
    sleeps = []

    async def sleep(s):
        sleeps.append(s)
    client = l0.wrap(l0.http(server.url), sleep=sleep, l0_resume=False)
    chunks, stream = _stream(client)
    assert stream.text == "".join(WORDS) and sleeps == [2.0]


def test_a_whole_response_through_wrap(server):
    server.script = ["whole"]
    resp = asyncio.run(l0.wrap(l0.http(server.url), l0_resume=False).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]))
    assert resp["choices"][0]["message"]["content"] == "".join(WORDS)
    assert "stream" not in server.bodies[0][1]


@pytest.mark.parametrize("sdk", ["l0.http", "openai"])
def test_a_dropped_stream_leaves_no_reference_cycle(server, sdk):
    """A finished stream, one broken and continued (l0.http), and one
    abandoned: once dropped, nothing of L0's or of the SDK's for it waits for
    the garbage collector's full collection (its session, route, endpoints
    and events, a copy of the SDK client: ~110 objects a stream, with the
    responses they held, made the soak's RSS climb between collections).
    (httpx's own response <-> stream pair is httpx's, as without L0.)"""
    import gc

    if sdk == "openai":
        from openai import AsyncOpenAI
        inner = AsyncOpenAI(base_url=server.url + "/v1", api_key="-")
        cases = [("ok", False), ("ok", True)]
    else:
        inner = l0.http(server.url)
        cases = [("ok", False), ("break", False), ("ok", True)]
    client = l0.wrap(inner, l0_resume=False, sleep=lambda s: asyncio.sleep(0))

    async def one(abandon: bool) -> None:
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        async for _ in stream:
            if abandon:
                break
        await stream.close()

    async def go():
        await one(False)                  # the client's own one-time objects are made
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            server.script = [act for act, _ in cases]
            for _, abandon in cases:
                await one(abandon)
            client.last = None            # the wrapper keeps the last session for the caller
            gc.collect()
            return [type(o).__module__ + "." + type(o).__qualname__ for o in gc.garbage
                    if type(o).__module__.startswith(("l0.", "openai."))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    got = asyncio.run(go())
    assert got == [], sorted(set(got))


def test_a_replica_unknown_at_its_first_probe_is_probed_again_before_a_resume(server):
    """A replica that was down when a stream first tried it (its probe
    failed) and is back when the stream, broken elsewhere, returns to it is
    probed again: a vLLM server is continued with ``continue_final_message``,
    not asked to "continue" as an unknown server would be."""
    import l0
    from l0.client import chunks as ck
    from l0.client.endpoints import _PROBES, SDKEndpoint, ServerInfo
    from l0.client.options import Options
    from l0.client.session import Session

    server.vllm = True
    ep = SDKEndpoint(l0.http(server.url + "/v1"), "chat",
                     {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, Options())
    _PROBES.pop(ep.root, None)
    assert ep.info == ServerInfo()                     # never reached: unknown
    session = Session([ep])
    session.take(ck.Parts(text="Once upon"))          # the stream broke elsewhere after two words
    plan = asyncio.run(ep.plan(session))
    assert ep.info.known and ep.info.vllm and not ep.info.l0
    body = plan.request["params"]
    assert plan.mode == "text" and body["extra_body"]["continue_final_message"] is True
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon"}


def test_a_vllm_server_without_l0_is_asked_for_token_ids_so_a_continuation_keeps_max_tokens(server):
    """A lagging server puts two tokens in one chunk: counted by chunks, a
    continuation would ask for one token too many. vLLM is asked for its own
    ``return_token_ids`` (no L0 key), the received tokens are counted by
    their ids, and the continuation's budget is what is left. After it the
    answer is no longer one generation's ids (``token_ids`` None), still
    counted exactly."""
    import l0
    from l0.client import chunks as ck
    from l0.client.endpoints import _PROBES, SDKEndpoint
    from l0.client.options import Options
    from l0.client.session import Session

    server.vllm = True
    ep = SDKEndpoint(l0.http(server.url + "/v1"), "chat",
                     {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}, Options())
    _PROBES.pop(ep.root, None)
    session = Session([ep])
    asyncio.run(ep.prepare())
    fresh = asyncio.run(ep.plan(session))
    assert fresh.mode == "fresh" and fresh.request["params"]["extra_body"] == {"return_token_ids": True}
    session.take(ck.Parts(text="Once upon", token_ids=(7, 8)))   # two tokens, one chunk
    session.take(ck.Parts(text=" a", token_ids=(9,)))
    assert session.received.tokens == 3 and session.received.token_ids == [7, 8, 9]
    plan = asyncio.run(ep.plan(session))
    body = plan.request["params"]
    assert plan.mode == "text" and body["max_tokens"] == 7
    assert body["extra_body"]["return_token_ids"] is True and "vllm_xargs" not in body["extra_body"]
    assert session.received.token_ids is None
    session.take(ck.Parts(text=" time", token_ids=(10, 11)))
    session.take(ck.Parts(text="."))                   # (a chunk without ids counts as one)
    assert session.received.tokens == 6


def test_a_messages_stream_continued_on_vllm_counts_its_tokens_by_tokenize(server):
    """Anthropic's Messages (and OpenAI's Responses) stream no token ids; a
    lagging server puts several tokens in one event. The continuation's
    budget counts the text received by vLLM's ``/tokenize``, not by events."""
    import anthropic

    from l0.client import chunks as ck
    from l0.client.anthropic import AnthropicEndpoint
    from l0.client.endpoints import _PROBES
    from l0.client.options import Options
    from l0.client.session import Session

    server.vllm = True
    ep = AnthropicEndpoint(anthropic.AsyncAnthropic(base_url=server.url, api_key="k"),
                           {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
                           Options())
    _PROBES.pop(ep.root, None)
    session = Session([ep])
    session.take(ck.Parts(text="Once upon a time"))      # one event, four tokens
    assert session.received.tokens == 1
    plan = asyncio.run(ep.plan(session))
    assert plan.mode == "text" and plan.request["params"]["max_tokens"] == 6
    assert ("/tokenize", {"model": "m", "prompt": "Once upon a time", "add_special_tokens": False}, None) \
        in [(p, b, None) for p, b, _ in server.bodies]
