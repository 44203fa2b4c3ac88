"""The endpoint plugin's middleware, on a small ASGI app (no engine)."""
import asyncio
import json

import pytest

pytestmark = pytest.mark.vllm


def _app():
    from fastapi import FastAPI, Request

    from l0.engine.vllm.endpoint import L0EndpointPlugin

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return {"echo": (await request.body()).decode("utf-8", "replace")}

    @app.post("/other")
    async def other(request: Request):
        return {"len": len(await request.body())}

    L0EndpointPlugin().attach_router(app)
    return app


def _post(path, body):
    import httpx

    async def go():
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post(path, content=body, headers={"content-type": "application/json"})
    return asyncio.run(go())


def test_bad_option_is_400_before_the_app():
    r = _post("/v1/chat/completions", json.dumps({"vllm_xargs": {"l0_min_span": 0}, "stream": True}))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 400 and "l0_min_span=0 is out of range" in err["message"]


def test_good_request_body_reaches_the_app_unchanged():
    body = {"messages": [{"role": "user", "content": "x" * 100000}], "vllm_xargs": {"l0_action": "observe"}}
    r = _post("/v1/chat/completions", json.dumps(body))
    assert r.status_code == 200 and json.loads(r.json()["echo"]) == body


def test_other_routes_and_unparsable_bodies_pass_through():
    assert _post("/other", b"not json").json() == {"len": 8}
    r = _post("/v1/chat/completions", b"{not json")
    assert r.status_code == 200 and r.json() == {"echo": "{not json"}  # vLLM answers it itself


def test_any_body_is_passed_on_or_refused_with_a_message():
    """Fuzzed bodies (hypothesis): every answer is the app's (200) or L0's
    400 with a message; nothing raises out of the middleware."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from l0.engine.config import KNOWN_OPTIONS

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=30))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=10)
    xargs = st.dictionaries(st.one_of(st.sampled_from(KNOWN_OPTIONS), st.text(max_size=10)), values, max_size=4)
    docs = st.one_of(st.fixed_dictionaries({"vllm_xargs": st.one_of(xargs, values)}, optional={"stream": values}),
                     values)
    bodies = st.one_of(docs.map(lambda d: json.dumps(d).encode()), st.binary(max_size=64),
                       st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n))

    @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies)
    def check(body):
        r = _post("/v1/chat/completions", body)
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            assert r.json()["error"]["message"].startswith("l0: ")
        else:
            assert r.json() == {"echo": body.decode("utf-8", "replace")}
    check()


# -- GET /l0/checkpoints/{key} ------------------------------------------------

@pytest.fixture
def ck_app(monkeypatch, tmp_path):
    """The plugin's route on a bare FastAPI app, reading a real SQLite store."""
    from fastapi import FastAPI

    from l0.engine.vllm import endpoint, logits_processor
    monkeypatch.setenv("L0_CHECKPOINT_STORE", f"sqlite://{tmp_path}/ck.db")
    monkeypatch.delenv("L0_CONFIG", raising=False)
    logits_processor.server_config.cache_clear()
    endpoint._checkpoint_store.cache_clear()
    app = FastAPI()
    plugin = endpoint.L0EndpointPlugin()
    plugin.attach_router(app)
    yield app, plugin
    endpoint._checkpoint_store.cache_clear()
    logits_processor.server_config.cache_clear()


def _get(app, path, headers=None):
    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get(path, headers=headers or {})
    return asyncio.run(go())


def _put(tmp_rec):
    from l0.engine.vllm.endpoint import _checkpoint_store
    _checkpoint_store().put_many([tmp_rec])


def _rec(key="abc-1"):
    from l0.contract import ModelIdentity, Record
    return Record(key=key, model=ModelIdentity("m", "sha256:x"), prompt_ids=(1, 2), output_ids=(3,),
                  sampling={"max_tokens": 8})


