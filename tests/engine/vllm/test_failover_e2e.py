"""Kill-and-resume against real processes: two `l0 serve` replicas of the
SmolLM2 model sharing a real redis-server, the failover client, SIGKILL.

Greedy decoding throughout, so "exact" is checkable: the final token ids
after any number of kills equal an uninterrupted run.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from l0.contract import ModelIdentity, Record
from l0.engine.checkpoint import open_store
from l0.client.failover import FailoverClient, RetryPolicy
from l0.client.resume import ResumeError
from services import RedisProcess, free_port, settled_record

pytestmark = [pytest.mark.vllm, pytest.mark.redis]

ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "2048",
        "--enforce-eager", "--max-num-seqs", "16", "--seed", "0"]
PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
MAX_TOKENS = 64
FAST = RetryPolicy(max_attempts=4, backoff_s=0.05, backoff_max_s=0.2, jitter_s=0.0,
                   inter_token_timeout_s=60.0)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    model = str(prepare_smollm2())
    tmp = tmp_path_factory.mktemp("fleet")
    redis = RedisProcess(tmp).start()
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": redis.url}
    r1 = Server(model, ARGS, env=dict(env, **_freezable(tmp / "freeze-r1")), log_path=tmp / "r1.log",
                port=free_port())
    r2 = Server(model, ARGS, env=env, log_path=tmp / "r2.log", port=free_port())
    r1.start()
    r2.start()
    yield {"model": model, "redis": redis, "r1": r1, "r2": r2, "tmp": tmp}
    r1.stop()
    r2.stop()
    redis.stop()


def _freezable(path):
    """The DEBUG hook that holds a victim's decode loop at a token count."""
    return {"L0_DEBUG_FAULTS": "1", "L0_DEBUG_FREEZE_FILE": str(path)}


def _collect(client, messages=PROMPT, kill_at=None, victim=None, **params):
    """Run one streamed chat to the end; SIGKILL ``victim`` once ``kill_at``
    tokens have arrived. The victim's engine holds at ``kill_at`` tokens until
    the kill (its DEBUG freeze file), so the kill lands there even when the
    client lags the engine (seen in CI: an engine already done at "one before
    the end"). Returns (token ids, text, outcome)."""
    params.setdefault("max_tokens", MAX_TOKENS)
    params.setdefault("temperature", 0.0)
    freeze = Path(victim.env["L0_DEBUG_FREEZE_FILE"]) if kill_at is not None else None
    if freeze is not None:
        freeze.write_text(str(kill_at))

    async def go():
        ids, text, killed = [], "", False
        async for d in client.stream_chat(messages, **params):
            ids += d.token_ids
            text += d.text
            if kill_at is not None and len(ids) >= kill_at and not killed:
                victim.kill()  # once: a restarted victim must live
                freeze.unlink()
                killed = True
        return ids, text, client.last
    try:
        return asyncio.run(go())
    finally:
        if freeze is not None:
            freeze.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def reference(fleet):
    client = FailoverClient([fleet["r2"].url], fleet["model"], policy=FAST)
    ids, text, out = _collect(client)
    assert len(ids) == MAX_TOKENS and out.finish_reason == "length" and out.attempts == 1
    return ids, text


# The two edges of a resume; a kill in the middle of a stream is test_wrap_e2e's (at token 24,
# through the SDK and l0.http): each kill here costs a restart of r1 (~40 s on the CI machine).
@pytest.mark.parametrize("kill_at", [3, MAX_TOKENS - 1], ids=["early", "one-before-end"])
def test_sigkill_mid_stream_resumes_exactly_on_the_other_replica(fleet, reference, kill_at):
    r1, r2 = fleet["r1"], fleet["r2"]
    if r1.proc is None or r1.proc.poll() is not None:
        r1.start()  # back from the previous kill
    events = []
    client = FailoverClient([r1.url, r2.url], fleet["model"], policy=FAST, on_event=events.append)
    ids, text, out = _collect(client, kill_at=kill_at, victim=r1)
    assert r1.proc.poll() is not None, "the replica was killed"
    assert ids == reference[0]            # token for token
    assert text == reference[1]           # nothing duplicated, nothing missing
    kinds = [e.kind for e in events]
    assert kinds[0] == "attempt" and "failure" in kinds and kinds[-1] == "complete"
    resume = next(e for e in events if e.kind == "resume")
    assert resume.replica == r2.url and resume.offset >= kill_at
    # The record is one record across both replicas, finished by replica 2.
    rec = settled_record(open_store(fleet["redis"].url).get, out.key)
    assert rec.output_ids == tuple(reference[0]) and rec.finished and rec.finish_reason == "length"


def test_sqlite_replica_killed_and_restarted_on_the_same_port(fleet, reference):
    from l0.engine.server import Server

    db = fleet["tmp"] / "ck.sqlite3"
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": f"sqlite://{db}", **_freezable(fleet["tmp"] / "freeze-solo")}
    solo = Server(fleet["model"], ARGS, env=env, log_path=fleet["tmp"] / "solo.log", port=free_port())
    solo.start()
    try:
        def restart(event):
            if event.kind == "failure" and solo.proc.poll() is not None:
                solo.start()  # same port, same SQLite file

        client = FailoverClient([solo.url], fleet["model"], policy=FAST, on_event=restart)
        ids, text, out = _collect(client, kill_at=40, victim=solo)
        assert ids == reference[0] and text == reference[1]
        assert [e.mode for e in out.events if e.kind == "attempt"] == ["fresh", "resume"]
        rec = settled_record(open_store(f"sqlite://{db}").get, out.key)
        assert rec.finished and rec.output_ids == tuple(reference[0])
    finally:
        solo.stop()


