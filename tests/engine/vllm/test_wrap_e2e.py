"""``l0.wrap(AsyncOpenAI(...))`` against real servers: two `l0 serve`
replicas of SmolLM2 sharing a real redis-server, one plain vLLM server
without L0, the real `openai` package, and a fault-injecting proxy on
loopback (tests/faultproxy.py) in front of them.

Greedy decoding throughout: a stream that was cut, stalled, refused or killed
must give the same text (and token ids, against L0) as an uninterrupted one.
Sleeps are injected and recorded: no test waits for a backoff.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from faultproxy import Cut, FaultProxy, Reset, Stall, Status, Watch
from services import RedisProcess, free_port, settled_record

pytestmark = [pytest.mark.vllm, pytest.mark.redis]

ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048",
        "--enforce-eager", "--max-num-seqs", "16", "--seed", "0",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]   # tool calls through a resume
PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    model = str(prepare_smollm2())
    tmp = tmp_path_factory.mktemp("wrap-fleet")
    redis = RedisProcess(tmp).start()
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": redis.url}
    # The engines' stall verdict waits 300 s, not 30: these tests are not about
    # it, and beside another module's engine on the same core a CI run's r2 took
    # a 101.7 s step with 8.2 s of it waiting for a CPU (the rest unexplained:
    # docs/tests.md), was declared stalled and drained, and the client met 503s
    # a test counted as failures. The client's own timeouts: conftest.py.
    patient = "  health:\n    stall_floor_s: 300\n"
    calm = tmp / "patient.yaml"
    calm.write_text("l0:\n" + patient)
    keyed = tmp / "assign-keys.yaml"  # r2 keys every request (r1 only those that carry a key)
    keyed.write_text("l0:\n  checkpoint:\n    assign_keys: true\n" + patient)
    # r1's engine can be held at a token count (DEBUG freeze file), so a kill
    # lands at that token even when the client lags the engine.
    freezable = {"L0_DEBUG_FAULTS": "1", "L0_DEBUG_FREEZE_FILE": str(tmp / "freeze-r1")}
    servers = {"r1": Server(model, ARGS + ["--l0-config", str(calm)], env=dict(env, **freezable),
                            log_path=tmp / "r1.log", port=free_port()),
               "r2": Server(model, ARGS + ["--l0-config", str(keyed)], env=env, log_path=tmp / "r2.log",
                            port=free_port()),
               "plain": Server(model, ARGS, log_path=tmp / "plain.log", port=free_port(), with_l0=False)}
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda s: s.start(), servers.values()))
    proxies = {name: FaultProxy(s.port).start() for name, s in servers.items()}
    yield {"model": model, "tmp": tmp, "redis": redis, **servers, "proxy": proxies}
    for p in proxies.values():
        p.stop()
    for s in servers.values():
        s.stop()
    redis.stop()


@pytest.fixture()
def proxies(fleet):
    for p in fleet["proxy"].values():
        p.clear()
    if fleet["r1"].proc is None or fleet["r1"].proc.poll() is not None:
        fleet["r1"].start()  # back from a kill
    yield fleet["proxy"]


class Run:
    """One wrapped call: chunks, text, token ids, events, recorded sleeps."""

    def __init__(self):
        self.chunks, self.events, self.sleeps = [], [], []
        self.text, self.ids = "", []
        self.stream = None

    async def sleep(self, s):
        self.sleeps.append(s)

    def types(self):
        return [e.type for e in self.events]

    def of(self, kind):
        return [e for e in self.events if e.type == kind]


def _record_json(server, key):
    """The checkpoint record of ``key`` as ``server`` serves it; None while it has none."""
    import httpx
    r = httpx.get(f"{server.url}/l0/checkpoints/{key}", timeout=5)
    return r.json() if r.status_code == 200 else None


def sdk(url):
    from openai import AsyncOpenAI
    return AsyncOpenAI(base_url=url + "/v1", api_key="test", max_retries=0)


def http(url):
    import l0
    return l0.http(url + "/v1", api_key="test")


TRANSPORTS = {"sdk": sdk, "http": http}   # one client, two transports: every behaviour the same


def wrapped_run(fleet, url, kind="chat", kill_at=None, victim=None, fallbacks=(), messages=PROMPT,
                max_tokens=MAX_TOKENS, hook=None, request=None, transport="sdk", **options) -> Run:
    """One wrapped stream; ``hook(event)`` runs on every event as it happens;
    ``request`` adds fields to the create call (e.g. ``stop``); ``transport``:
    the OpenAI SDK or ``l0.http`` (plain HTTP)."""
    import l0

    run = Run()

    def on_event(e):
        run.events.append(e)
        if hook is not None:
            hook(e)
    options.setdefault("retry", l0.Retry(max_retries=4))

    freeze = Path(victim.env["L0_DEBUG_FREEZE_FILE"]) if kill_at is not None else None
    if freeze is not None:
        freeze.write_text(str(kill_at))

    async def go():
        clients = [TRANSPORTS[transport](u) for u in (url, *fallbacks)]
        client = l0.wrap(clients[0], fallbacks=clients[1:], sleep=run.sleep, on_event=on_event, **options)
        try:
            await consume(client)
        finally:
            for c in clients:
                await c.close()

    async def consume(client):
        if kind == "chat":
            stream = await client.chat.completions.create(model=fleet["model"], messages=messages,
                                                          max_tokens=max_tokens, temperature=0.0, stream=True,
                                                          **(request or {}))
        else:
            stream = await client.completions.create(model=fleet["model"], prompt="Once upon a time,",
                                                     max_tokens=MAX_TOKENS, temperature=0.0, stream=True,
                                                     **(request or {}))
        run.stream = stream
        async for chunk in stream:
            run.chunks.append(chunk)
            if chunk.choices:
                c = chunk.choices[0]
                run.text += (c.delta.content or "") if kind == "chat" else (c.text or "")
                run.ids += getattr(c, "token_ids", None) or []
            if kill_at is not None and len(run.ids) >= kill_at and victim.proc.poll() is None:
                victim.kill()
                freeze.unlink()
    try:
        asyncio.run(asyncio.wait_for(go(), 300))
    finally:
        if freeze is not None:
            freeze.unlink(missing_ok=True)
    return run


def raw_run(fleet, url, kind="chat", messages=PROMPT, max_tokens=MAX_TOKENS):
    """The plain SDK, uninterrupted: (text, token ids, chunk count)."""
    async def go():
        client = sdk(url)
        extra = {"return_token_ids": True}
        if kind == "chat":
            stream = await client.chat.completions.create(model=fleet["model"], messages=messages,
                                                          max_tokens=max_tokens, temperature=0.0, stream=True,
                                                          extra_body=extra)
        else:
            stream = await client.completions.create(model=fleet["model"], prompt="Once upon a time,",
                                                     max_tokens=MAX_TOKENS, temperature=0.0, stream=True,
                                                     extra_body=extra)
        text, ids, n = "", [], 0
        async for chunk in stream:
            n += 1
            if chunk.choices:
                c = chunk.choices[0]
                text += (c.delta.content or "") if kind == "chat" else (c.text or "")
                ids += getattr(c, "token_ids", None) or []
        return text, ids, n
    return asyncio.run(go())


@pytest.fixture(scope="module")
def reference(fleet):
    text, ids, n = raw_run(fleet, fleet["r2"].url)
    assert len(ids) == MAX_TOKENS
    return text, ids, n


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_healthy_stream_is_the_sdk_stream(fleet, reference, proxies, transport):
    from openai.types.chat import ChatCompletionChunk

    proxies["r1"].inject(Watch())
    run = wrapped_run(fleet, proxies["r1"].url, transport=transport)
    assert (run.text, run.ids) == reference[:2]
    # one chunk per event on the wire, [DONE] aside (not the reference's count: vLLM's server, when it
    # lags its engine, puts two tokens in one event, as a CI run saw: 64 chunks, 65 in the reference)
    assert proxies["r1"].wait_watched() == [len(run.chunks) + 1]
    assert all(isinstance(c, ChatCompletionChunk) for c in run.chunks)
    assert run.types() == ["session_start", "attempt_start", "first_token", "complete"]
    start = run.of("session_start")[0]
    assert start.l0_key and start.l0_key.startswith("l0-")
    done = run.of("complete")[0]
    assert (done.finish_reason, done.tokens, done.attempts) == ("length", MAX_TOKENS, 1)


@pytest.mark.parametrize("after,transport", [(2, "sdk"), (30, "sdk"), (None, "sdk"), (30, "http")],
                         ids=["early", "middle", "last-token", "middle-http"])
def test_a_cut_stream_resumes_from_the_checkpoint_token_for_token(fleet, reference, proxies, after, transport):
    # last-token: before the event that finishes the answer, found by its content (not after
    # MAX_TOKENS events: a lagging server puts several tokens in one, and the cut came after the end)
    proxies["r1"].inject(Cut(before=rb'"finish_reason":"length"') if after is None else Cut(after_events=after))
    run = wrapped_run(fleet, proxies["r1"].url, transport=transport)
    assert (run.text, run.ids) == reference[:2]
    assert len({c.id for c in run.chunks}) == 1  # one stream, one identity
    assert run.types()[:5] == ["session_start", "attempt_start", "first_token", "failure", "retry_scheduled"]
    assert run.of("failure")[0].category == "network"
    assert [e.mode for e in run.of("attempt_start")][0] == "fresh"
    fetched = run.of("checkpoint_fetched")
    assert len(fetched) == 1 and fetched[0].key == run.of("session_start")[0].l0_key
    if run.of("complete")[0].attempts == 2:
        assert [e.mode for e in run.of("attempt_start")] == ["fresh", "checkpoint"]
        assert run.of("resume")[0].token_offset >= max(run.of("failure")[0].delivered_tokens,
                                                       0 if after is None else after - 1)
    else:  # the checkpoint already held the finished answer: delivered from it, no new attempt
        assert fetched[0].finished
    assert proxies["r1"].seen.count("POST /v1/chat/completions -> Cut") == 1


def test_a_cut_mid_event_resumes_token_for_token(fleet, reference, proxies):
    proxies["r1"].inject(Cut(after_bytes=3000))  # inside an SSE event, a few dozen tokens in
    run = wrapped_run(fleet, proxies["r1"].url)
    assert (run.text, run.ids) == reference[:2]
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "checkpoint"]
    assert run.of("failure")[0].category == "network"
    assert 0 < run.of("resume")[0].token_offset < MAX_TOKENS


def test_a_stall_is_interrupted_by_the_inter_token_timeout(fleet, reference, proxies):
    import l0

    proxies["r1"].inject(Stall(after_events=10, seconds=600))
    # 4 s, not 1 s: on two shared cores a healthy resumed stream can pause over a second (CI saw it)
    run = wrapped_run(fleet, proxies["r1"].url, timeout=l0.Timeouts(first_token_s=120, inter_token_s=4.0))
    assert (run.text, run.ids) == reference[:2]
    assert [(t.which, t.after_s) for t in run.of("timeout")] == [("inter_token", 4.0)]
    failure = run.of("failure")[0]
    assert failure.category == "model" and failure.error.startswith("Stalled")
    fetched = run.of("checkpoint_fetched")
    if run.of("complete")[0].attempts == 2:
        assert [e.mode for e in run.of("attempt_start")] == ["fresh", "checkpoint"]
    else:  # the engine finished behind the stalled proxy: the answer came from the checkpoint
        assert [e.mode for e in run.of("attempt_start")] == ["fresh"] and fetched[0].finished


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_429_and_503_retry_after_honoured_and_capped(fleet, reference, proxies, transport):
    proxies["r1"].inject(Status(429, {"retry-after": "7"}), Status(503, {"retry-after": "500"}),
                         Status(503, {"retry-after-ms": "1500"}))
    run = wrapped_run(fleet, proxies["r1"].url, transport=transport)
    assert (run.text, run.ids) == reference[:2]
    assert run.sleeps == [7.0, 120.0, 1.5]
    assert [(e.category, e.delay_s) for e in run.of("retry_scheduled")] == [
        ("transient", 7.0), ("transient", 120.0), ("transient", 1.5)]
    assert [f.status for f in run.of("failure")] == [429, 503, 503]
    assert run.of("complete")[0].attempts == 4


def test_a_reset_before_headers_is_a_network_retry(fleet, reference, proxies):
    proxies["r1"].inject(Reset())
    run = wrapped_run(fleet, proxies["r1"].url)
    assert (run.text, run.ids) == reference[:2]
    assert [(f.category, f.delivered_tokens) for f in run.of("failure")] == [("network", 0)]
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "fresh"]
    assert len(run.sleeps) == 1 and 0.375 <= run.sleeps[0] <= 0.5  # the SDK's first backoff


def _refusals(transport):
    """What a 401 and a 400 raise through each transport: the SDK's own
    exception types, or l0.http's StreamError with the status."""
    if transport == "sdk":
        import openai
        return openai.AuthenticationError, openai.BadRequestError
    from l0.client.sse import StreamError
    return StreamError, StreamError


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_401_and_400_are_never_retried(fleet, proxies, transport):
    unauthorized, bad_request = _refusals(transport)
    proxies["r1"].inject(Status(401))
    with pytest.raises(unauthorized) as refused:
        wrapped_run(fleet, proxies["r1"].url, transport=transport)
    assert refused.value.status_code == 401
    run = Run()

    async def go():
        import l0
        client = l0.wrap(TRANSPORTS[transport](fleet["r1"].url), sleep=run.sleep, on_event=run.events.append)
        stream = await client.chat.completions.create(model=fleet["model"], messages=PROMPT, max_tokens=8,
                                                      temperature=-1.0, stream=True)
        async for _ in stream:
            pass
    with pytest.raises(bad_request) as bad:
        asyncio.run(go())
    assert bad.value.status_code == 400 and "temperature" in str(bad.value)
    assert run.sleeps == []
    assert run.types() == ["session_start", "attempt_start", "failure", "retry_given_up", "error"]
    assert (run.of("failure")[0].status, run.of("retry_given_up")[0].why) == (400, "fatal")
    assert proxies["r1"].seen.count("POST /v1/chat/completions -> Status") == 1


