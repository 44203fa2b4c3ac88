"""Starting a real ``tritonserver`` on loopback (tests, benchmarks, the demo).

Uses the binary, the Python backend and its stubs bundled in the
``nvidia-pytriton`` wheel (tritonserver 2.51 for Python 3.11), so no container
or NGC download is needed. On a machine with Triton installed the same model
repository runs under the system ``tritonserver`` unchanged.

Contract: :func:`find_bundle` raises ``RuntimeError`` naming what to install;
:class:`TritonServer` starts the server in explicit model-control mode with
every model of the repository loaded, waits until it is ready (or raises with
the log's tail), and stops it with its whole process group.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("L0_CACHE", Path.home() / ".cache" / "l0"))


@dataclass(frozen=True)
class Bundle:
    tritonserver: Path
    backend_dir: Path      # holds python/ (libtriton_python.so, utils, stub)
    lib_path: str          # LD_LIBRARY_PATH for the binary and the stub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bundle() -> Bundle:
    """The tritonserver binary and a Python-backend directory for this
    interpreter, assembled once under ``~/.cache/l0/triton-backends``."""
    # Located, not imported: installed with --no-deps, pytriton's own Python
    # API lacks its dependencies; only the files it bundles are used.
    import importlib.util
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tritonserver missing: pip install --no-deps nvidia-pytriton "
                           "(bundles tritonserver 2.51 and the Python backend)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    binary = root / "bin" / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    backend = root / "backends" / "python"
    for p in (binary, stub, backend / "libtriton_python.so"):
        if not p.exists():
            raise RuntimeError(f"nvidia-pytriton is incomplete: {p} missing (Python {pyver} stubs needed)")
    dest = CACHE / "triton-backends" / pyver / "python"
    dest.mkdir(parents=True, exist_ok=True)
    for src in (backend / "libtriton_python.so", backend / "triton_python_backend_utils.py", stub):
        target = dest / src.name
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            shutil.copy2(src, target)
    libs = [str(pkg.parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and glob.glob(os.path.join(libdir, "libpython3*.so*")):
        libs.append(libdir)
    return Bundle(binary, dest.parent, ":".join(libs))


def default_python_env() -> Path:
    """The environment the Python backend runs models in: ``L0_TRITON_PYTHON``,
    else ``.venv-triton`` next to this checkout (``make triton`` builds it:
    numpy < 2, because the stubs bundled with tritonserver 2.51 are built
    against numpy 1 — with numpy 2 they exchange corrupted tensors), else the
    current interpreter's environment."""
    if os.environ.get("L0_TRITON_PYTHON"):
        return Path(os.environ["L0_TRITON_PYTHON"])
    local = Path(__file__).resolve().parents[4] / ".venv-triton"
    if (local / "bin" / "python").exists():
        return local
    return Path(sys.prefix)


class TritonServer:
    """``with TritonServer(repo) as ts: ts.http_url, ts.grpc_url``."""

    def __init__(self, repo: str | os.PathLike, log_path: str | os.PathLike | None = None,
                 env: dict | None = None, startup_timeout: float = 120.0,
                 python_env: str | os.PathLike | None = None) -> None:
        self.repo = Path(repo)
        self.python_env = Path(python_env) if python_env else default_python_env()
        self.log_path = Path(log_path) if log_path else None
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.http_port, self.grpc_port, self.metrics_port = _free_port(), _free_port(), _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def argv(self, bundle: Bundle) -> list[str]:
        return [str(bundle.tritonserver), f"--model-repository={self.repo}",
                f"--backend-directory={bundle.backend_dir}",
                "--model-control-mode=explicit", "--load-model=*",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--log-verbose=0", "--exit-timeout-secs=5"]

    def env(self, bundle: Bundle) -> dict:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = bundle.lib_path + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH")
                                                    else "")
        # The stub runs Python models in the environment whose python is first on PATH.
        env["PATH"] = str(self.python_env / "bin") + os.pathsep + env.get("PATH", "")
        env.update(self.extra_env)
        return env

    def start(self) -> "TritonServer":
        bundle = find_bundle()
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv(bundle), env=self.env(bundle), stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode} during start-up: "
                                   f"{self.log_tail()}")
            try:
                if httpx.get(self.http_url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {self.startup_timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-n:]
        return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        # Stubs stuck in a native call (a hung BLS iterator) outlive the server:
        # nothing of the process group may survive a stop.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
