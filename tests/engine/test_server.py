"""``l0.engine.server.Server`` without starting one: the core each server's
model runs on under vLLM's CPU build (vLLM alone puts every server on core 0)."""
from __future__ import annotations

import os

import pytest

from l0.engine.server import Server

BIND = "VLLM_CPU_OMP_THREADS_BIND"


@pytest.fixture()
def two_cores(monkeypatch):
    monkeypatch.delenv(BIND, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(Server, "_started", 0)


def test_servers_take_the_cores_in_turn(two_cores):
    servers = [Server("model") for _ in range(3)]
    assert [s.env[BIND] for s in servers] == ["0", "1", "0"]
    assert BIND not in os.environ          # the test process's own environment is left alone


@pytest.mark.parametrize("args", [["--tensor-parallel-size", "3"], ["--tensor-parallel-size=2"], ["-tp", "2"],
                                  ["--pipeline-parallel-size", "2"]])
def test_parallel_servers_are_left_to_vllm(two_cores, args):
    assert BIND not in Server("model", ["--dtype", "float32", *args]).env
    assert Server("model").env[BIND] == "0"   # and take no core from the next server


def test_a_binding_the_caller_names_is_kept(two_cores, monkeypatch):
    assert Server("model", env={BIND: "0|1"}).env[BIND] == "0|1"
    monkeypatch.setenv(BIND, "1")
    assert Server("model").env[BIND] == "1"
    assert Server._started == 0
