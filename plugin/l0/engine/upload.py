"""Host → device copies that never make the host wait for the device.

A plain ``tensor.to("cuda")`` from ordinary (pageable) host memory ends with a
stream synchronisation: the host stalls until every kernel queued before it
has run. On the decode path that stall is the whole GPU step. :func:`upload`
stages the values in pinned memory from torch's caching host allocator and
copies with ``non_blocking=True``; the allocator records the copy on the
current stream and keeps the staging block alive until it completes, so the
values may be dropped at once and the block is never reused too early.
"""
from __future__ import annotations

from typing import Sequence

import torch


def upload(values: Sequence | torch.Tensor, dtype: torch.dtype, device: torch.device,
           pin: bool = True) -> torch.Tensor:
    """``values`` (a list, nested list or CPU tensor) as a new tensor of
    ``dtype`` on ``device``, ordered on the current stream, without a host sync.

    On a CPU ``device`` this is a plain conversion. ``pin=False`` skips the
    pinned staging (hosts without pinned memory); the copy is then still
    asynchronous for the device but the host waits for the staging copy.
    """
    if device.type == "cpu":
        return values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if isinstance(values, torch.Tensor):
        host = values.to(dtype)
        host = host.pin_memory() if pin else host
    else:
        host = torch.tensor(values, dtype=dtype, pin_memory=pin)
    return host.to(device, non_blocking=True)
