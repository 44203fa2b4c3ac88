"""The atomic event log: whole lines, torn lines sealed and skipped, replay
byte for byte, where two runs diverge, ``l0 replay``."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

import l0
from l0.client.eventlog import EventLog, diverge, read_log, replay_records, stream_text
from l0.client.retry import Retry


def chat_chunks(texts, ids=None, finish="stop"):
    from openai.types.chat import ChatCompletionChunk
    out = []
    for i, t in enumerate(texts):
        choice = {"index": 0, "delta": {"content": t}, "finish_reason": finish if i == len(texts) - 1 else None}
        if ids is not None:
            choice["token_ids"] = ids[i]
        out.append(ChatCompletionChunk.model_validate({"id": "c1", "object": "chat.completion.chunk",
                                                       "created": 1, "model": "m", "choices": [choice]}))
    return out


def record(path, chunks, fail_first=False):
    """Run chunks through l0.run with a log; returns (live chunks, events, stream id)."""
    events = []

    def factory(received: str):
        async def gen():
            for c in chunks:
                text = c.choices[0].delta.content
                if received and received.endswith(text):
                    continue
                yield c
                if fail_first and not received:
                    raise ConnectionResetError("cut")
        return gen()

    async def go():
        out = []
        async for c in l0.run(factory, log=path, retry=Retry(wait=lambda rs: 0.0), on_event=events.append):
            out.append(c)
        return out
    live = asyncio.run(go())
    return live, events, events[0].stream_id


def test_replay_is_byte_identical_with_its_events(tmp_path):
    path = tmp_path / "log.jsonl"
    live, events, sid = record(path, chat_chunks(["Hel", "lo", " world"], ids=[[1], [2], [3, 4]]), fail_first=True)
    assert "".join(c.choices[0].delta.content for c in live) == "Hello world"
    seen = []

    async def go():
        return [c async for c in l0.replay(path, sid, callbacks=seen.append)]
    again = asyncio.run(go())
    assert [c.model_dump_json() for c in again] == [c.model_dump_json() for c in live]
    assert [e.to_dict() for e in seen] == [e.to_dict() for e in events]
    assert stream_text(path, sid) == "Hello world"
    assert "resume" in [e.type for e in seen]


def test_every_line_is_whole_json_and_streams_interleave_by_line(tmp_path):
    path = tmp_path / "log.jsonl"
    for _ in range(3):
        record(path, chat_chunks(["a", "b"]))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    recs = [json.loads(x) for x in lines[:-1]]
    contents = read_log(path)
    assert contents.torn == 0 and len(contents.streams()) == 3
    for sid in contents.streams():
        assert [r["seq"] for r in contents.of(sid)] == list(range(len(contents.of(sid))))
    assert {r["kind"] for r in recs} == {"event", "chunk"}


def test_a_torn_last_line_is_ignored_and_sealed_on_the_next_write(tmp_path):
    path = tmp_path / "log.jsonl"
    live, events, sid = record(path, chat_chunks(["x", "y"]))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"v":1,"stream":"s-torn","seq":0,"ts":1,"kind":"chu')  # the crash
    contents = read_log(path)
    assert contents.torn == 1 and contents.streams() == [sid]
    live2, _, sid2 = record(path, chat_chunks(["z"]))  # appending seals the torn line first
    contents = read_log(path)
    assert contents.torn == 1 and contents.streams() == [sid, sid2]
    assert stream_text(path, sid2) == "z"


def test_diverge_finds_the_first_differing_token(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    record(a, chat_chunks(["one", " two", " three"], ids=[[1], [2], [3]]))
    record(b, chat_chunks(["one", " two", " four"], ids=[[1], [2], [4]]))
    d = diverge(a, b)
    assert (d.index, d.unit, d.a, d.b) == (2, "token", [3], [4])
    assert diverge(a, a) is None
    c = tmp_path / "c.jsonl"
    record(c, chat_chunks(["one", " two!"]))  # no ids: compared by character
    d = diverge(a, c)
    assert (d.index, d.unit) == (7, "char") and d.a.startswith(" three") and d.b == "!"


def test_bad_fsync_policy_and_unknown_stream(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        EventLog(tmp_path / "x.jsonl", fsync="sometimes")
    path = tmp_path / "log.jsonl"
    record(path, chat_chunks(["a"]))
    with pytest.raises(KeyError, match="no stream"):
        list(replay_records(path, "s-nope"))


def test_cli_replay_prints_the_text_and_lists_streams(tmp_path):
    path = tmp_path / "log.jsonl"
    _, _, sid = record(path, chat_chunks(["Hello", ", log"]))
    out = subprocess.run([sys.executable, "-m", "l0.cli", "replay", str(path), "--stream", sid],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Hello, log\n"
    out = subprocess.run([sys.executable, "-m", "l0.cli", "replay", str(path), "--list"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[0] == sid
    out = subprocess.run([sys.executable, "-m", "l0.cli", "replay", str(path), "--events"],
                         capture_output=True, text=True, timeout=60)
    assert [json.loads(x)["type"] for x in out.stdout.splitlines()] == ["session_start", "attempt_start",
                                                                        "first_token", "complete"]