def test_checkpoint_route_200_404_400(ck_app):
    app, _ = ck_app
    _put(_rec())
    r = _get(app, "/l0/checkpoints/abc-1")
    assert r.status_code == 200 and r.json()["output_ids"] == [3] and r.json()["prompt_ids"] == [1, 2]
    r = _get(app, "/l0/checkpoints/nope")
    assert r.status_code == 404 and "no checkpoint" in r.json()["error"]["message"]
    r = _get(app, "/l0/checkpoints/bad%20key")
    assert r.status_code == 400 and "1-128 characters" in r.json()["error"]["message"]


def test_checkpoint_route_is_guarded_by_the_api_key(ck_app):
    from types import SimpleNamespace
    app, plugin = ck_app
    asyncio.run(plugin.init_state(None, app.state, SimpleNamespace(api_key=["sk-test"])))
    _put(_rec())
    assert _get(app, "/l0/checkpoints/abc-1").status_code == 401
    assert _get(app, "/l0/checkpoints/abc-1", {"Authorization": "Bearer wrong"}).status_code == 401
    assert _get(app, "/l0/checkpoints/abc-1", {"Authorization": "Basic sk-test"}).status_code == 401
    assert _get(app, "/l0/checkpoints/abc-1", {"Authorization": "Bearer sk-test"}).status_code == 200


def test_checkpoint_route_without_a_store_is_503(ck_app, monkeypatch):
    from l0.engine.vllm import endpoint, logits_processor
    app, _ = ck_app
    monkeypatch.setenv("L0_CHECKPOINT_STORE", "off")
    logits_processor.server_config.cache_clear()
    endpoint._checkpoint_store.cache_clear()
    r = _get(app, "/l0/checkpoints/abc-1")
    assert r.status_code == 503 and "off" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "checkpoints_off"   # what the client reads: never ask again


def _fetch(app, key, wait_s, during=None, ready=None):
    """``fetch_record`` through the real route; ``during()`` runs after the
    first request (a record landing late). Returns (found, requests made)."""
    import httpx

    from l0.client.endpoints import fetch_record

    asked = []

    async def go():
        async def seen(request):
            asked.append(request.url.path)
            if len(asked) == 2 and during is not None:
                during()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     event_hooks={"request": [seen]}) as c:
            return await fetch_record(c, key, [("http://test", {})], wait_s=wait_s, ready=ready)
    return asyncio.run(go()), len(asked)


def test_a_record_known_to_exist_is_waited_for(ck_app):
    """The engine writes a record from a background thread: a resume that
    asks right after a cut may find none yet. With ``wait_s`` the client
    asks again until it lands (here after the first 404)."""
    app, _ = ck_app
    found, asked = _fetch(app, "late-1", wait_s=0.0)
    assert found is None and asked == 1                     # no wait: a 404 is the answer
    found, asked = _fetch(app, "late-1", wait_s=30.0, during=lambda: _put(_rec("late-1")))
    assert found is not None and found[0].output_ids == (3,) and (found[1], asked) == (0, 2)


def test_a_record_that_is_not_ready_is_asked_for_again(ck_app):
    """The verdict's wait: a record found unfinished is asked for again
    until it is finished; at the deadline the last one found is the answer."""
    import dataclasses
    app, _ = ck_app
    done = lambda rec: rec.finished  # noqa: E731
    _put(_rec("late-3"))
    found, asked = _fetch(app, "late-3", wait_s=0.0, ready=done)
    assert found is not None and not found[0].finished and asked == 1
    finish = dataclasses.replace(_rec("late-3"), output_ids=(3, 4), finished=True, finish_reason="stop")
    found, asked = _fetch(app, "late-3", wait_s=30.0, ready=done, during=lambda: _put(finish))
    assert found[0].finished and found[0].output_ids == (3, 4) and asked == 2


def test_a_server_without_checkpoints_is_not_waited_for(ck_app, monkeypatch):
    from l0.engine.vllm import endpoint, logits_processor
    app, _ = ck_app
    monkeypatch.setenv("L0_CHECKPOINT_STORE", "off")
    logits_processor.server_config.cache_clear()
    endpoint._checkpoint_store.cache_clear()
    assert _fetch(app, "late-2", wait_s=30.0) == (None, 1)
