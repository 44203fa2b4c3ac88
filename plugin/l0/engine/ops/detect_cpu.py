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

from l0.engine.kernels import kernel_source
from l0.engine.config import DetectorParams
from l0.engine.ops.detect import StepResult, TorchDetector, thresholds

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
    fn.argtypes = [P, P, I, P, P, P]
    fn.restype = I
    return lib


_P, _I = ctypes.c_void_p, ctypes.c_int


class _Args(ctypes.Structure):
    """``l0_detect_args`` in detect_cpu.c, field for field."""

    _fields_ = [(name, _P) for name in ("ring", "pos", "run", "score", "nlen", "ncont", "blank", "loop_need",
                                         "near_need", "thr", "content_milli", "max_blank", "active",
                                         "content_tab")] + [
        ("content_n", _I), ("blank_tab", _P), ("blank_n", _I), ("number_tab", _P), ("number_n", _I),
        ("erun", _P), ("echo", _P), ("elag", _P), ("echo_need", _P), ("echo_cfg", _P), ("P", _I),
        ("out_kind", _P), ("out_period", _P), ("out_next", _P), ("jstate", _P), ("jdepth", _P), ("jnext", _P),
        ("jn", _I), ("quiet_unseen", _P)]


@functools.cache
def available() -> bool:
    """True when the kernel builds and loads here (the build is cached)."""
    try:
        _library()
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _quiet(params: DetectorParams, expected_items: int, max_period: int) -> int:
    """1 when a period not seen yet stays all-zero and fires nothing: its
    counters start at zero, it never matches (the kernel's ``valid`` is 0),
    so run, echo run and near length stay 0 while the near score falls below
    zero every step (threshold > 0); a detection would then need a threshold
    <= 0. Then the kernel skips those periods, equal to walking them."""
    need, knobs = thresholds(params, expected_items, max_period)
    return int(int(knobs[4]) > 0 and int(need.min()) >= 1)


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
        # Per slot: 1 when the periods it has not seen yet (t < p) may be
        # skipped — they stay all-zero and fire nothing (see _quiet). 0
        # (after clear) walks them like the other backends do.
        self.quiet_unseen = torch.zeros(self.num_slots, dtype=torch.int32)
        self._state = (self.ring,) + self._state[1:] + (self.quiet_unseen,)
        n = self.num_slots
        # The step's outcome per slot (read through result(), or by address).
        self.out_kind = torch.zeros(n, dtype=torch.int32)
        self.out_period = torch.zeros(n, dtype=torch.int32)
        self.out_next = torch.zeros(n, dtype=torch.int64)
        # Every state tensor is contiguous and never reallocated (moves and
        # swaps write in place), so the pointers are taken once, into the
        # kernel's argument struct.
        state = (self.ring, self.pos, self.run, self.score, self.nlen, self.ncont, self.blank, self.loop_need,
                 self.near_need, self.thr, self.content_milli, self.max_blank, self.active, self.erun, self.echo,
                 self.elag, self.echo_need, self.echo_cfg, self.jstate, self.jdepth, self.jnext,
                 self.quiet_unseen, self.out_kind, self.out_period, self.out_next)
        _contiguous(state)
        ptr = {name: t.data_ptr() for name, t in zip(
            ("ring", "pos", "run", "score", "nlen", "ncont", "blank", "loop_need", "near_need", "thr",
             "content_milli", "max_blank", "active", "erun", "echo", "elag", "echo_need", "echo_cfg", "jstate",
             "jdepth", "jnext", "quiet_unseen", "out_kind", "out_period", "out_next"), state)}
        self._args = _Args(**ptr, content_tab=self.content.data_ptr(), content_n=self.content.shape[0],
                           blank_tab=self.blank_tab.data_ptr(), blank_n=self.blank_tab.shape[0],
                           number_tab=self.number.data_ptr(), number_n=self.number.shape[0],
                           P=self.max_period, jn=self.jvocab)
        self._args_ref = ctypes.byref(self._args)
        # Host-list steps (step_list): the tokens and the changed slots.
        self._tokens = torch.full((n,), -1, dtype=torch.int64)
        self._tokens_c = (ctypes.c_int64 * n).from_address(self._tokens.data_ptr())
        self._changed = (ctypes.c_int32 * n)()
        self._results: dict[int, StepResult] = {}  # views per batch size, made once

    def configure(self, slot: int, params: DetectorParams, expected_items: int = 0, json: bool = False) -> None:
        super().configure(slot, params, expected_items, json)
        self.quiet_unseen[slot] = _quiet(params, expected_items, self.max_period)

    def set_expected(self, slot: int, params: DetectorParams, expected_items: int) -> None:
        super().set_expected(slot, params, expected_items)
        self.quiet_unseen[slot] = _quiet(params, expected_items, self.max_period)

    def step(self, tokens: torch.Tensor) -> StepResult:
        n = tokens.shape[0]
        if n > self.num_slots:
            raise ValueError(f"{n} tokens for {self.num_slots} slots")
        x = tokens if tokens.dtype == torch.int64 and tokens.is_contiguous() else tokens.to(torch.int64).contiguous()
        self._fn(self._args_ref, x.data_ptr(), n, None, None, None)
        return self.result(n)

    def result(self, n: int) -> StepResult:
        """The last step's outcome, rows ``0..n-1``: views of reused buffers,
        as on the cuda backend (valid until the next step)."""
        res = self._results.get(n)
        if res is None:
            res = self._results[n] = StepResult(self.out_kind[:n], self.out_period[:n], self.out_next[:n])
        return res

    def step_list(self, tokens: list[int], latch: int, logged: int) -> list[int]:
        """A step from a host list (``tokens[s]`` for slot ``s``, -1: none),
        for a host whose rows all only observe: the kernel also folds the
        step's kinds into ``latch`` (address of an int32 ``[n]``: a slot with
        none takes its kind) and returns the slots whose kind differs from
        ``logged`` (int32 ``[n]``), in order. Read the rest with :meth:`result`.
        Raises ``ValueError`` for more tokens than slots."""
        n = len(tokens)
        if n > self.num_slots:
            raise ValueError(f"{n} tokens for {self.num_slots} slots")
        self._tokens_c[:n] = tokens
        c = self._fn(self._args_ref, self._tokens_c, n, latch, logged, self._changed)
        return self._changed[:c]
