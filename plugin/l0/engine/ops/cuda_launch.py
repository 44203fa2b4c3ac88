"""Launching CuPy-compiled kernels on torch's current stream.

CuPy launches on *its* current stream; torch queues everything else on
*torch's*. :func:`launch` wraps torch's current stream for CuPy (one wrapper per
stream, cached: creating one per step costs host time on the decode path) so
a kernel is ordered after the copies and ops queued before it, on any stream.
"""
from __future__ import annotations

import warnings

import torch

_STREAMS: dict[tuple[int, int], object] = {}


def _cupy_stream(device: torch.device):
    import cupy

    stream = torch.cuda.current_stream(device)
    key = (stream.device_index, stream.cuda_stream)
    wrapped = _STREAMS.get(key)
    if wrapped is None:
        with warnings.catch_warnings():
            # CuPy 14 deprecates ExternalStream for Stream.from_external(), which
            # needs the stream protocol torch does not implement everywhere.
            warnings.simplefilter("ignore", DeprecationWarning)
            wrapped = cupy.cuda.ExternalStream(stream.cuda_stream, stream.device_index)
        _STREAMS[key] = wrapped
    return wrapped


def launch(kernel, grid: tuple, block: tuple, args: tuple, device: torch.device) -> None:
    """Queue ``kernel`` on torch's current stream of ``device`` (no host sync)."""
    with _cupy_stream(device):
        kernel(grid, block, args)