def test_plain_vllm_is_continued_from_the_text(fleet, reference, proxies):
    proxies["plain"].inject(Cut(after_events=20))
    run = wrapped_run(fleet, proxies["plain"].url)
    assert run.text == reference[0]  # greedy, continue_final_message: nothing twice, nothing lost
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "text"]
    assert run.of("session_start")[0].l0_key is None and run.of("checkpoint_fetched") == []
    resume = run.of("resume")[0]
    assert resume.mode == "text" and 0 < resume.char_offset < len(reference[0])


def test_completions_resume_and_keep_their_type(fleet, proxies):
    from openai.types import Completion

    want = raw_run(fleet, fleet["r2"].url, kind="completion")
    proxies["r1"].inject(Cut(after_events=12))
    run = wrapped_run(fleet, proxies["r1"].url, kind="completion")
    assert (run.text, run.ids) == want[:2]
    assert all(isinstance(c, Completion) for c in run.chunks) and len({c.id for c in run.chunks}) == 1
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "checkpoint"]


def test_the_log_replays_the_live_stream_byte_for_byte(fleet, reference, proxies, tmp_path):
    import l0
    from l0.client.eventlog import diverge, read_log

    cut_log, clean_log = tmp_path / "cut.jsonl", tmp_path / "clean.jsonl"
    proxies["r1"].inject(Cut(after_events=25))
    live = wrapped_run(fleet, proxies["r1"].url, log=str(cut_log))
    seen = []

    async def again():
        return [c async for c in l0.replay(cut_log, callbacks=seen.append)]
    replayed = asyncio.run(again())
    assert [c.model_dump_json() for c in replayed] == [c.model_dump_json() for c in live.chunks]
    assert [e.to_dict() for e in seen] == [e.to_dict() for e in live.events]
    assert read_log(cut_log).torn == 0
    wrapped_run(fleet, fleet["r1"].url, log=str(clean_log))
    assert diverge(cut_log, clean_log) is None  # a cut and resumed run is the clean run, token for token


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_non_streaming_retries_by_category(fleet, proxies, transport):
    import openai

    async def plain():
        r = await sdk(fleet["r2"].url).chat.completions.create(model=fleet["model"], messages=PROMPT,
                                                               max_tokens=16, temperature=0.0)
        return r.choices[0].message.content
    want = asyncio.run(plain())
    proxies["r1"].inject(Status(503), Reset())
    run = Run()

    async def go():
        import l0
        client = l0.wrap(TRANSPORTS[transport](proxies["r1"].url), sleep=run.sleep, on_event=run.events.append)
        return await client.chat.completions.create(model=fleet["model"], messages=PROMPT, max_tokens=16,
                                                    temperature=0.0)
    resp = asyncio.run(go())
    if transport == "sdk":
        assert isinstance(resp, openai.types.chat.ChatCompletion)
        assert resp.choices[0].message.content == want
    else:   # l0.http answers the response JSON
        assert resp["choices"][0]["message"]["content"] == want
    assert [f.category for f in run.of("failure")] == ["transient", "network"]
    assert run.of("complete")[0].attempts == 3


