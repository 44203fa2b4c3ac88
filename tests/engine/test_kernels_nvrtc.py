"""Every ``kernels/*.cu`` compiles with NVRTC the way CuPy compiles it on a GPU
(``-std=c++17``, a virtual architecture, no host headers): a GPU machine's
minutes are never lost to a kernel that only nvcc can build (the first H100
run would have been: ``#include <climits>`` is not there under NVRTC).
Marker ``nvrtc``: NVRTC from the ``nvidia-cuda-nvrtc`` wheel (test extra)."""
from __future__ import annotations

import ctypes
import glob
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.nvrtc

KERNELS = sorted((Path(__file__).resolve().parents[2] / "kernels").glob("*.cu"))


def nvrtc_library() -> str | None:
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(glob.glob(f"{root}/cu*/lib/libnvrtc.so*")) + sorted(glob.glob(f"{root}/cuda_nvrtc/lib/libnvrtc.so*"))
        found = [f for f in found if "builtins" not in f]
        if found:
            return found[0]
    return None


def compile_nvrtc(source: str, name: str, arch: str) -> tuple[int, str]:
    lib = ctypes.CDLL(nvrtc_library())
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
    assert rc == 0, f"nvrtcCreateProgram: {rc}"
    opts = [b"-std=c++17", f"--gpu-architecture={arch}".encode()]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace")


def test_kernels_exist():
    assert {k.name for k in KERNELS} >= {"detect.cu", "act.cu"}


@pytest.mark.parametrize("arch", ["compute_90", "compute_100", "compute_120"])
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda p: p.name)
def test_kernel_compiles_under_nvrtc(kernel, arch):
    rc, log = compile_nvrtc(kernel.read_text(), kernel.name, arch)
    assert rc == 0, log


def test_a_host_header_fails_under_nvrtc():
    """The check is not vacuous: what broke the first GPU run fails here."""
    rc, log = compile_nvrtc("#include <climits>\nextern \"C\" __global__ void k() {}\n", "bad.cu", "compute_90")
    assert rc != 0 and "climits" in log
