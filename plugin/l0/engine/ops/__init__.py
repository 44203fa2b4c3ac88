"""Device ops. One name per op across layers: ``l0/engine/ops/<op>.py`` ↔
``kernels/<op>.cu`` ↔ ``tests/engine/ops/test_<op>.py`` ↔ ``bench/bench_<op>.py``.

The detector factory lives here, above its backends (``detect`` the torch
spec, ``detect_cpu``, ``detect_cuda``, ``detect_reference``), which it
imports only when asked for one: a backend imports the spec, never this.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported until a detector is asked for (the light install has none)
    import torch

    from l0.engine import jsonstate
    from l0.engine.vocab import TokenClasses


def make_detector(num_slots: int, max_period: int, classes: TokenClasses | None = None,
                  device: torch.device | str = "cpu", backend: str = "auto",
                  json: jsonstate.JsonTables | None = None):
    """Build a detector. ``backend``: auto | torch | cpu | cuda | reference;
    ``json``: tables for slots that track a JSON answer.

    ``auto`` picks cuda on a GPU when CuPy is importable, the fused cpu kernel
    on the CPU when a C compiler works, else torch. Raises ``ValueError`` for
    an unknown backend and ``RuntimeError`` when ``cuda`` is asked for without
    a CUDA device or CuPy, or ``cpu`` without CPU tensors or a C compiler.
    """
    import torch

    dev = torch.device(device)
    if backend == "auto":
        backend = "torch"
        if dev.type == "cuda":
            from l0.engine.ops import detect_cuda
            if detect_cuda.available():
                backend = "cuda"
        elif dev.type == "cpu":
            from l0.engine.ops import detect_cpu
            if detect_cpu.available():
                backend = "cpu"
    if backend == "torch":
        from l0.engine.ops.detect import TorchDetector
        return TorchDetector(num_slots, max_period, classes, dev, json)
    if backend == "cuda":
        from l0.engine.ops.detect_cuda import CudaDetector
        return CudaDetector(num_slots, max_period, classes, dev, json)
    if backend == "cpu":
        from l0.engine.ops.detect_cpu import CpuDetector
        return CpuDetector(num_slots, max_period, classes, dev, json)
    if backend == "reference":
        from l0.engine.ops.detect_reference import ReferenceDetector
        return ReferenceDetector(num_slots, max_period, classes, json)
    raise ValueError(f"unknown detect backend {backend!r}; choose auto, torch, cpu, cuda or reference")
