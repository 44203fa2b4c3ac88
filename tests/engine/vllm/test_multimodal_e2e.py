"""Multimodal requests through ``l0 serve`` and the client: a real vLLM
serving a tiny vision-language model built offline (SmolLM2's weights as the
language model, a random-weight vision tower: ``l0.engine.models.prepare_vision``),
with L0 in its decode loop, and the real openai and anthropic SDKs through a
fault proxy on loopback.

A break must resume without losing the image: the checkpoint's prompt ids
hold only the image's placeholder tokens, so the client regenerates (greedy)
or continues the text with the image still in the messages. Greedy
throughout; the two colours below give different answers, so an answer
resumed without its image would show.
"""
from __future__ import annotations

import asyncio
import base64
import io

import pytest

from faultproxy import Cut, FaultProxy
from services import free_port, settled_record

pytestmark = [pytest.mark.vllm]

ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048", "--enforce-eager",
        "--max-num-seqs", "4", "--seed", "0", "--limit-mm-per-prompt", '{"image": 1}']
MAX_TOKENS = 40
QUESTION = "Describe this picture in one sentence."


def png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), rgb).save(buf, "PNG")
    return buf.getvalue()


def chat_messages(rgb):
    url = "data:image/png;base64," + base64.b64encode(png(rgb)).decode()
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def anthropic_messages(rgb):
    return [{"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png(rgb)).decode()}}]}]


RED, BLUE = (200, 30, 30), (20, 40, 220)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from l0.engine.models import prepare_vision
    from l0.engine.server import Server

    model = str(prepare_vision())
    tmp = tmp_path_factory.mktemp("vision")
    s = Server(model, ARGS, env={"L0_ACTION": "stop"}, log_path=tmp / "server.log", port=free_port())
    s.start()
    proxy = FaultProxy(s.port).start()
    yield {"model": model, "server": s, "proxy": proxy}
    proxy.stop()
    s.stop()


def openai_run(url, model, messages, wrapped, **options):
    """(text, token ids, the wrapped client's session) of one greedy stream."""
    from openai import AsyncOpenAI

    import l0

    async def go():
        client = AsyncOpenAI(base_url=url + "/v1", api_key="test", max_retries=0)
        c = l0.wrap(client, **options) if wrapped else client
        stream = await c.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS,
                                                 temperature=0.0, stream=True,
                                                 extra_body=None if wrapped else {"return_token_ids": True})
        text, ids = "", []
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                ids += getattr(chunk.choices[0], "token_ids", None) or []
        await client.close()
        return text, ids, getattr(c, "last", None)
    return asyncio.run(asyncio.wait_for(go(), 300))


async def _no_sleep(s):
    pass


def test_an_image_request_resumes_with_its_image(server):
    """OpenAI SDK, an image part, cut mid-answer: L0 on the server keyed and
    checkpointed the request (its record holds the answer's ids), and the
    client regenerated it, image and all (not a continuation from the
    record's ids, which would lose the image): the same text and ids as
    an uninterrupted run; another image gives another answer."""
    import httpx

    model = server["model"]
    red = openai_run(server["server"].url, model, chat_messages(RED), wrapped=False)
    blue = openai_run(server["server"].url, model, chat_messages(BLUE), wrapped=False)
    assert len(red[1]) >= 12 and red[0] != blue[0]   # the model reads the image

    server["proxy"].inject(Cut(after_events=7))
    text, ids, session = openai_run(server["proxy"].url, model, chat_messages(RED), wrapped=True, sleep=_no_sleep)
    assert (text, ids) == red[:2]
    assert [e.mode for e in session.events if e.type == "attempt_start"] == ["fresh", "regenerate"]
    key = session.events[0].l0_key

    def read(k):
        r = httpx.get(f"{server['server'].url}/l0/checkpoints/{k}", timeout=5)
        return r.json() if r.status_code == 200 else None
    record = settled_record(read, key, ready=lambda r: r.get("finished"))
    assert record["output_ids"] == red[1]   # L0 saw every token of the image request in the decode loop


def test_an_anthropic_image_message_resumes_with_its_image(server):
    """The anthropic SDK on vLLM's /v1/messages, an image block, cut
    mid-answer: the text continues on the chat route with the image
    carried over (an image_url part), and ends as the uninterrupted answer."""
    import anthropic

    import l0

    model = server["model"]

    async def go(url, wrapped, messages):
        client = anthropic.AsyncAnthropic(base_url=url, api_key="test", max_retries=0)
        c = l0.wrap(client, sleep=_no_sleep) if wrapped else client
        stream = await c.messages.create(model=model, max_tokens=MAX_TOKENS, messages=messages, stream=True,
                                         extra_body={"temperature": 0.0})
        text = "".join([e.delta.text async for e in stream
                        if e.type == "content_block_delta" and e.delta.type == "text_delta"])
        await client.close()
        return text, getattr(c, "last", None)

    red, _ = asyncio.run(go(server["server"].url, False, anthropic_messages(RED)))
    blue, _ = asyncio.run(go(server["server"].url, False, anthropic_messages(BLUE)))
    assert red and red != blue
    server["proxy"].inject(Cut(after_events=7))
    text, session = asyncio.run(go(server["proxy"].url, True, anthropic_messages(RED)))
    assert text == red
    assert [e.mode for e in session.events if e.type == "attempt_start"] == ["fresh", "text"]


def test_the_status_directory_goes_with_the_server(server):
    """Last: ``l0 serve`` made a status directory owned by its pid (it execs
    vLLM, so the API server has that pid); a stop removes it."""
    import tempfile
    from pathlib import Path

    from l0.engine.health.status import OWNER, PREFIX

    s = server["server"]

    def owned():
        return [d for d in Path(tempfile.gettempdir()).glob(PREFIX + "*")
                if (d / OWNER).is_file() and (d / OWNER).read_text() == str(s.proc.pid)]
    assert len(owned()) == 1
    s.stop()
    assert s.proc.poll() is not None and owned() == []
