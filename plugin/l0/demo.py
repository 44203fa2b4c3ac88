"""``l0 demo``: a real vLLM server on loopback stops a runaway loop.

Prepares SmolLM2-135M-Instruct (once), starts ``l0 serve``, streams a runaway
prompt and a normal prompt side by side (each with L0 stop and with L0 off for
comparison, greedy), prints where L0 stopped the loop and how many tokens it
saved, shows that the normal answer is untouched, and shuts the server down.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

RUNAWAY = "List the planets of the solar system."
NORMAL = "Count from 1 to 50."


def _say(msg: str) -> None:
    print(f"[l0 demo] {msg}", flush=True)


def main(argv=()) -> int:
    p = argparse.ArgumentParser(prog="l0 demo")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--runaway", default=RUNAWAY)
    p.add_argument("--normal", default=NORMAL)
    ns = p.parse_args(list(argv))

    from l0.models import prepare_smollm2
    from l0.server import Server
    from l0.stream import stream_chat

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

    with Server(model, args, env={"L0_ACTION": "stop"}, progress=_say) as srv:
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
    _say(f"server stopped ({elapsed:.0f} s of streaming)")

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
    ok = on.finish_reason == "stop" and len(on.token_ids) < len(off.token_ids) and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
