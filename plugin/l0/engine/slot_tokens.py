"""Each slot's newly committed tokens, read where a host keeps them on the device.

For a host whose requests live in slots of a ``[slots, max_len]`` token
buffer with a per-slot committed length (vLLM's Model Runner V2:
``req_states.all_token_ids`` and ``total_len``). :class:`SlotTokens`
remembers, per slot on the device, the position of the next token L0 has
not fed, and each step returns the tokens committed since, in the shape
:meth:`l0.engine.step.StepCore.step_rows` takes. No upload, no host read: a few
gathers and ``where``s per step (``K`` of them), whatever the batch.
"""
from __future__ import annotations

import torch

FAR = 1 << 40  # the next position of a slot that is not followed: no token is ever new there


class SlotTokens:
    """``num_slots`` columns (slots ``0..num_slots-1``; the host's buffers may
    have fewer rows: the extra columns are spares, never fed). ``k``: the
    most tokens a slot commits in one step (1 + draft tokens under
    speculative decoding)."""

    def __init__(self, num_slots: int, k: int, device: torch.device | str) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.device = torch.device(device)
        self.k = k
        self.next_pos = torch.full((num_slots,), FAR, dtype=torch.int64, device=self.device)
        self._total = torch.zeros(num_slots, dtype=torch.int64, device=self.device)
        self._toks = torch.full((k, num_slots), -1, dtype=torch.int64, device=self.device)

    def follow(self, slot: int, position: int) -> None:
        """Feed ``slot`` from buffer position ``position`` on (a fill: no host sync)."""
        self.next_pos[slot].fill_(position)

    def drop(self, slot: int) -> None:
        self.next_pos[slot].fill_(FAR)

    def __call__(self, ids: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """``ids`` ``[n, max_len]`` (int32/int64) and ``total`` ``[n]``: the
        host's buffers for slots ``0..n-1``, on this device. Returns
        ``[k, num_slots]`` int64 (valid until the next call): row ``j`` holds
        each slot's ``j``-th new token, ``-1`` past its last; advances
        ``next_pos`` past them."""
        n, L = ids.shape
        tot = self._total[:n]
        tot.copy_(total[:n])
        nxt = self.next_pos[:n]
        new = tot - nxt
        at = nxt.clamp(max=L - 1)
        for j in range(self.k):
            tok = ids.gather(1, (at + j).clamp(max=L - 1)[:, None])[:, 0].to(torch.int64)
            self._toks[j, :n].copy_(torch.where(new > j, tok, -1))
        nxt.add_(new.clamp(0, self.k))
        return self._toks
