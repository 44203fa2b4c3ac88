"""L0 under vLLM's V1 model runner: a V1 logits processor over
:class:`l0.engine.step.StepCore`.

It translates vLLM's ``BatchUpdate`` (added/removed/moved rows; a row is a
request's place in the persistent batch) into core calls and passes each
step's logits to the core; the host parts are :class:`~l0.engine.vllm.host.EngineHost`'s.
The engine's live output lists are read on the host (vLLM keeps them because a
custom processor is loaded), uploaded once per step.
"""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from l0.engine.config import params_from_xargs
from l0.engine.vllm.host import EngineHost, is_json, shadowed_by_named, validate
from l0.engine.rows import move_entry


class L0V1Processor(EngineHost, LogitsProcessor):
    """``is_argmax_invariant()`` is False on purpose: vLLM skips
    argmax-invariant processors for all-greedy batches, and L0 must see every
    step (and changes the argmax when it stops or penalizes)."""

    entry_point = False

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        shadowed = self.entry_point and shadowed_by_named(vllm_config)
        S = vllm_config.scheduler_config.max_num_seqs
        self._host_init(vllm_config, device, is_pin_memory, S, shadowed, "v1")

    def is_argmax_invariant(self) -> bool:
        return False

    # -- persistent batch ---------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """One walk over the update, each change handed to every per-row
        table in turn (the starvation tracker, the debug freeze, the
        checkpointer, the step core): removals, then additions, then moves,
        the order vLLM's contract gives them."""
        if batch_update is not None and batch_update.batch_size == 0:
            self.heartbeat.idle()  # nothing in flight: nothing can be stuck
        if not batch_update:
            return
        for index in batch_update.removed:
            self._remove(index)
        for index, params, prompt_ids, out_ids in batch_update.added:
            self._add(index, params, prompt_ids, out_ids)
        for a, b, direction in batch_update.moved:
            self._move(a, b, direction == MoveDirectionality.SWAP)

    def _remove(self, index: int) -> None:
        if self.starvation is not None:
            self.starvation.remove(index)
        if self._freeze is not None:
            self._freeze.rows.pop(index, None)
        if self.ckpt is not None:
            self.ckpt.remove(index)
        if self.core is not None:
            self.core.remove(index)

    def _add(self, index: int, params, prompt_ids, out_ids) -> None:
        if self.starvation is not None:
            self.starvation.remove(index)  # an add may replace a row without a removal
            self.starvation.add(index, out_ids)
        if self._freeze is not None:
            self._freeze.rows[index] = out_ids
        if not self.enabled:
            return
        opts = params_from_xargs(params.extra_args, self.cfg, is_json(params))
        if self.ckpt is not None:
            self.ckpt.add(index, opts, params, prompt_ids, out_ids)
        if self.core is not None:
            prompt = prompt_ids or ()
            self._core_add(index, opts, params, out_ids, len(prompt), prompt_ids=prompt)

    def _move(self, a: int, b: int, swap: bool) -> None:
        if self.starvation is not None:
            self.starvation.move(a, b, swap)
        if self._freeze is not None:
            move_entry(self._freeze.rows, a, b, swap)
        if self.ckpt is not None:
            self.ckpt.move(a, b, swap)
        if self.core is not None:
            self.core.move(a, b, swap)

    # -- the step -----------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        self.heartbeat.beat(logits.shape[0])
        self._host_step()
        if self.core is None:
            return logits
        return self.core.step(logits)


class L0V1EntryPoint(L0V1Processor):
    """The V1 implementation behind the ``vllm.logits_processors`` entry point."""

    entry_point = True