def test_the_key_header_and_assigned_keys(fleet):
    import re

    async def raw(url, xargs=None):
        client = sdk(url)
        try:
            extra = {"return_token_ids": True, **({"vllm_xargs": xargs} if xargs else {})}
            resp = await client.chat.completions.with_raw_response.create(
                model=fleet["model"], messages=PROMPT, max_tokens=12, temperature=0.0, extra_body=extra)
            return resp.headers.get("x-l0-key"), resp.parse()
        finally:
            await client.close()
    key, body = asyncio.run(raw(fleet["r2"].url))  # unkeyed, on the replica that assigns keys
    assert re.fullmatch(r"l0-[0-9a-f]{32}", key)
    record = settled_record(lambda k: _record_json(fleet["r2"], k), key, ready=lambda rec: rec["finished"])
    assert record is not None and record["finished"] and record["output_ids"] == body.choices[0].token_ids
    assert asyncio.run(raw(fleet["r1"].url))[0] is None  # r1 keys only keyed requests
    assert asyncio.run(raw(fleet["r1"].url, {"l0_key": "l0-" + "ab" * 16}))[0] == "l0-" + "ab" * 16


LOOPING = [{"role": "user", "content": "List the planets of the solar system."}]  # L0 stops it (EOS)


def test_a_stream_cut_before_its_stop_token_ends_without_special_text(fleet, proxies):
    """The cut drops only the last event (L0's stop: the EOS token); the
    record is finished by then, so the client delivers the EOS from it, with
    the text the stream itself gives it: none (seen in CI: ``<|im_end|>``
    rendered by vLLM's ``/detokenize``, which keeps special tokens)."""
    text, ids, n = raw_run(fleet, fleet["r1"].url, messages=LOOPING, max_tokens=300)
    assert len(ids) < 300 and "<|im_end|>" not in text

    def settle(e):  # let the record land finished before the retry reads it
        if e.type == "failure":
            settled_record(lambda k: _record_json(fleet["r1"], k), run_key[0], ready=lambda rec: rec["finished"])
        elif e.type == "session_start":
            run_key.append(e.l0_key)
    run_key = []
    # before the event that ends the answer (not after n - 1 events: a lagging server puts two
    # tokens in one event, and a CI run's stream then ended before its cut)
    proxies["r1"].inject(Cut(before=rb'"finish_reason":"stop"'))
    run = wrapped_run(fleet, proxies["r1"].url, messages=LOOPING, max_tokens=300, hook=settle)
    assert (run.text, run.ids) == (text, ids)
    fetched = run.of("checkpoint_fetched")
    assert fetched[0].finished and run.of("complete")[0].attempts == 1
    assert run.of("complete")[0].finish_reason == "stop"