def test_store_outage_generation_continues_and_writes_resume(fleet, reference):
    redis, r2 = fleet["redis"], fleet["r2"]
    client = FailoverClient([r2.url], fleet["model"], policy=FAST)
    stopped = []

    def outage(n):
        if n >= 8 and not stopped:
            redis.stop()
            stopped.append(n)

    async def go():
        ids = []
        async for d in client.stream_chat(PROMPT, max_tokens=MAX_TOKENS, temperature=0.0):
            ids += d.token_ids
            outage(len(ids))
        return ids
    ids = asyncio.run(go())
    assert stopped and ids == reference[0]  # serving went on without the store
    redis.start()
    rec = settled_record(open_store(redis.url).get, client.last.key, timeout_s=60)
    assert rec is not None and rec.finished and rec.output_ids == tuple(reference[0])


def test_checkpoint_route_on_a_real_replica(fleet):
    import httpx
    r2 = fleet["r2"]
    assert httpx.get(f"{r2.url}/l0/checkpoints/never-written").status_code == 404
    r = httpx.get(f"{r2.url}/l0/checkpoints/bad%20key")
    assert r.status_code == 400 and "1-128 characters" in r.json()["error"]["message"]


def test_checkpoint_from_another_model_is_refused_and_nothing_is_lost(fleet):
    r2 = fleet["r2"]
    foreign = Record(key="foreign-1", model=ModelIdentity("some-other-model", "sha256:0"),
                     prompt_ids=(1, 2, 3), output_ids=(4, 5), sampling={"max_tokens": 64})
    open_store(fleet["redis"].url).put_many([foreign])
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the first attempt fails
    client = FailoverClient([dead, r2.url], fleet["model"], policy=FAST)
    with pytest.raises(ResumeError, match="written by model 'some-other-model'") as err:
        _collect(client, key="foreign-1")
    assert err.value.token_ids == [] and client.last.token_ids == []


def test_guided_json_is_regenerated_and_skips_what_was_delivered(fleet):
    r1, r2 = fleet["r1"], fleet["r2"]
    if r1.proc is None or r1.proc.poll() is not None:
        r1.start()
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    msgs = [{"role": "user", "content": "Give me a person as JSON with a name and an age."}]
    guided = {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    ref_ids, ref_text, _ = _collect(FailoverClient([r2.url], fleet["model"], policy=FAST), msgs, **guided)
    client = FailoverClient([r1.url, r2.url], fleet["model"], policy=FAST)
    ids, text, out = _collect(client, msgs, kill_at=min(6, len(ref_ids) - 1), victim=r1, **guided)
    assert ids == ref_ids and text == ref_text
    assert [e.mode for e in out.events if e.kind == "attempt"] == ["fresh", "regenerate"]


def test_guided_json_closed_by_l0_is_regenerated_exactly(fleet):
    """A JSON answer L0 closes (its loop fires under stop: close mode ends it
    with valid JSON) is regenerated on the next replica after a SIGKILL and
    comes out the same token for token, closed and valid."""
    import json

    import jsonschema

    r1, r2 = fleet["r1"], fleet["r2"]
    if r1.proc is None or r1.proc.poll() is not None:
        r1.start()
    schema = {"type": "object", "properties": {"planets": {"type": "array", "items": {
        "type": "object", "properties": {"index": {"type": "integer"}, "name": {"type": "string"}},
        "required": ["index", "name"]}}}, "required": ["planets"]}
    msgs = [{"role": "user", "content": "List the planets of the solar system as JSON with their index."}]
    guided = {"response_format": {"type": "json_schema", "json_schema": {"name": "planets", "schema": schema}},
              "max_tokens": 600}
    # The reference runs on r2 beside the stream (greedy: the same tokens in any batch).
    with ThreadPoolExecutor(1) as pool:
        ref_run = pool.submit(_collect, FailoverClient([r2.url], fleet["model"], policy=FAST), msgs, **guided)
        client = FailoverClient([r1.url, r2.url], fleet["model"], policy=FAST)
        ids, text, out = _collect(client, msgs, kill_at=100, victim=r1, **guided)
        ref_ids, ref_text, ref = ref_run.result()
    assert ref.finish_reason == "stop" and len(ref_ids) < 600
    jsonschema.validate(json.loads(ref_text), schema)
    assert ids == ref_ids and text == ref_text and out.finish_reason == "stop"
    assert [e.mode for e in out.events if e.kind == "attempt"] == ["fresh", "regenerate"]


def test_seeded_sampling_keeps_the_exact_prefix_and_loses_nothing(fleet):
    """What docs/checkpoints.md claims for seeded sampling: the tokens delivered before
    the kill are kept exactly, nothing is duplicated or missing, and the output
    runs to the same length; the continuation itself is a fresh sample."""
    r1, r2 = fleet["r1"], fleet["r2"]
    if r1.proc is None or r1.proc.poll() is not None:
        r1.start()
    sampled = {"temperature": 0.8, "seed": 7}
    ref_ids, _, _ = _collect(FailoverClient([r2.url], fleet["model"], policy=FAST), **sampled)
    client = FailoverClient([r1.url, r2.url], fleet["model"], policy=FAST)
    ids, text, out = _collect(client, kill_at=20, victim=r1, **sampled)
    resume = next(e for e in out.events if e.kind == "resume")
    assert ids[: resume.offset] == ref_ids[: resume.offset]   # same seed, same prefix, kept exactly
    assert out.finish_reason in ("length", "stop")
    assert len(ids) == MAX_TOKENS if out.finish_reason == "length" else len(ids) < MAX_TOKENS
    import httpx
    detok = httpx.post(f"{r2.url}/detokenize", json={"model": fleet["model"], "tokens": ids}).json()["prompt"]
    assert text == detok                                       # no text duplicated or missing
