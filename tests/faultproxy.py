"""A fault-injecting HTTP/1.1 proxy on loopback, for the client tests.

One request per client connection: the proxy reads the request head and
body, forwards them upstream with ``Connection: close`` and pipes the answer
back, so every request meets its own fault. Faults are queued and consumed
in order by completion requests only (``POST /v1/chat/completions``,
``/v1/completions``, ``/v1/messages``, ``/v1/responses``); other requests (probes, checkpoint fetches,
``/detokenize``) pass untouched.

Faults:

* ``Cut(after_events=N)``: forward the answer up to the end of its N-th SSE
  event, then close: the client sees an incomplete chunked body.
  ``Cut(after_bytes=N)``: the same after N bytes of the body (mid-event,
  mid-UTF-8 even). ``Cut(before=REGEX)``: before the first event the regex
  finds (a lagging server puts two tokens in one event, so a count of
  events does not say where an answer ends).
* ``Stall(after_events=N, seconds=T)``: after N events, forward nothing for T
  seconds (then go on); a client that hangs up during the stall makes the
  proxy drop its upstream connection at once (the server sees the
  disconnect, as behind a real proxy).
* ``Status(code, headers)``: answer ``code`` with a JSON error body without
  asking upstream (429/503 with ``Retry-After``, 401, ...).
* ``Reset()``: reset the connection before any byte of the answer.
* ``Watch()``: no fault: forward the whole answer, and append the number of
  SSE events it held to ``watched`` (what a client's chunk count is checked
  against: vLLM may put two tokens in one event when its server lags).

``cut_now()`` drops every completion stream in flight at once (a chaos run's
"connection cut").
"""
from __future__ import annotations

import asyncio
import collections
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

COMPLETION_PATHS = (b"/v1/chat/completions", b"/v1/completions", b"/v1/messages", b"/v1/responses")


@dataclass
class Cut:
    after_events: int = 0
    after_bytes: int | None = None   # instead of events: cut after this many body bytes
    before: bytes | None = None      # or: cut before the first event this regex finds


@dataclass
class Watch:
    after_events: float = float("inf")   # (forwarded event by event, never faulted)


@dataclass
class Stall:
    after_events: int
    seconds: float


@dataclass
class Status:
    code: int
    headers: dict = field(default_factory=dict)


@dataclass
class Reset:
    pass


