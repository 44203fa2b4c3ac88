"""The client's memory over many streams: ``l0.wrap(AsyncOpenAI)`` with one
shared client (as an application runs it) against a stub SSE server on
loopback, rounds of streams four at a time, every fifth abandoned after two
chunks; the process's RSS after each round (after a full collection), and
how many objects only that collection freed (per stream: what a stream
leaves as reference cycles, held until the collector's next full pass). A
leak grows with the streams served; a warm-up (imports, pools, caches)
levels off.

    .venv/bin/python bench/bench_client_memory.py            # 10 rounds of 400 streams
    .venv/bin/python bench/bench_client_memory.py --rounds 3 --streams 100 --out /tmp/m.json

Prints each round and writes ``bench/results/bench_client_memory.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import write_result  # noqa: E402

WORDS = [f" w{i}" for i in range(24)]


class _Stub(BaseHTTPRequestHandler):
    """Streams WORDS as chat chunks, whatever is asked."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for n, w in enumerate(WORDS):
                last = n == len(WORDS) - 1
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": "stop" if last else None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass   # an abandoned stream


async def _one(client, abandon: bool) -> int:
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True)
    n = 0
    async for _ in stream:
        n += 1
        if abandon and n == 2:
            break
    await stream.close()
    return n


async def _run(ns) -> list[dict]:
    import psutil
    from openai import AsyncOpenAI

    import l0

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sdk = AsyncOpenAI(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", api_key="-", max_retries=0)
    client = l0.wrap(sdk)
    proc, rows, k = psutil.Process(), [], 0
    try:
        for r in range(ns.rounds):
            t0 = time.monotonic()
            for _ in range(ns.streams // 4):
                await asyncio.gather(*(_one(client, (k + j) % 5 == 0) for j in range(4)))
                k += 4
            # what only a full collection frees: streams left as reference cycles wait for it, and an
            # application's RSS climbs between its collections (the RSS below is read after it)
            cycles = gc.collect()
            rows.append({"round": r, "streams": k, "freed_by_full_collection": cycles,
                         "rss_mb": round(proc.memory_info().rss / 2 ** 20, 1),
                         "seconds": round(time.monotonic() - t0, 2)})
            print(rows[-1], flush=True)
    finally:
        await sdk.close()
        srv.shutdown()
        srv.server_close()
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--streams", type=int, default=400, help="streams per round")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_client_memory.json"))
    ns = ap.parse_args(argv)
    rows = asyncio.run(_run(ns))
    half = rows[len(rows) // 2:]
    doc = {"meta": {"host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": ns.rounds,
                    "streams_per_round": ns.streams, "abandoned": "every fifth, after two chunks"},
           "rounds": rows,
           # the second half of the run against its first round there: a leak keeps growing
           "rss_growth_second_half": round(half[-1]["rss_mb"] / half[0]["rss_mb"] - 1, 4) if half else None}
    doc["freed_by_full_collection_per_stream"] = round(
        sum(r["freed_by_full_collection"] for r in rows[1:]) / max(1, ns.streams * (len(rows) - 1)), 2)
    print(f"RSS {rows[0]['rss_mb']} -> {rows[-1]['rss_mb']} MB; second half {doc['rss_growth_second_half']:+.2%}; "
          f"{doc['freed_by_full_collection_per_stream']} objects a stream freed only by a full collection")
    write_result(doc, ns.out)
    return doc


if __name__ == "__main__":
    main()
