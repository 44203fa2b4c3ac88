"""`l0 serve` under tensor parallelism: the real engine (vLLM CPU build) with
``--tensor-parallel-size 3``, three worker processes (SmolLM2-135M's 9 query
and 3 KV heads split three ways: the only degree above 1 this model allows).

Every rank runs its own L0 processor on the same sampled tokens, so every rank
must reach the same decision at the same step (the stop lands cleanly, the
output before it is exactly L0 off's), and only rank 0 logs the intervention
and writes checkpoints.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from l0.client.stream import stream_chat
from services import settled_record

pytestmark = pytest.mark.vllm

PLUTO = "List the planets of the solar system."
MAX_TOKENS = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from l0.engine.models import prepare_smollm2
    from l0.engine.server import Server

    model = str(prepare_smollm2())
    log = tmp_path_factory.mktemp("tp") / "server.log"
    args = ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--max-model-len", "1024",
            "--enforce-eager", "--max-num-seqs", "4", "--seed", "0", "--tensor-parallel-size", "3"]
    # Three single-threaded workers pinned round-robin to this machine's cores
    # (unpinned, spinning OpenMP threads oversubscribe 2 cores ~10x slower).
    cpus = sorted(os.sched_getaffinity(0))
    env = {"L0_ACTION": "stop", "L0_CHECKPOINT_STORE": f"sqlite://{tmp_path_factory.mktemp('ck')}/ck.db",
           "VLLM_CPU_OMP_THREADS_BIND": "|".join(str(cpus[i % len(cpus)]) for i in range(3)),
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with Server(model, args, env=env, log_path=log) as srv:
        srv.model = model
        srv.log = log
        yield srv


def test_ranks_agree_and_only_rank0_logs(server):
    # Side by side, one batch (greedy: a request's tokens do not depend on its batch): the
    # stopped run costs no steps of its own.
    with ThreadPoolExecutor(2) as pool:
        off = pool.submit(stream_chat, server.url, server.model, PLUTO, MAX_TOKENS, {"l0_action": "off"})
        on = pool.submit(stream_chat, server.url, server.model, PLUTO, MAX_TOKENS,
                         {"l0_action": "stop", "l0_key": "tp-pluto"})
        off, on = off.result(), on.result()
    assert off.finish_reason == "length"
    assert on.finish_reason == "stop"
    n = len(on.token_ids)
    assert n < MAX_TOKENS
    assert on.token_ids[:-1] == off.token_ids[:n - 1]

    text = server.log.read_text()
    # Three ranks, each in its own worker process, each running its own processor ...
    started = [re.search(r"\(Worker\S* pid=(\d+)\).*l0: logits processor on tp rank (\d+):", line)
               for line in text.splitlines() if "l0: logits processor on tp rank" in line]
    assert all(started), started
    assert sorted(int(m.group(2)) for m in started) == [0, 1, 2]
    assert len({m.group(1) for m in started}) == 3
    # ... and one intervention line, from rank 0.
    events = [json.loads(line[line.index("{"):]) for line in text.splitlines()
              if '"event": "l0.intervention"' in line and '"tp-pluto"' in line]
    assert len(events) == 1, events
    assert events[0]["action"] == "stop" and events[0]["token_index"] == n - 1

    # The finished request's checkpoint (written by rank 0 alone) holds the stream.
    def read(key):
        r = httpx.get(f"{server.url}/l0/checkpoints/{key}", timeout=10)
        return r.json() if r.status_code == 200 else None
    rec = settled_record(read, "tp-pluto", ready=lambda rec: rec["finished"])
    assert rec is not None
    assert rec["output_ids"] == on.token_ids and rec["finished"] is True