REASONS = {400: "Bad Request", 401: "Unauthorized", 408: "Request Timeout", 409: "Conflict",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: list = []
        # "METHOD path -> fault" per request: the last 10 000 (a soak's proxy lives for hours)
        self.seen: collections.deque[str] = collections.deque(maxlen=10_000)
        self.live: dict = {}               # completion answers being piped: client writer -> upstream writer
        self.watched: list[int] = []       # SSE events of each answer a Watch() forwarded, in order
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        """Cancel every connection handler, then stop and close the loop: no
        coroutine is left for the garbage collector to finalize later (a
        finalizer running inside another thread's ``compile`` trips a
        CPython 3.11 bug: "AST constructor recursion depth mismatch")."""
        async def shutdown():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def cut_now(self) -> int:
        """Abort every completion stream being piped now, both ways, as a
        network fault between client and server does: the server sees its
        connection drop at once and aborts the request, even one that has
        sent nothing yet (cut on the client side only, a request still
        waiting for its first token ran on, unseen, until it sent one:
        ghost load in the chaos bench). Returns how many."""
        async def cut():
            pairs = list(self.live.items())
            for w, up_w in pairs:
                w.transport.abort()
                up_w.transport.abort()
            return len(pairs)
        return asyncio.run_coroutine_threadsafe(cut(), self.loop).result(10)

    def inject(self, *faults) -> None:
        self.faults.extend(faults)

    def clear(self) -> None:
        self.faults.clear()
        self.seen.clear()
        self.watched.clear()

    def wait_watched(self, n: int = 1, timeout_s: float = 10.0) -> list[int]:
        """``watched`` once it holds ``n`` answers (polled: the proxy counts an
        answer when its upstream ends, which a client that stops reading at
        ``[DONE]`` may not wait for); as it is after ``timeout_s`` otherwise."""
        deadline = time.monotonic() + timeout_s
        while len(self.watched) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.watched)

    # -- the server -----------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.split(b"\r\n")
        method, path = lines[0].split(b" ")[:2]
        length = 0
        kept = [lines[0]]
        for line in lines[1:]:
            if not line:
                continue
            name = line.split(b":", 1)[0].strip().lower()
            if name == b"content-length":
                length = int(line.split(b":", 1)[1])
            if name in (b"connection", b"keep-alive"):
                continue
            kept.append(line)
        kept.append(b"Connection: close")
        body = await reader.readexactly(length) if length else b""
        fault = None
        if method == b"POST" and path.split(b"?")[0] in COMPLETION_PATHS and self.faults:
            fault = self.faults.pop(0)
        self.seen.append(f"{method.decode()} {path.decode()} -> {type(fault).__name__ if fault else 'pass'}")
        try:
            if isinstance(fault, Reset):
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if isinstance(fault, Status):
                payload = json.dumps({"error": {"message": f"injected {fault.code}", "type": "injected",
                                                "code": fault.code}}).encode()
                hdrs = {"content-type": "application/json", "content-length": str(len(payload)),
                        "connection": "close", **fault.headers}
                out = f"HTTP/1.1 {fault.code} {REASONS.get(fault.code, 'Error')}\r\n".encode()
                out += b"".join(f"{k}: {v}\r\n".encode() for k, v in hdrs.items()) + b"\r\n" + payload
                writer.write(out)
                await writer.drain()
                writer.close()
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_w.write(b"\r\n".join(kept) + b"\r\n\r\n" + body)
            await up_w.drain()
            completion = method == b"POST" and path.split(b"?")[0] in COMPLETION_PATHS
            if completion:
                self.live[writer] = up_w
            try:
                await self._pipe(up_r, writer, fault, reader)
            finally:
                self.live.pop(writer, None)
                up_w.close()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        finally:
            if not writer.is_closing():
                writer.close()

    async def _pipe(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter, fault,
                    client: asyncio.StreamReader | None = None) -> None:
        events = 0
        headers_done = False
        pending = b""
        while True:
            data = await up.read(65536)
            if not data or writer.is_closing():  # upstream done, or the client side was cut
                if isinstance(fault, Watch):
                    self.watched.append(events)
                    if pending and not writer.is_closing():
                        writer.write(pending)  # the chunked body's end
                        await writer.drain()
                return
            if fault is None:
                writer.write(data)
                await writer.drain()
                continue
            pending += data
            out = b""
            if not headers_done:
                i = pending.find(b"\r\n\r\n")
                if i < 0:
                    continue
                out, pending = pending[:i + 4], pending[i + 4:]
                headers_done = True
            if isinstance(fault, Cut) and fault.after_bytes is not None:
                room = fault.after_bytes - events  # (events counts body bytes here)
                if len(pending) >= room:
                    writer.write(out + pending[:room])
                    await writer.drain()
                    writer.close()
                    return
                events += len(pending)
                out, pending = out + pending, b""
                writer.write(out)
                await writer.drain()
                continue
            # forward event by event so the fault lands on an event boundary
            while True:
                j = pending.find(b"\n\n")
                if j < 0:
                    break
                if isinstance(fault, Cut) and fault.before is not None:
                    if re.search(fault.before, pending[:j + 2]):
                        writer.write(out)
                        await writer.drain()
                        writer.close()
                        return
                    out, pending = out + pending[:j + 2], pending[j + 2:]
                    continue
                out, pending = out + pending[:j + 2], pending[j + 2:]
                events += 1
                if events >= fault.after_events:
                    writer.write(out)
                    await writer.drain()
                    out = b""
                    if isinstance(fault, Cut):
                        writer.close()  # FIN mid-body: an incomplete chunked read
                        return
                    if await _gone(client, fault.seconds):
                        return  # the client left during the stall: drop upstream too, as a real proxy does
                    fault = None
                    writer.write(pending)
                    pending = b""
                    break
            if out:
                writer.write(out)
                await writer.drain()


async def _gone(client: asyncio.StreamReader | None, seconds: float) -> bool:
    """Wait ``seconds``; True as soon as the client closes its side."""
    if client is None:
        await asyncio.sleep(seconds)
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(client.read(4096), left)
        except asyncio.TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True
        if not data:
            return True
    return False
