"""Device → host reads that never make the decode loop wait.

A host whose token ids live on the device (vLLM's V2 runner) still needs some
of them on the host, off the hot path: a prompt's tail (the item count it asks
for), the ids a checkpoint records. :class:`Readback` queues a copy on the
current stream and hands the values to a callback once the copy has landed,
which :meth:`Readback.poll` checks with an event query (never a wait). On a
CPU device the values are there at once and the callback runs immediately, so
CPU hosts see the same order of effects as a host that held the ids itself.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import torch


class Readback:
    """FIFO of pending reads; callbacks run in the order the reads were queued."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._pending: deque = deque()  # (event, host tensor, callback)

    def read(self, values: torch.Tensor, then: Callable[[list], None]) -> None:
        """Copy ``values`` (any shape, on the device) and call ``then`` with
        them as a (nested) Python list once they are on the host. The copy is
        ordered after everything already queued on the current stream."""
        if self.device.type != "cuda":  # nothing ever waits on a CPU: nothing is pending
            then(values.tolist())
            return
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, host, then))

    def after(self, then: Callable[[], None]) -> None:
        """Call ``then`` once every read queued before it has been handed over
        (at once when none is pending): host bookkeeping that must follow them."""
        if not self._pending:
            then()
            return
        self._pending.append((None, None, lambda _values: then()))

    def poll(self) -> int:
        """Run the callbacks of every read that has landed, in order, up to
        the first that has not; returns how many ran."""
        n = 0
        while self._pending:
            event, host, then = self._pending[0]
            if event is not None and not event.query():
                break
            self._pending.popleft()
            then(host.tolist() if host is not None else None)
            n += 1
        return n

    def drain(self) -> None:
        """Wait for every pending read and run its callback (tests, shutdown)."""
        for event, _, _ in list(self._pending):
            if event is not None:
                event.synchronize()
        self.poll()

    def __len__(self) -> int:
        return len(self._pending)
