"""``l0 demo``: a real vLLM server on loopback stops a runaway loop, then a
replica is killed mid-stream and the stream resumes exactly on another one.

Prepares SmolLM2-135M-Instruct (once), starts ``l0 serve``, streams a runaway
prompt and a normal prompt side by side (each with L0 stop and with L0 off for
comparison, greedy), prints where L0 stopped the loop and how many tokens it
saved, shows that the normal answer is untouched. Then (unless
``--no-failover``) it starts a second replica sharing the first one's
checkpoint store (one SQLite file), streams a story through
``l0.wrap(l0.http(replica 1), fallbacks=[l0.http(replica 2)])``, SIGKILLs the first replica mid-stream, and shows the stream finishing
on the second one token-identical to an uninterrupted run. Servers are shut
down at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUNAWAY = "List the planets of the solar system."
NORMAL = "Count from 1 to 50."
STORY = "Write a short story about a robot who learns to paint."


def _say(msg: str) -> None:
    print(f"[l0 demo] {msg}", flush=True)


def main(argv=()) -> int:
    p = argparse.ArgumentParser(prog="l0 demo")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--runaway", default=RUNAWAY)
    p.add_argument("--normal", default=NORMAL)
    p.add_argument("--no-failover", action="store_true", help="skip the kill-and-resume part")
    p.add_argument("--kill-at", type=int, default=40, help="token at which replica 1 is killed")
    ns = p.parse_args(list(argv))

    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server
    from l0.client.stream import stream_chat

    _say("preparing the model (converted once, cached under ~/.cache/l0) ...")
    model = str(prepare_smollm2(progress=_say))
    _say("starting `l0 serve` on 127.0.0.1 (vLLM CPU engine, about 30 s) ...")
    args = ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--max-model-len", "2048",
            "--enforce-eager", "--seed", "0"]
    counts = {k: 0 for k in ("runaway/L0", "runaway/off", "normal/L0", "normal/off")}
    lock = threading.Lock()
    done = threading.Event()

    def counter(name):
        def on_delta(_text, ids):
            with lock:
                counts[name] += len(ids)
        return on_delta

    def ticker():
        while not done.wait(2.0):
            with lock:
                _say("tokens so far: " + "  ".join(f"{k}={v}" for k, v in counts.items()))

    store = f"sqlite://{Path(tempfile.mkdtemp(prefix='l0-demo-'))}/checkpoints.sqlite3"
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": store}
    srv = Server(model, args, env=env, progress=_say).start()
    try:
        _say(f"server ready at {srv.url}; streaming 4 requests side by side (greedy) ...")
        threading.Thread(target=ticker, daemon=True).start()
        jobs = {"runaway/L0": (ns.runaway, "stop"), "runaway/off": (ns.runaway, "off"),
                "normal/L0": (ns.normal, "stop"), "normal/off": (ns.normal, "off")}
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            futs = {k: pool.submit(stream_chat, srv.url, model, prompt, ns.max_tokens,
                                   {"l0_action": act, "l0_key": "demo-" + k.replace("/", "-")}, counter(k))
                    for k, (prompt, act) in jobs.items()}
            res = {k: f.result() for k, f in futs.items()}
        done.set()
        elapsed = time.monotonic() - t0
        _say(f"streaming done ({elapsed:.0f} s)")
        ok_loop = _report_loop(ns, res)
        ok_failover = True if ns.no_failover else _failover(ns, model, args, env, srv)
    finally:
        srv.stop()
    _say("servers stopped")
    return 0 if ok_loop and ok_failover else 1


def _report_loop(ns, res) -> bool:
    on, off = res["runaway/L0"], res["runaway/off"]
    print()
    print(f"== runaway prompt: {ns.runaway!r}")
    print(f"   without L0: {len(off.token_ids)} tokens, finish_reason={off.finish_reason}")
    print(f"   with L0:    {len(on.token_ids)} tokens, finish_reason={on.finish_reason}")
    tail = on.text.rstrip().splitlines()[-3:]
    print("   L0 stopped it after: " + " / ".join(tail))
    print(f"   tokens saved: {len(off.token_ids) - len(on.token_ids)}")
    same = res["normal/L0"].token_ids == res["normal/off"].token_ids
    print(f"\n== normal prompt: {ns.normal!r}")
    print(f"   {len(res['normal/L0'].token_ids)} tokens, finish_reason={res['normal/L0'].finish_reason}, "
          f"identical to L0 off: {same}")
    print("   " + res["normal/L0"].text[:120].replace("\n", " / ") + " ...")
    return on.finish_reason == "stop" and len(on.token_ids) < len(off.token_ids) and same


def _failover(ns, model, args, env, first) -> bool:
    import l0
    from l0.client import events as ev
    from l0.client.chunks import parts
    from l0.engine.server import Server

    print()
    _say("starting a second replica on the same checkpoint store ...")
    second = Server(model, args, env=env, progress=_say).start()
    try:
        msgs = [{"role": "user", "content": STORY}]
        retry = l0.Retry(max_retries=0)   # a dead replica: straight to the next one

        async def run(client, kill_at=None):
            ids, text = [], ""
            stream = await client.chat.completions.create(model=model, messages=msgs, max_tokens=96,
                                                          temperature=0.0, stream=True)
            async for chunk in stream:
                p = parts(chunk)
                ids += list(p.token_ids or ())
                text += p.text
                if kill_at is not None and len(ids) >= kill_at and first.proc.poll() is None:
                    _say(f"token {len(ids)} received: SIGKILL to replica 1 ({first.url})")
                    first.kill()
            return ids, text

        _say("uninterrupted reference run on replica 2 ...")
        ref_ids, ref_text = asyncio.run(run(l0.wrap(l0.http(second.url), retry=retry)))

        def show(e):
            if isinstance(e, (ev.AttemptStart, ev.Failure, ev.FallbackStart, ev.Resume, ev.Complete)):
                detail = {k: v for k, v in e.__dict__.items() if k not in ("stream_id", "ts") and v not in (None, "")}
                _say(f"  event {e.type:<13} {detail}")

        _say(f"streaming through l0.wrap(l0.http(replica 1), fallbacks=[l0.http(replica 2)]); "
             f"kill at token {ns.kill_at} ...")
        client = l0.wrap(l0.http(first.url), fallbacks=[l0.http(second.url)], retry=retry, on_event=show)
        ids, text = asyncio.run(run(client, ns.kill_at))
    finally:
        second.stop()
    exact = ids == ref_ids and text == ref_text
    print(f"\n== failover: {STORY!r}")
    print(f"   replica 1 killed at token {ns.kill_at}; resumed on replica 2 from its checkpoint")
    print(f"   {len(ids)} tokens, identical to the uninterrupted run: {exact}")
    print("   " + text[:160].replace("\n", " / ") + " ...")
    return exact


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
