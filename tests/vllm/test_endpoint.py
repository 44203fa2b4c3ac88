"""The endpoint plugin's middleware, on a small ASGI app (no engine)."""
import asyncio
import json

import pytest

pytestmark = pytest.mark.vllm


def _app():
    from fastapi import FastAPI, Request

    from l0.vllm.endpoint import L0EndpointPlugin

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return {"echo": (await request.body()).decode()}

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