def test_a_cut_inside_a_split_character_resumes_its_text_exactly(fleet, proxies):
    """Arabic letters are split across byte tokens: the stream holds a
    partial character back (a chunk with ids and no text). A cut there, or
    one token later, resumes from the checkpoint with the text exact (seen in
    the chaos run: a lost space, or the prompt's text in the answer); so does
    a cut three or four tokens before it, where the split character comes at
    the end of the first tokens whose text the client recomputes (a chaos run
    saw a doubled space: the client kept the space the stream holds back)."""
    messages = [{"role": "user", "content": "Translate 'good morning' into 10 languages."}]
    ref = wrapped_run(fleet, fleet["r1"].url, messages=messages, max_tokens=40)
    held = [n for n, c in enumerate(ref.chunks)
            if c.choices and getattr(c.choices[0], "token_ids", None) and not c.choices[0].delta.content]
    assert held, "the answer has no split character any more: pick another prompt"
    assert held[0] >= 6
    for k in (held[0], held[0] + 1, held[0] - 4, held[0] - 3):
        proxies["r1"].clear()
        proxies["r1"].inject(Cut(after_events=k + 1))
        run = wrapped_run(fleet, proxies["r1"].url, messages=messages, max_tokens=40)
        assert (run.text, run.ids) == (ref.text, ref.ids), k
        # (CI once saw "regenerate" here: the record was not readable yet; the client now waits for it)
        assert [e.mode for e in run.of("attempt_start")] == ["fresh", "checkpoint"], (k, run.types())


def test_a_stop_string_across_the_cut_still_stops_the_answer(fleet, reference, proxies):
    """vLLM holds back the start of a possible stop string and checks stop
    strings only in a request's own output: a continuation that starts
    inside a stop string must still stop there, whatever the cut."""
    stop = " journey of self"   # three tokens in the reference answer
    assert stop in reference[0]
    ref = wrapped_run(fleet, fleet["r1"].url, request={"stop": [stop]})
    assert ref.text == reference[0][:reference[0].index(stop)] and ref.of("complete")[0].finish_reason == "stop"
    held = [k for k, c in enumerate(ref.chunks, 1)
            if c.choices and getattr(c.choices[0], "token_ids", None) and not c.choices[0].delta.content]
    assert held  # chunks whose text vLLM held back: the text lags the ids
    n = len(ref.chunks)
    bad = []
    for k in sorted({1, held[0], *range(max(1, n - 5), n + 1)}):   # the start, and every cut around the stop
        proxies["r1"].clear()
        proxies["r1"].inject(Cut(after_events=k))
        run = wrapped_run(fleet, proxies["r1"].url, request={"stop": [stop]})
        if (run.text, run.ids, run.of("complete")[0].finish_reason) != (ref.text, ref.ids, "stop"):
            bad.append((k, run.text, run.ids))
        assert [e.mode for e in run.of("attempt_start")][1:] in ([], ["fresh"], ["regenerate"]), k  # fresh: nothing came
    assert bad == [], (ref.text, ref.ids, bad)


