"""Real services for tests, started on loopback and stopped by the tests."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def load_bench(name: str):
    """``bench/<name>.py`` as a module (the benches are scripts, not a package;
    a test runs their short version through ``main``)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"l0_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settled_record(read, key, ready=lambda rec: rec.finished, timeout_s: float = 30.0):
    """The checkpoint record ``read(key)`` once ``ready(record)`` holds; when
    ``timeout_s`` runs out, the last one read (``None`` if none) so that the
    caller's assertion shows it. The engine writes records from a background
    thread, never in the decode loop, so a record can trail the stream the
    client already has (CI saw a finished stream whose record was not yet
    marked finished); a test reads it through this, not once."""
    deadline = time.monotonic() + timeout_s
    while True:
        rec = read(key)
        if (rec is not None and ready(rec)) or time.monotonic() > deadline:
            return rec
        time.sleep(0.1)


def make_tls_files(workdir: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    d = Path(workdir)
    f = {k: d / n for k, n in (("ca", "ca.crt"), ("ca_key", "ca.key"), ("cert", "server.crt"),
                               ("key", "server.key"), ("csr", "server.csr"), ("ext", "san.ext"))}
    f["ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f["ca_key"], "-out", f["ca"], "-days", "1",
        "-subj", "/CN=l0-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f["key"], "-out", f["csr"], "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", f["csr"], "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial", "-out",
        f["cert"], "-days", "1", "-extfile", f["ext"])
    return f


class RedisProcess:
    """A throw-away ``redis-server`` on 127.0.0.1. ``stop()`` (SIGTERM) or
    ``kill()`` (SIGKILL: a crash) and ``start()`` again on the same port model
    an outage. ``tls``: the files from :func:`make_tls_files`; the server then
    speaks TLS only. ``persist``: append-only file as production runs it
    (``appendonly yes``, ``appendfsync everysec``, under ``workdir``), so a
    restart keeps what was written; else no persistence at all. ``conf``: a
    ``redis.conf`` read first (the options here override it)."""

    def __init__(self, workdir: Path, password: str | None = None, tls: dict[str, Path] | None = None,
                 persist: bool = False, conf: Path | None = None) -> None:
        self.port = free_port()
        self.workdir = Path(workdir)
        self.password = password
        self.tls = tls
        self.persist = persist
        self.conf = conf          # a redis.conf read first; the options below override it
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls['ca']}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server missing: apt-get install redis-server")
        argv = [exe, *([str(self.conf)] if self.conf else []),
                "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--appendfsync", "everysec",
                "--dir", str(self.workdir)]
        if self.tls:
            argv[argv.index("--port") + 1] = "0"  # plain port off
            argv += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls["cert"]),
                     "--tls-key-file", str(self.tls["key"]), "--tls-ca-cert-file", str(self.tls["ca"]),
                     "--tls-auth-clients", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final flush (what a crash or an OOM kill does)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> "RedisProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
