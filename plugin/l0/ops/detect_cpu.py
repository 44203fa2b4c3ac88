"""Fused CPU backend of the ``detect`` op: ``kernels/detect_cpu.c`` through ctypes.

Built on first use (never at import) with the host C compiler (``$CC``, else
``cc``) into ``~/.cache/l0/kernels/`` (``L0_CACHE`` to move it), keyed by the
source, the compiler and the CPU's flags so a shared home directory never
loads a library built for another CPU. Works in place on TorchDetector's CPU
tensors: one C call per step, no copies. ctypes releases the GIL for the call.

:func:`available` says whether a compiler works here; ``make_detector`` with
``backend="auto"`` on a CPU device uses this backend when it does and the
torch backend otherwise.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from l0.kernels import kernel_source
from l0.ops.detect import StepResult, TorchDetector

_SOURCE = "detect_cpu.c"
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11"]


def cache_dir() -> Path:
    return Path(os.environ.get("L0_CACHE", Path.home() / ".cache" / "l0")) / "kernels"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def _library() -> ctypes.CDLL:
    """Compile (once per source/compiler/CPU) and load the kernel.

    Raises ``RuntimeError`` with the compiler's message when it can't be built.
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("the cpu detect backend needs a C compiler (set CC or install gcc)")
    src = kernel_source(_SOURCE)
    key = hashlib.sha256("\0".join([src, cc, " ".join(_FLAGS), _cpu_flags(), platform.machine()])
                         .encode()).hexdigest()[:16]
    out = cache_dir() / f"detect_cpu-{key}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            c_file = Path(tmp) / _SOURCE
            c_file.write_text(src)
            so = Path(tmp) / out.name
            proc = subprocess.run([cc, *_FLAGS, "-o", str(so), str(c_file)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"building {_SOURCE} with {cc} failed:\n{proc.stderr.strip()}")
            os.replace(so, out)  # atomic: concurrent builders never load a half-written file
    lib = ctypes.CDLL(str(out))
    fn = lib.l0_detect_step_cpu
    P, I = ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [P, I] + [P] * 14 + [I, P, I, P, I] + [P] * 5 + [I, P, P, P] + [P, P, P, I]
    fn.restype = None
    return lib


@functools.cache
def available() -> bool:
    """True when the kernel builds and loads here (the build is cached)."""
    try:
        _library()
    except Exception:
        return False
    return True


def _contiguous(tensors) -> None:
    if not all(t.is_contiguous() for t in tensors):
        raise RuntimeError("the cpu detect kernel needs contiguous state tensors")


class CpuDetector(TorchDetector):
    backend = "cpu"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.device.type != "cpu":
            raise RuntimeError("the cpu detect backend needs CPU tensors; use cuda or torch on a GPU")
        self._fn = _library().l0_detect_step_cpu
        # The kernel walks an int32 ring (token ids < 2**31): see detect_cpu.c.
        self.ring = torch.zeros((self.num_slots, self.max_period), dtype=torch.int32)
        self._state = (self.ring,) + self._state[1:]
        n = self.num_slots
        self._kind = torch.zeros(n, dtype=torch.int32)
        self._period = torch.zeros(n, dtype=torch.int32)
        self._next = torch.zeros(n, dtype=torch.int64)
        # Every state tensor is contiguous and never reallocated (moves and
        # swaps write in place), so the pointers are taken once.
        tensors = (self.ring, self.pos, self.run, self.score, self.nlen, self.ncont, self.blank,
                   self.loop_need, self.near_need, self.thr, self.content_milli, self.max_blank,
                   self.active)
        _contiguous(tensors)
        self._ptrs = [t.data_ptr() for t in tensors]
        self._tabs = [self.content.data_ptr(), self.content.shape[0], self.blank_tab.data_ptr(),
                      self.blank_tab.shape[0], self.number.data_ptr(), self.number.shape[0]]
        echo = (self.erun, self.echo, self.elag, self.echo_need, self.echo_cfg)
        _contiguous(echo)
        self._tabs += [t.data_ptr() for t in echo]
        js = (self.jstate, self.jdepth, self.jnext)
        _contiguous(js)
        self._json = [t.data_ptr() for t in js] + [self.jvocab]

    def step(self, tokens: torch.Tensor) -> StepResult:
        n = tokens.shape[0]
        if n > self.num_slots:
            raise ValueError(f"{n} tokens for {self.num_slots} slots")
        x = tokens.to(dtype=torch.int64).contiguous()
        self._fn(x.data_ptr(), n, *self._ptrs, *self._tabs, self.max_period,
                 self._kind.data_ptr(), self._period.data_ptr(), self._next.data_ptr(), *self._json)
        # Views of reused buffers, as on the cuda backend: valid until the next step.
        return StepResult(self._kind[:n], self._period[:n], self._next[:n])
