"""CUDA backend of the ``detect`` op: ``kernels/detect.cu`` through CuPy/NVRTC.

Compiled on first use (never at import), cached by CuPy outside the install
directory. Works on TorchDetector's tensors in place (zero-copy via
``__cuda_array_interface__``) on torch's current stream: one launch per step,
no host synchronisation.
"""
from __future__ import annotations

import functools

import torch

from l0.engine.kernels import kernel_source
from l0.engine.ops.cuda_launch import launch
from l0.engine.ops.detect import StepResult, TorchDetector

_THREADS = 256


def available() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


@functools.cache
def get_detect_kernel():
    import cupy

    module = cupy.RawModule(code=kernel_source("detect.cu"), options=("-std=c++17",))
    return module.get_function("l0_detect_step")


class CudaDetector(TorchDetector):
    backend = "cuda"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.device.type != "cuda":
            raise RuntimeError("the cuda detect backend needs a CUDA device")
        if not available():
            raise RuntimeError("the cuda detect backend needs CuPy: pip install cupy-cuda13x")
        n = self.num_slots
        self._kind = torch.zeros(n, dtype=torch.int32, device=self.device)
        self._period = torch.zeros(n, dtype=torch.int32, device=self.device)
        self._next = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._args = None  # kernel arguments, built on the first step

    def _kernel_args(self) -> tuple:
        """The launch's arguments after the tokens, as CuPy views of the state
        tensors, built once: every state tensor is written in place (moves and
        swaps too) and never reallocated, so the views stay valid."""
        import cupy

        c = cupy.asarray
        return (c(self.ring), c(self.pos), c(self.run), c(self.score), c(self.nlen),
                c(self.ncont), c(self.blank), c(self.loop_need), c(self.near_need), c(self.thr),
                c(self.content_milli), c(self.max_blank), c(self.active.view(torch.uint8)), c(self.content),
                cupy.int32(self.content.shape[0]), c(self.blank_tab), cupy.int32(self.blank_tab.shape[0]),
                c(self.number), cupy.int32(self.number.shape[0]),
                c(self.erun), c(self.echo), c(self.elag), c(self.echo_need), c(self.echo_cfg),
                cupy.int32(self.max_period), c(self._kind), c(self._period), c(self._next),
                c(self.jstate), c(self.jdepth), c(self.jnext), cupy.int32(self.jvocab))

    def step(self, tokens: torch.Tensor) -> StepResult:
        """One launch of ``n`` blocks on torch's current stream. The kernel reads
        the tokens where they are (int64, contiguous, on this device; other
        tensors are converted first)."""
        import cupy

        n = tokens.shape[0]
        if n > self.num_slots:
            raise ValueError(f"{n} tokens for {self.num_slots} slots")
        x = tokens.to(device=self.device, dtype=torch.int64).contiguous()
        if self._args is None:
            self._args = self._kernel_args()
        launch(get_detect_kernel(), (n,), (_THREADS,), (cupy.asarray(x),) + self._args, self.device)
        return StepResult(self._kind[:n], self._period[:n], self._next[:n])