@pytest.mark.parametrize("stop", [None, [" journey of self"]], ids=["checkpoint", "regenerate"])
def test_usage_after_a_resume_is_the_requests(fleet, proxies, stop):
    """``stream_options.include_usage``: the caller's last chunk is the usage
    of the request it made, resumed or not (a continuation's prompt holds the
    answer's first tokens: moved back to the completion)."""
    request = {"stream_options": {"include_usage": True}, **({"stop": stop} if stop else {})}
    ref = wrapped_run(fleet, fleet["r1"].url, request=request)
    want = ref.chunks[-1].usage
    assert ref.chunks[-1].choices == [] and want.completion_tokens == len(ref.ids) and want.prompt_tokens > 0
    proxies["r1"].inject(Cut(after_events=6))
    run = wrapped_run(fleet, proxies["r1"].url, request=request)
    assert (run.text, run.ids) == (ref.text, ref.ids)
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "regenerate" if stop else "checkpoint"]
    last = run.chunks[-1]
    assert last.choices == [] and last.id == run.chunks[0].id   # one stream, one identity
    got = {k: getattr(last.usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert got == {k: getattr(want, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert {k: run.of("complete")[0].usage[k] for k in got} == got
    assert sum(1 for c in run.chunks if c.usage is not None) == 1


def _logprobs_by_token(run):
    """One entry per token id (None where the chunk had no logprobs)."""
    out = []
    for c in run.chunks:
        if not c.choices or not getattr(c.choices[0], "token_ids", None):
            continue
        n = len(c.choices[0].token_ids)
        lp = c.choices[0].logprobs
        entries = (lp.content if run.kind == "chat" else None) if lp is not None else None
        if lp is not None and run.kind != "chat":
            entries = [{"token": t, "logprob": v, "top": list(top)} for t, v, top in
                       zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)]
        elif entries is not None:
            entries = [{"token": e.token, "logprob": e.logprob, "top": [t.token for t in e.top_logprobs]}
                       for e in entries]
        assert entries is None or len(entries) == n
        out += entries if entries is not None else [None] * n
    return out


@pytest.mark.parametrize("kind,stop", [("chat", None), ("completion", None), ("chat", [" tapestry"])],
                         ids=["chat", "completion", "chat-regenerate"])
def test_logprobs_survive_a_resume(fleet, proxies, kind, stop):
    """A checkpoint continuation is a completions request: its logprobs
    reach a chat caller in the chat form, every generated token keeps its
    entry (equal to the uninterrupted run's, to float noise: the
    continuation prefills what was decoded); tokens delivered from the
    checkpoint have none. A regenerated stream keeps the kept tokens'."""
    request = {"logprobs": True, "top_logprobs": 2} if kind == "chat" else {"logprobs": 2}
    if stop:
        request["stop"] = stop
    ref = wrapped_run(fleet, fleet["r1"].url, kind=kind, request=request)
    proxies["r1"].inject(Cut(after_events=12))
    run = wrapped_run(fleet, proxies["r1"].url, kind=kind, request=request)
    ref.kind = run.kind = kind
    assert (run.text, run.ids) == (ref.text, ref.ids)
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "regenerate" if stop else "checkpoint"]
    want, got = _logprobs_by_token(ref), _logprobs_by_token(run)
    assert len(got) == len(want) == len(ref.ids) and None not in want
    from_checkpoint = run.of("resume")[0].token_offset - run.of("failure")[0].delivered_tokens
    assert sum(g is None for g in got) == from_checkpoint
    for g, w in zip(got, want):
        if g is not None:
            assert (g["token"], g["top"]) == (w["token"], w["top"])
            assert g["logprob"] == pytest.approx(w["logprob"], abs=1e-3)
    if kind == "completion":   # offsets run on across the resume
        offsets = [o for c in run.chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
        assert offsets == sorted(offsets)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def _tool_calls(run):
    """The tool calls the caller's chunks add up to: [(id, name, arguments)]."""
    calls = {}
    for c in run.chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = tc.id or call["id"]
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
    return [(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]


def test_a_tool_call_stream_cut_before_its_first_piece_is_regenerated_whole(fleet, proxies):
    """``tool_choice: required`` streams ids with empty deltas while the
    parser reads the call's JSON: a cut there has delivered nothing the
    caller can see, and the regenerated stream's tool-call pieces reach the
    caller (restamped chunks carried text only, and lost them)."""
    request = {"tools": TOOLS, "tool_choice": "required"}
    weather = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    ref = wrapped_run(fleet, fleet["r1"].url, request=request, messages=weather, max_tokens=96)
    want = _tool_calls(ref)
    assert [name for _, name, _ in want] == ["get_weather"] and want[0][2]   # (vLLM streams the arguments)
    proxies["r1"].inject(Cut(after_events=5))   # the role chunk, then ids with empty deltas
    run = wrapped_run(fleet, proxies["r1"].url, request=request, messages=weather, max_tokens=96)
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "regenerate"]
    assert [(n, a) for _, n, a in _tool_calls(run)] == [(n, a) for _, n, a in want] and run.ids == ref.ids
    assert run.of("complete")[0].finish_reason == ref.of("complete")[0].finish_reason
    assert len({c.id for c in run.chunks}) == 1


def test_a_tool_call_stream_cut_after_its_pieces_were_delivered_is_regenerated(fleet, proxies):
    """Cut after the caller got part of a tool call's arguments: the L0
    server regenerates the greedy request, the pieces delivered are checked
    by token id and skipped, and the caller's call is whole (its first id
    kept); ``on_tool_call`` gets the call, ``on_token`` the text."""
    request = {"tools": TOOLS, "tool_choice": "required"}
    weather = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    ref = wrapped_run(fleet, fleet["r1"].url, request=request, messages=weather, max_tokens=96)
    want = _tool_calls(ref)
    assert "Paris" in want[0][2] and not want[0][2].startswith("Paris")
    # before the piece that names the city, the call's first pieces delivered (found by
    # content: a lagging server puts several tokens in one event, so event counts move)
    proxies["r1"].inject(Cut(before=rb"Paris"))
    calls = []
    run = wrapped_run(fleet, proxies["r1"].url, request=request, messages=weather, max_tokens=96,
                      on_tool_call=calls.append)
    assert [e.mode for e in run.of("attempt_start")] == ["fresh", "regenerate"]
    got = _tool_calls(run)
    assert [(n, a) for _, n, a in got] == [(n, a) for _, n, a in want] and run.ids == ref.ids
    first = next(c for c in run.chunks if c.choices and c.choices[0].delta.tool_calls)
    assert got[0][0] == first.choices[0].delta.tool_calls[0].id   # one call, its first id
    assert [(c.name, c.arguments, c.id) for c in calls] == [(want[0][1], want[0][2], got[0][0])]
    assert run.of("tool_call") == calls and run.types()[-2:] == ["tool_call", "complete"]


def test_the_detokenize_route_renders_as_a_stream_does(fleet):
    import httpx

    url = fleet["r1"].url + "/l0/detokenize"
    eos = 2  # SmolLM2's <|im_end|>
    ids = [1653, 260, eos]
    plain = httpx.post(fleet["r1"].url + "/detokenize", json={"model": fleet["model"], "tokens": ids}).json()
    assert plain["prompt"].endswith("<|im_end|>")                           # vLLM's keeps it
    r = httpx.post(url, json={"tokens": ids})
    assert r.status_code == 200 and r.json() == {"text": plain["prompt"][:-len("<|im_end|>")]}
    assert httpx.post(url, json={"tokens": ids, "skip_special_tokens": False}).json()["text"] == plain["prompt"]
    for bad, says in [(b"not json", "not valid JSON"), (b"[1, 2]", "JSON object"),
                      (b'{"tokens": [-1]}', "token ids"), (b'{"tokens": "12"}', "token ids"),
                      (b'{"tokens": [1.5]}', "token ids"), (b'{"tokens": [true]}', "token ids"),
                      (b'{"tokens": [99999999]}', "vocabulary size"),
                      (b'{"tokens": [1], "skip_special_tokens": "yes"}', "true or false")]:
        r = httpx.post(url, content=bad, headers={"content-type": "application/json"})
        assert r.status_code == 400 and says in r.json()["error"]["message"], (bad, r.text)


@pytest.mark.parametrize("prompt,action,finish", [
    ("List the planets of the solar system.", "stop", "stop"),   # loops (tests/data/smollm2_labelled.jsonl p00)
    ("Count from one to ten.", "none", "length")])
def test_the_verdict_of_l0_reaches_the_client(fleet, proxies, prompt, action, finish):
    import l0

    events = []

    async def go():
        client = sdk(fleet["r1"].url)
        try:
            # the record trails the stream; a busy host may take past the 2 s default
            wrapped = l0.wrap(client, verdict=True, on_event=events.append, verdict_wait_s=30.0)
            stream = await wrapped.chat.completions.create(
                model=fleet["model"], messages=[{"role": "user", "content": prompt}],
                max_tokens=300 if action == "stop" else 24, temperature=0.0, stream=True)
            async for _ in stream:
                pass
            return stream, await stream.verdict()
        finally:
            await client.close()
    stream, verdict = asyncio.run(go())
    types = [e.type for e in events]
    assert types[-2:] == ["verdict", "complete"]
    assert verdict["action"] == action and verdict["finished"] is True
    assert stream.session.finish_reason == finish == verdict["finish_reason"]
    assert verdict["key"] == events[0].l0_key
    if action == "stop":
        assert [i["action"] for i in verdict["interventions"]] == ["stop"]
        assert len(stream.token_ids) < 300
    else:
        assert verdict["interventions"] == []


def test_the_synchronous_client_is_hardened_too(fleet, reference, proxies):
    import openai

    import l0

    proxies["r1"].inject(Cut(after_events=17))
    events, sleeps = [], []

    async def sleep(s):
        sleeps.append(s)
    client = openai.OpenAI(base_url=proxies["r1"].url + "/v1", api_key="test")
    wrapped = l0.wrap(client, on_event=events.append, sleep=sleep)
    stream = wrapped.chat.completions.create(model=fleet["model"], messages=PROMPT, max_tokens=MAX_TOKENS,
                                             temperature=0.0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (text, stream.token_ids) == reference[:2]
    assert [e.mode for e in events if e.type == "attempt_start"] == ["fresh", "checkpoint"]
    assert len(sleeps) == 1
    assert wrapped.models.list().data[0].id == fleet["model"]  # the rest is the SDK client's own
    wrapped.close()
    client.close()


def _engine_counts(server):
    """(requests running, generation tokens so far) from vLLM's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for f in text_string_to_metric_families(httpx.get(server.url + "/metrics", timeout=5).text)
               for s in f.samples]
    running = sum(s.value for s in samples if s.name == "vllm:num_requests_running")
    tokens = sum(s.value for s in samples if s.name == "vllm:generation_tokens_total")
    return running, tokens


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancelling_the_consumer_aborts_the_request_on_the_engine(fleet, proxies, transport):
    """A web server cancels the task streaming to a client that went away:
    the cancel reaches the HTTP stream, vLLM aborts the request (nothing
    running, its generation counter stops far short of max_tokens), a
    ``cancelled`` event is logged and nothing is retried."""
    import time

    import l0

    server = fleet["r2"]
    events = []

    async def go():
        client = l0.wrap(TRANSPORTS[transport](server.url), on_event=events.append)
        stream = await client.chat.completions.create(model=fleet["model"], messages=PROMPT, max_tokens=1500,
                                                      temperature=0.0, stream=True, extra_body={"ignore_eos": True})
        got = asyncio.Event()
        n = 0

        async def consume():
            nonlocal n
            async for chunk in stream:
                n += 1
                if n == 8:
                    got.set()
        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return n
    before = _engine_counts(server)[1]
    delivered = asyncio.run(asyncio.wait_for(go(), 300))
    # the abort lands off the caller's path: poll until nothing runs and the counter holds still
    deadline, last, still = time.monotonic() + 60, None, 0
    while time.monotonic() < deadline:
        running, tokens = _engine_counts(server)
        still = still + 1 if (running == 0 and tokens == last) else 0
        if still >= 3:
            break
        last = tokens
        time.sleep(0.5)
    assert still >= 3, f"the engine still generates: running={running}, tokens={tokens}"
    assert tokens - before < 1000       # of 1500 asked for: aborted, not run to its end
    types = [e.type for e in events]
    assert types[-1] == "cancelled" and events[-1].how == "cancelled"
    assert types.count("attempt_start") == 1 and "retry_scheduled" not in types
    assert delivered >= 8


def test_a_cut_stream_is_traced_with_opentelemetry(fleet, reference, proxies):
    """The SDK's in-memory exporter against the real server: one l0.stream
    span (key, tokens, the server's verdict) and an l0.attempt span per
    attempt, fresh then checkpoint, the cut one with an error status."""
    import l0
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = l0.Tracing(tracer_provider=tp, meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    proxies["r1"].inject(Cut(after_events=30))
    run = wrapped_run(fleet, proxies["r1"].url, trace=tracing, verdict=True)
    assert (run.text, run.ids) == reference[:2]
    finished = exporter.get_finished_spans()
    (session,) = [s for s in finished if s.name == "l0.stream"]
    attempts = [s for s in finished if s.name == "l0.attempt"]
    key = run.of("session_start")[0].l0_key
    assert session.attributes["l0.key"] == key and session.attributes["l0.outcome"] == "complete"
    assert session.attributes["l0.tokens"] == MAX_TOKENS
    modes = [a.attributes["l0.mode"] for a in attempts]
    assert modes[0] == "fresh" and attempts[0].status.status_code.name == "ERROR"
    assert modes[1:] in ([], ["checkpoint"])   # [] when the checkpoint already held the finished answer
    if modes[1:]:   # a stream that ran to its end: the server's verdict (no intervention) rides on the span
        assert session.attributes["l0.verdict.action"] == "none"
    assert "l0.checkpoint_fetched" in [e.name for a in attempts for e in a.events]
    assert all(a.parent.span_id == session.context.span_id for a in attempts)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_streamed_n_2_is_passed_through_with_a_warning_not_refused(fleet, transport):
    """A valid call L0 can't harden is sent as it is: both choices stream
    from the server, the stream says it is not hardened, and a warning says
    so once per process."""
    import warnings

    import l0
    from l0.client import wrap as wrap_module
    from l0.client.chunks import as_dict

    wrap_module._WARNED = False

    async def go():
        client = l0.wrap(TRANSPORTS[transport](fleet["r2"].url))
        texts = {0: "", 1: ""}
        streams = []
        for _ in range(2):
            stream = await client.chat.completions.create(model=fleet["model"], messages=PROMPT, max_tokens=12,
                                                          n=2, temperature=0.7, seed=1, stream=True)
            streams.append(stream)
            async for chunk in stream:
                for c in as_dict(chunk).get("choices") or ():
                    texts[c["index"]] += (c.get("delta") or {}).get("content") or ""
            await stream.close()
        return texts, streams, client.last
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts, streams, last = asyncio.run(go())
    assert texts[0] and texts[1]
    assert [s.hardened for s in streams] == [False, False] and "n > 1" in streams[0].reason and last is None
    said = [w for w in caught if issubclass(w.category, wrap_module.L0Warning)]
    assert len(said) == 1 and "passed through unhardened" in str(said[0].message)


# -- the anthropic SDK against vLLM's /v1/messages -----------------------------------------------------------

def anthropic_events(url, model, wrapped=True, hook=None, **options):
    """One Messages stream through the real anthropic SDK (wrapped by
    ``l0.wrap`` or not): (events, text, the wrapped client's session)."""
    import anthropic

    import l0

    async def go():
        client = anthropic.AsyncAnthropic(base_url=url, api_key="test", max_retries=0)
        c = l0.wrap(client, **options) if wrapped else client
        stream = await c.messages.create(model=model, max_tokens=MAX_TOKENS, messages=PROMPT, stream=True,
                                         extra_body={"temperature": 0.0})
        events = []
        async for e in stream:
            events.append(e)
            if hook is not None:
                hook(e)
        await client.close()
        return events, getattr(c, "last", None)
    events, session = asyncio.run(asyncio.wait_for(go(), 300))
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    return events, text, session


def _firsts(events):
    """The events with each run of consecutive events of one type cut to its first."""
    return [e for i, e in enumerate(events) if i == 0 or e.type != events[i - 1].type]


def _runs(events):
    """The event types, each run of one type once."""
    return [e.type for e in _firsts(events)]


@pytest.fixture(scope="module")
def anthropic_reference(fleet):
    events, text, _ = anthropic_events(fleet["r2"].url, fleet["model"], wrapped=False)
    assert events[-1].type == "message_stop" and len(text) > 40
    return events, text


def test_an_anthropic_stream_is_the_sdks_own_stream(fleet, anthropic_reference, proxies):
    import anthropic.types as at

    want, text = anthropic_reference
    events, got, session = anthropic_events(proxies["r1"].url, fleet["model"])
    # the same events, but for how many text deltas carry the text: a lagging server
    # puts several tokens in one (seen in CI), so the count is the server's, not the stream's
    assert got == text and _runs(events) == _runs(want)
    assert all(isinstance(e, type(w)) for e, w in zip(_firsts(events), _firsts(want)))
    assert isinstance(events[0], at.RawMessageStartEvent)
    types = [e.type for e in session.events]
    assert types == ["session_start", "attempt_start", "first_token", "complete"]
    assert session.events[0].l0_key   # an L0 server: the request carried a key (vllm_xargs)


@pytest.mark.parametrize("after", [6, 25])
def test_a_cut_anthropic_stream_resumes_as_one_message(fleet, anthropic_reference, proxies, after):
    """Cut mid-answer: the answer continues on the same server's chat route
    (greedy, continue_final_message) and comes back as this stream's own
    events: one message_start, one text block, its stop, message_delta,
    message_stop, the text whole."""
    want, text = anthropic_reference
    proxies["r1"].inject(Cut(after_events=after))
    sleeps = []

    async def sleep(s):
        sleeps.append(s)
    events, got, session = anthropic_events(proxies["r1"].url, fleet["model"], sleep=sleep)
    assert got == text
    types = [e.type for e in events]
    assert types.count("message_start") == 1 and types.count("content_block_start") == 1
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2].delta.stop_reason == want[-2].delta.stop_reason == "max_tokens"
    assert events[-2].usage.output_tokens == want[-2].usage.output_tokens == MAX_TOKENS
    assert [e.mode for e in session.events if e.type == "attempt_start"] == ["fresh", "text"]
    assert len(sleeps) == 1


def test_the_anthropic_stream_helper_and_sync_client_are_hardened(fleet, anthropic_reference, proxies):
    """``messages.stream`` (the SDK's MessageStream over the hardened events)
    on the async and the synchronous client, each through a cut, and a 529
    overloaded answer retried."""
    import anthropic

    import l0

    _, text = anthropic_reference
    proxies["r1"].inject(Status(529, {"retry-after": "0"}))
    proxies["r1"].inject(Cut(after_events=14))

    async def go():
        client = l0.wrap(anthropic.AsyncAnthropic(base_url=proxies["r1"].url, api_key="test"))
        async with client.messages.stream(model=fleet["model"], max_tokens=MAX_TOKENS, messages=PROMPT,
                                          extra_body={"temperature": 0.0}) as s:
            pieces = [t async for t in s.text_stream]
            final = await s.get_final_message()
        return "".join(pieces), final, client.last
    streamed, final, session = asyncio.run(asyncio.wait_for(go(), 300))
    assert streamed == text and final.content[0].text == text and final.stop_reason == "max_tokens"
    assert [e.mode for e in session.events if e.type == "attempt_start"] == ["fresh", "fresh", "text"]
    assert [e.status for e in session.events if e.type == "failure"][0] == 529

    proxies["r1"].inject(Cut(after_events=9))
    sync = l0.wrap(anthropic.Anthropic(base_url=proxies["r1"].url, api_key="test"))
    greedy = {"extra_body": {"temperature": 0.0}}   # (the SDK has no sampling keywords)
    with sync.messages.stream(model=fleet["model"], max_tokens=MAX_TOKENS, messages=PROMPT, **greedy) as s:
        assert s.get_final_text() == text
    whole = sync.messages.create(model=fleet["model"], max_tokens=MAX_TOKENS, messages=PROMPT, **greedy)
    assert whole.content[0].text == text   # non-streaming: the SDK's Message
    sync.close()


# -- the OpenAI SDK's other surfaces: responses, parse, the stream helper, raw responses ----------------------

def responses_events(url, model, wrapped=True, **options):
    """One Responses stream through the real openai SDK: (events, text, session)."""
    import l0

    async def go():
        client = sdk(url)
        c = l0.wrap(client, **options) if wrapped else client
        stream = await c.responses.create(model=model, input=PROMPT[0]["content"], max_output_tokens=MAX_TOKENS,
                                          temperature=0.0, stream=True)
        events = [e async for e in stream]
        await client.close()
        return events, getattr(c, "last", None)
    events, session = asyncio.run(asyncio.wait_for(go(), 300))
    return events, "".join(e.delta for e in events if e.type == "response.output_text.delta"), session


def test_a_cut_responses_stream_resumes_as_one_response(fleet, proxies):
    """``responses.create(stream=True)``: healthy, the SDK's own events; cut
    mid-answer, the rest continues on the chat route and comes back as this
    response's events, its done events and response.completed carrying the
    whole text, sequence numbers going on."""
    want, text, _ = responses_events(fleet["r2"].url, fleet["model"], wrapped=False)
    assert want[-1].type == "response.completed" and len(text) > 40
    assert want[-1].response.status == "incomplete"   # max_output_tokens reached
    events, got, session = responses_events(proxies["r1"].url, fleet["model"])
    # The same events but how many deltas: a server that lags its engine puts two
    # tokens in one SSE event, so two runs' delta counts depend on timing (seen in CI).
    shape, want_shape = _shape(events), _shape(want)
    assert got == text and [e.type for e in shape] == [e.type for e in want_shape]
    assert all(isinstance(e, type(w)) for e, w in zip(shape, want_shape))

    proxies["r1"].inject(Cut(after_events=15))
    events, got, session = responses_events(proxies["r1"].url, fleet["model"], sleep=_no_sleep)
    assert got == text
    types = [e.type for e in events]
    assert types.count("response.created") == 1 and types[-1] == "response.completed"
    assert events[-1].response.output[0].content[0].text == text and events[-1].response.status == "incomplete"
    assert [e for e in events if e.type == "response.output_text.done"][0].text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.item_id for e in events if e.type == "response.output_text.delta"}) == 1
    assert [e.mode for e in session.events if e.type == "attempt_start"] == ["fresh", "text"]


def _shape(events) -> list:
    """The events, each run of text deltas kept as its first."""
    delta = "response.output_text.delta"
    return [e for i, e in enumerate(events) if not (e.type == delta and i and events[i - 1].type == delta)]


async def _no_sleep(s):
    pass


def test_whole_responses_and_parse_are_retried(fleet, reference, proxies):
    """Non-streaming ``responses.create`` and ``chat.completions.parse`` (a
    pydantic response_format, vLLM's structured outputs) through a 503 and
    a 429: retried, and the SDK's own objects come back."""
    import pydantic

    import l0

    class Verdict(pydantic.BaseModel):
        ok: bool

    proxies["r1"].inject(Status(503, {"retry-after": "0"}))
    proxies["r1"].inject(Status(429, {"retry-after": "0"}))
    events = []

    async def go():
        client = l0.wrap(sdk(proxies["r1"].url), sleep=_no_sleep, on_event=events.append)
        whole = await client.responses.create(model=fleet["model"], input=PROMPT[0]["content"],
                                              max_output_tokens=MAX_TOKENS, temperature=0.0)
        parsed = await client.chat.completions.parse(
            model=fleet["model"], max_tokens=20, temperature=0.0, response_format=Verdict,
            messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}])
        return whole, parsed
    whole, parsed = asyncio.run(asyncio.wait_for(go(), 300))
    assert whole.status == "incomplete" and len(whole.output_text) > 40
    assert isinstance(parsed.choices[0].message.parsed, Verdict)
    assert [e.status for e in events if e.type == "failure"] == [503, 429]
    assert [e.type for e in events].count("complete") == 2


def test_the_chat_stream_helper_and_raw_responses_are_hardened(fleet, reference, proxies):
    """``chat.completions.stream`` (the SDK's events and final completion),
    ``with_raw_response`` (headers of the attempt that answered) and
    ``with_streaming_response`` (the hardened stream as SSE lines), each
    through a fault; then the synchronous client's stream helper."""
    import openai

    import l0

    text = reference[0]
    proxies["r1"].inject(Cut(after_events=20))
    req = dict(model=fleet["model"], messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0)

    async def go():
        client = l0.wrap(sdk(proxies["r1"].url), sleep=_no_sleep)
        async with client.chat.completions.stream(**req) as s:
            deltas = [e.delta async for e in s if e.type == "content.delta"]
            final = s.current_completion_snapshot   # (get_final_completion refuses a "length" finish)
        helper_modes = [e.mode for e in client.last.events if e.type == "attempt_start"]

        proxies["r1"].inject(Status(503, {"retry-after": "0"}))
        raw = await client.chat.completions.with_raw_response.create(**req)
        whole = raw.parse()

        proxies["r1"].inject(Cut(after_events=10))
        raw_stream = await client.chat.completions.with_raw_response.create(**req, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in raw_stream.parse() if c.choices])

        async with client.chat.completions.with_streaming_response.create(**req, stream=True) as r:
            lines = [line async for line in r.iter_lines()]
        return deltas, final, helper_modes, raw, whole, raw_stream, streamed, lines
    deltas, final, helper_modes, raw, whole, raw_stream, streamed, lines = asyncio.run(asyncio.wait_for(go(), 300))
    assert "".join(deltas) == text and final.choices[0].message.content == text
    assert helper_modes == ["fresh", "checkpoint"]
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("application/json")
    assert whole.choices[0].message.content == text
    assert raw_stream.headers["content-type"].startswith("text/event-stream") and streamed == text
    assert lines[-2:] == ["data: [DONE]", ""] and lines[0].startswith("data: {")

    proxies["r1"].inject(Cut(after_events=12))
    wrapped = l0.wrap(openai.OpenAI(base_url=proxies["r1"].url + "/v1", api_key="test"))
    with wrapped.chat.completions.stream(**req) as s:
        s.until_done()
        assert s.current_completion_snapshot.choices[0].message.content == text
    assert [e.mode for e in wrapped.last.events if e.type == "attempt_start"] == ["fresh", "checkpoint"]
    raw = wrapped.chat.completions.with_raw_response.create(**req)
    assert raw.parse().choices[0].message.content == text and raw.headers["content-type"]
    wrapped.close()


