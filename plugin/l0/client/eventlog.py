"""The atomic event log: every event and every delivered chunk of a client
stream as one JSON line, and its replay.

Writing: the file is opened ``O_APPEND``; each record is encoded whole and
handed to the kernel in one ``os.write`` (looped only if the kernel takes
less), so concurrent streams never interleave within a line and a crash of
the process loses nothing already written. A crash of the machine can tear
the last line: a torn line is sealed with a newline the next time the file
is opened for writing, and skipped (and counted) on read. ``fsync``:
``"end"`` (default) syncs when a stream ends, ``"always"`` after every
record, ``"never"`` leaves it to the OS.

Line format (version 1)::

    {"v":1,"stream":ID,"seq":N,"ts":T,"kind":"event","event":{"type":...}}
    {"v":1,"stream":ID,"seq":N,"ts":T,"kind":"chunk","chunk":{...}}

``replay`` re-emits a stream's chunks (SDK objects when openai is installed)
and fires the callbacks for its events, at recorded speed or at once.
``diverge`` compares two recorded streams token by token (characters where
no token ids were recorded).
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from l0.client.chunks import as_dict, parts, rebuild
from l0.client.events import Event, event_from_dict

VERSION = 1
FSYNC = ("end", "always", "never")


class EventLog:
    """Append-only JSONL log shared by all streams of a wrapped client."""

    def __init__(self, path: str | os.PathLike, fsync: str = "end") -> None:
        if fsync not in FSYNC:
            raise ValueError(f"l0: log fsync must be one of {FSYNC}, not {fsync!r}")
        self.path = Path(path)
        self.fsync = fsync
        self._fd: int | None = None
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()  # seq counters only; writes are single syscalls

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        _write_all(fd, b"\n")  # seal a torn last line
            self._fd = fd
        return self._fd

    def _next(self, stream: str) -> int:
        with self._lock:
            n = self._seq.get(stream, 0)
            self._seq[stream] = n + 1
            return n

    def event(self, event: Event) -> None:
        self._append(event.stream_id, event.ts, "event", {"event": event.to_dict()})

    def chunk(self, stream: str, ts: float, chunk: Any) -> None:
        self._append(stream, ts, "chunk", {"chunk": as_dict(chunk)})

    def _append(self, stream: str, ts: float, kind: str, body: dict) -> None:
        rec = {"v": VERSION, "stream": stream, "seq": self._next(stream), "ts": ts, "kind": kind, **body}
        line = (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        fd = self._open()
        _write_all(fd, line)
        if self.fsync == "always":
            os.fsync(fd)

    def end_stream(self, stream: str) -> None:
        if self._fd is not None and self.fsync == "end":
            os.fsync(self._fd)
        with self._lock:
            self._seq.pop(stream, None)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass
class LogContents:
    records: list[dict] = field(default_factory=list)
    torn: int = 0          # lines skipped: cut short or not JSON

    def streams(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r["stream"], None)
        return list(seen)

    def of(self, stream: str) -> list[dict]:
        return sorted((r for r in self.records if r["stream"] == stream), key=lambda r: r["seq"])


def read_log(path: str | os.PathLike) -> LogContents:
    """Every whole record; torn or foreign lines are counted in ``torn``."""
    out = LogContents()
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:  # the last line has no newline: torn
        lines.pop()
        out.torn += 1
    for raw in lines:
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not (isinstance(rec, dict) and rec.get("v") == VERSION and "stream" in rec and "seq" in rec
                    and rec.get("kind") in ("event", "chunk")):
                raise ValueError
        except ValueError:
            out.torn += 1
            continue
        out.records.append(rec)
    return out


def _pick(contents: LogContents, stream: str | None) -> str:
    ids = contents.streams()
    if stream is None:
        if not ids:
            raise KeyError("l0: the log holds no stream")
        return ids[-1]
    if stream not in ids:
        raise KeyError(f"l0: no stream {stream!r} in the log (it has {len(ids)})")
    return stream


def replay_records(path: str | os.PathLike, stream: str | None = None) -> Iterator[tuple[dict, Any]]:
    """(record, chunk object or Event) for each record of ``stream`` (default:
    the last stream in the log), in order."""
    contents = read_log(path)
    sid = _pick(contents, stream)
    for rec in contents.of(sid):
        if rec["kind"] == "event":
            try:
                yield rec, event_from_dict(rec["event"])
            except (KeyError, TypeError):
                continue
        else:
            yield rec, rebuild(rec["chunk"])


async def replay(path: str | os.PathLike, stream: str | None = None, *, speed: float = 0.0,
                 callbacks: Callable[[Event], Any] | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> AsyncIterator[Any]:
    """Re-emit a recorded stream: its chunks (the same JSON, as SDK objects
    when openai is installed) and, to ``callbacks``, its events. ``speed``:
    0 at once, 1 as recorded, 2 twice as fast."""
    last_ts = None
    for rec, item in replay_records(path, stream):
        if speed > 0 and last_ts is not None and rec["ts"] > last_ts:
            await sleep((rec["ts"] - last_ts) / speed)
        last_ts = rec["ts"]
        if isinstance(item, Event):
            if callbacks is not None:
                callbacks(item)
        else:
            yield item


def stream_text(path: str | os.PathLike, stream: str | None = None) -> str:
    return "".join(parts(item).text for rec, item in replay_records(path, stream) if rec["kind"] == "chunk")


@dataclass(frozen=True)
class Divergence:
    index: int            # first differing position
    unit: str             # "token" or "char"
    a: list | str         # up to 8 units of each from there
    b: list | str


def _units(path, stream) -> tuple[str, list | str]:
    ids: list[int] = []
    text = ""
    have_ids = True
    for rec, item in replay_records(path, stream):
        if rec["kind"] != "chunk":
            continue
        p = parts(item)
        text += p.text
        if p.token_ids is None:
            have_ids = have_ids and not p.text
        else:
            ids += p.token_ids
    return ("token", ids) if have_ids and ids else ("char", text)


def diverge(a_path, b_path=None, a_stream: str | None = None, b_stream: str | None = None) -> Divergence | None:
    """Where two recorded streams part (None: identical). Compares token ids
    when both recorded them, else characters."""
    ua, xa = _units(a_path, a_stream)
    ub, xb = _units(b_path if b_path is not None else a_path, b_stream)
    if ua != ub:
        ua = ub = "char"
        xa = stream_text(a_path, a_stream)
        xb = stream_text(b_path if b_path is not None else a_path, b_stream)
    n = min(len(xa), len(xb))
    for i in range(n):
        if xa[i] != xb[i]:
            return Divergence(i, ua, xa[i:i + 8], xb[i:i + 8])
    if len(xa) == len(xb):
        return None
    return Divergence(n, ua, xa[n:n + 8], xb[n:n + 8])