def test_a_litellm_stream_is_hardened_by_l0_run(fleet, reference, proxies, monkeypatch):
    """LiteLLM's own stream (``acompletion(stream=True)`` against the vLLM
    server) through ``l0.run``: cut mid-answer, the zero-argument factory is
    replayed (greedy) with the delivered text checked and skipped; the
    caller's chunks stay LiteLLM's type."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")   # no fetch of the price list at import
    import litellm

    import l0

    proxies["r1"].inject(Cut(after_events=20))
    events = []

    def factory():
        return litellm.acompletion(model="hosted_vllm/" + fleet["model"], api_base=proxies["r1"].url + "/v1",
                                   api_key="test", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0,
                                   stream=True)

    async def go():
        stream = l0.run(factory, sleep=_no_sleep, on_event=events.append)
        return [c async for c in stream], stream.text
    chunks, text = asyncio.run(asyncio.wait_for(go(), 300))
    assert text == reference[0]
    assert {type(c).__name__ for c in chunks} == {"ModelResponseStream"}
    assert [e.mode for e in events if e.type == "attempt_start"] == ["fresh", "regenerate"]
    # LiteLLM raises a cut body as its own error with a 5xx status: a transient failure, retried
    assert [e.category for e in events if e.type == "failure"] == ["transient"]


@pytest.mark.parametrize("hold", [False, True], ids=["delivered", "held"])
def test_l0_run_falls_back_to_a_zero_argument_factory_after_a_mid_stream_break(fleet, reference, proxies, hold):
    """``l0.run`` with SDK streams as zero-argument factories: the primary is
    cut mid-answer and gives up (no retries); the fallback is replayed past
    what was delivered (greedy: its new output checked and skipped), or,
    with ``hold`` (nothing delivered), started over."""
    import l0

    proxies["r1"].inject(Cut(after_events=20))
    events = []

    def opener(url):
        async def open_stream():
            return await sdk(url).chat.completions.create(model=fleet["model"], messages=PROMPT,
                                                          max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
        return open_stream

    async def go():
        stream = l0.run(opener(proxies["r1"].url), fallbacks=[opener(fleet["r2"].url)], hold=hold,
                        retry=l0.Retry(max_retries=0), sleep=_no_sleep, on_event=events.append)
        return [c async for c in stream], stream.text
    chunks, text = asyncio.run(asyncio.wait_for(go(), 300))
    assert text == reference[0]   # (each factory's chunks come as it made them: l0.run keeps their ids)
    assert [e.type for e in events if e.type in ("fallback", "retry_given_up")] == ["retry_given_up", "fallback"]
    assert [e.mode for e in events if e.type == "attempt_start"] == ["fresh", "fresh" if hold else "regenerate"]


# Last in the module: each kill costs a restart of r1 (~40 s here) before the next test that
# needs it, and after the last kill none does.
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigkill_of_the_primary_resumes_on_the_fallback(fleet, reference, proxies, transport):
    import l0

    run = wrapped_run(fleet, fleet["r1"].url, kill_at=24, victim=fleet["r1"], fallbacks=[fleet["r2"].url],
                      retry=l0.Retry(max_retries=1), transport=transport)
    assert (run.text, run.ids) == reference[:2]
    # the break cools r1 down and r2 (a replica of the same model, healthy) takes over at once:
    # the dead replica is not tried again, no retry budget spent on it
    assert [f.category for f in run.of("failure")] == ["network"]
    assert [e.endpoint for e in run.of("attempt_start")] == [fleet["r1"].url + "/v1/", fleet["r2"].url + "/v1/"]
    assert [(e.index, e.endpoint) for e in run.of("fallback")] == [(1, fleet["r2"].url + "/v1/")]
    assert run.of("retry_scheduled") == [] and run.of("retry_given_up") == []
    assert run.of("checkpoint_fetched")[0].endpoint == fleet["r2"].url + "/v1/"
    assert run.of("attempt_start")[-1].mode == "checkpoint"
