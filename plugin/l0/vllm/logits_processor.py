"""L0 as a vLLM V1 logits processor: follows the persistent batch, feeds each
request's newest token to the detect op, and acts on the logits.

Host work per step: read the newest id of each tracked row (already on the
host in vLLM's output lists) and one small upload. Decisions are made and
applied on the device; the host reads them back one step later (an event is
queried, never waited on) only to log interventions.

Actions per request (``vllm_xargs.l0_action``):
  * ``stop``: once a loop fires, the next step allows only the stop token
    (EOS, or the first ``stop_token_ids`` entry when ``ignore_eos``); deferred
    until ``min_tokens`` is reached; falls back to ``penalize`` if the request
    has no usable stop token. The row always keeps one finite logit.
  * ``penalize``: subtract ``l0_penalty`` from the logit of the token that
    would continue the detected cycle, each step the loop holds.
  * ``observe``: log only. ``off``: not tracked.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from l0.config import ACTIONS, RequestOptions, load_server_config, params_from_xargs
from l0.health.starvation import StarvationTracker
from l0.health.watchdog import Heartbeat
from l0.ops.detect import NONE, make_detector
from l0.ops.detect_reference import KIND_NAMES
from l0.vllm.rows import move_entry
from l0.vocab import classes_from_tokenizer, expected_items

log = logging.getLogger("l0")
ACTION_CODE = {name: i for i, name in enumerate(ACTIONS)}  # off 0, observe 1, stop 2, penalize 3
_STOP, _PENALIZE = ACTION_CODE["stop"], ACTION_CODE["penalize"]
FQCN = "l0.vllm:L0LogitsProcessor"


@functools.cache
def server_config():
    return load_server_config()


@dataclass
class _Row:
    """Host view of one tracked request."""

    opts: RequestOptions
    out_ids: list[int]       # vLLM's live output list for the request
    seen: int = 0            # tokens of out_ids already fed to the detector
    logged_kind: int = NONE  # last kind logged (log episodes, not every step)


def _debug_freeze_hook():
    """DEBUG ONLY, off by default: with ``L0_DEBUG_FAULTS=1`` and
    ``L0_DEBUG_FREEZE_FILE=path``, every decode step waits while that file
    exists — tests freeze a real server's decode loop with it."""
    if os.environ.get("L0_DEBUG_FAULTS") != "1" or not os.environ.get("L0_DEBUG_FREEZE_FILE"):
        return None
    path = os.environ["L0_DEBUG_FREEZE_FILE"]
    log.warning("l0: DEBUG fault hook armed: the decode loop freezes while %s exists", path)

    def freeze() -> None:
        while os.path.exists(path):
            time.sleep(0.05)
    return freeze


def _tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank
        return get_tensor_model_parallel_rank()
    except Exception:
        return 0


class L0LogitsProcessor(LogitsProcessor):
    """See module docstring. ``is_argmax_invariant()`` is False on purpose:
    vLLM skips argmax-invariant processors for all-greedy batches, and L0 must
    see every step (and changes the argmax when it stops or penalizes)."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        # OptionError is a ValueError: vLLM answers HTTP 400 with our message.
        params_from_xargs(sampling_params.extra_args, server_config())

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.cfg = server_config()
        shadowed = self._shadowed(vllm_config)
        self.detect = self.cfg.action != "off" and not shadowed
        self.rows: dict[int, _Row] = {}
        self.ckpt = None
        self.monitor = None
        self.heartbeat = Heartbeat()
        self.starvation = None  # per-request token gaps, only with the health monitor
        self.kinds_seen: dict[str, int] = {}
        self._freeze = _debug_freeze_hook()
        rank0 = _tp_rank() == 0
        want_ckpt = self.cfg.checkpoint.enabled and not shadowed and rank0
        self.enabled = self.detect or want_ckpt
        if self.cfg.health.enabled and not shadowed:
            self.starvation = StarvationTracker()
            self._start_monitor()
        if not self.enabled:
            return
        self.tokenizer = self._load_tokenizer(vllm_config)
        if want_ckpt:
            from l0.vllm.checkpointing import Checkpointer, model_identity
            self.ckpt = Checkpointer(self.cfg.checkpoint, model_identity(vllm_config, self.tokenizer))
        if not self.detect:
            return
        self.device = torch.device(device)
        self.is_cpu = self.device.type == "cpu"
        S = vllm_config.scheduler_config.max_num_seqs
        vocab = vllm_config.model_config.get_vocab_size()
        classes = classes_from_tokenizer(self.tokenizer, vocab) if self.tokenizer else None
        self.det = make_detector(S, self.cfg.max_period_cap, classes, self.device, self.cfg.backend)
        dev = dict(device=self.device)
        self.action = torch.zeros(S, dtype=torch.int32, **dev)
        self.stop_tok = torch.full((S,), -1, dtype=torch.int64, **dev)
        self.min_tok = torch.zeros(S, dtype=torch.int64, **dev)
        self.penalty = torch.zeros(S, dtype=torch.float32, **dev)
        self.latch = torch.zeros(S, dtype=torch.int32, **dev)
        self._per_slot = (self.action, self.stop_tok, self.min_tok, self.penalty, self.latch)
        pin = is_pin_memory and not self.is_cpu
        self._tok_host = [torch.full((S,), -1, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._flip = 0
        self._pending = None  # (event, host copies, row snapshot) awaiting readout
        self.log_enabled = self.cfg.log_interventions and rank0
        self.neg_inf = torch.tensor(float("-inf"), **dev)
        # One line per rank at startup, through vLLM's logger so it carries the
        # worker's prefix ("(Worker_TP1 pid=...)"): shows L0 runs on every rank.
        logging.getLogger("vllm.l0").info(
            "l0: logits processor on tp rank %d: action %s, backend %s, max_period_cap %d, %d slots",
            _tp_rank(), self.cfg.action, self.det.backend, self.cfg.max_period_cap, S)

    @staticmethod
    def _shadowed(vllm_config) -> bool:
        return False

    def _start_monitor(self) -> None:
        """The engine's watchdog/telemetry/status thread (never fatal to the engine)."""
        try:
            from l0.health.monitor import EngineMonitor

            def flush():
                if self.ckpt is not None:
                    self.ckpt.writer.flush(2.0)

            def counters():
                out = {"interventions": dict(self.kinds_seen), "starvation": self.starvation.to_dict()}
                if self.ckpt is not None:
                    w = self.ckpt.writer
                    out.update(checkpoints_written=w.written, checkpoint_lag=w.lag,
                               checkpoint_failures=w.failures, checkpoint_dropped=w.dropped)
                return out

            self.monitor = EngineMonitor(self.cfg.health, self.heartbeat, os.environ.get("L0_STATUS_DIR"),
                                         flush=flush, counters=counters).start()
        except Exception as exc:
            log.warning("l0: health monitor off: %s", exc)

    @staticmethod
    def _load_tokenizer(vllm_config):
        try:
            from transformers import AutoTokenizer
            mc = vllm_config.model_config
            return AutoTokenizer.from_pretrained(mc.tokenizer, revision=mc.tokenizer_revision,
                                                 trust_remote_code=mc.trust_remote_code)
        except Exception as exc:  # detection still works, without content/blank classes
            log.warning("l0: tokenizer unavailable (%s); content/blank classes off", exc)
            return None

    def is_argmax_invariant(self) -> bool:
        return False

    # -- persistent batch ---------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None and batch_update.batch_size == 0:
            self.heartbeat.idle()  # nothing in flight: nothing can be stuck
        if self.starvation is not None and batch_update:
            self._follow_starvation(batch_update)
        if not self.enabled or not batch_update:
            return
        for index in batch_update.removed:
            if self.ckpt is not None:
                self.ckpt.remove(index)
            if self.detect:
                self._clear(index)
        for index, params, prompt_ids, out_ids in batch_update.added:
            opts = params_from_xargs(params.extra_args, self.cfg)
            if self.ckpt is not None:
                self.ckpt.add(index, opts, params, prompt_ids, out_ids)
            if self.detect:
                self._add(index, opts, params, prompt_ids, out_ids)
        for a, b, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            if self.ckpt is not None:
                self.ckpt.move(a, b, swap)
            if self.detect:
                self._move(a, b, swap)

    def _follow_starvation(self, bu: BatchUpdate) -> None:
        st = self.starvation
        for index in bu.removed:
            st.remove(index)
        for index, _params, _prompt, out_ids in bu.added:
            st.remove(index)  # an add may replace a row without a removal
            st.add(index, out_ids)
        for a, b, direction in bu.moved:
            st.move(a, b, direction == MoveDirectionality.SWAP)

    def _move(self, a: int, b: int, swap: bool) -> None:
        move_entry(self.rows, a, b, swap)
        if swap:
            self.det.swap(a, b)
            for t in self._per_slot:
                t[[a, b]] = t[[b, a]]
        else:
            self.det.move(a, b)
            for t in self._per_slot:
                t[b] = t[a]
            self._clear(a)  # row a's entry already moved: only its per-slot values reset

    def _clear(self, index: int) -> None:
        if self.rows.pop(index, None) is not None:
            self.det.clear(index)
        for t in self._per_slot:
            t[index] = 0
        self.stop_tok[index] = -1

    def _add(self, index, opts: RequestOptions, params, prompt_ids, out_ids) -> None:
        self._clear(index)
        if opts.action == "off":
            return
        prompt = list(prompt_ids or ())
        # A resumed request: its prompt ends with the output generated before.
        n = opts.resume_from if 0 < opts.resume_from <= len(prompt) else 0
        prefix, prompt = prompt[len(prompt) - n:], prompt[: len(prompt) - n]
        expected = 0
        if self.tokenizer is not None and prompt and (opts.params.near_min_repeats or opts.params.echo_ngram):
            # The tail of the prompt carries the user's request ("... 25 records").
            expected = expected_items(self.tokenizer.decode(prompt[-512:]))
        self.det.configure(index, opts.params, expected)
        stop = -1
        if not params.ignore_eos and params.eos_token_id is not None:
            stop = params.eos_token_id
        elif params.stop_token_ids:
            stop = params.stop_token_ids[0]
        self.action[index] = ACTION_CODE[opts.action]
        self.stop_tok[index] = stop
        self.min_tok[index] = (params.min_tokens or 0) + n
        self.penalty[index] = opts.penalty
        self.rows[index] = row = _Row(opts, out_ids)
        if prefix:
            # Same detector state as if this replica had generated the prefix.
            self._prime(index, prefix)
            row.seen = 0

    def _prime(self, index: int, tokens: list[int]) -> None:
        S = self.action.shape[0]
        for tok in tokens:
            one = torch.full((S,), -1, dtype=torch.int64)
            one[index] = tok
            self._latch(self.det.step(one.to(self.device)), S)

    # -- the step -----------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        self.heartbeat.beat(logits.shape[0])
        if self._freeze is not None:
            self._freeze()
        if self.starvation is not None:
            self.starvation.step()
        if self.ckpt is not None and self.ckpt.tracked:
            self.ckpt.step()
        if not self.detect or not self.rows:
            return logits
        self._readout()
        B = logits.shape[0]
        host = self._tok_host[self._flip]
        self._flip ^= 1
        host[:B] = -1
        backlog = []
        for index, row in self.rows.items():
            if index >= B:
                continue
            n = len(row.out_ids)
            if n == row.seen + 1:
                tok = row.out_ids[-1]
                if tok >= 0:  # -1 is an async-scheduling placeholder: not yet known
                    host[index] = tok
                    row.seen = n
            elif n > row.seen:
                backlog.append(index)  # re-added with output (preemption): replay it
        for index in backlog:
            self._replay(index, B, host)
        toks = host[:B].to(self.device, non_blocking=True)
        res = self.det.step(toks)
        return self._act(logits, res, B)

    def _replay(self, index: int, B: int, host: torch.Tensor) -> None:
        """Feed every not-yet-seen token of one row except the newest (which
        goes with the batch step), one detector step per token."""
        row = self.rows[index]
        pending = [t for t in row.out_ids[row.seen:] if t >= 0]
        for tok in pending[:-1]:
            one = torch.full((B,), -1, dtype=torch.int64)
            one[index] = tok
            res = self.det.step(one.to(self.device))
            self._latch(res, B)
        host[index] = pending[-1] if pending else -1
        row.seen = len(row.out_ids)

    def _latch(self, res, B: int) -> torch.Tensor:
        latch = self.latch[:B]
        latch.copy_(torch.where((latch == NONE) & (res.kind != NONE), res.kind, latch))
        return latch

    def _act(self, logits: torch.Tensor, res, B: int) -> torch.Tensor:
        latch = self._latch(res, B)
        action, stop_tok = self.action[:B], self.stop_tok[:B]
        can_stop = (stop_tok >= 0) & (self.det.pos[:B] >= self.min_tok[:B])
        stop_rows = (latch != NONE) & (action == _STOP) & can_stop
        # A stop that can't happen yet (min_tokens, no stop token) penalizes meanwhile.
        pen_rows = (res.next_token >= 0) & ((action == _PENALIZE) | ((action == _STOP) & ~stop_rows))
        # On the CPU a host check is free and skips O(B*V) work; on a GPU it
        # would synchronise, so the masked ops always run there.
        if not self.is_cpu or bool(pen_rows.any()):
            rows = torch.arange(B, device=logits.device)
            col = res.next_token.clamp_min(0)
            logits[rows, col] -= self.penalty[:B] * pen_rows.to(logits.dtype)
        if not self.is_cpu or bool(stop_rows.any()):
            col = stop_tok.clamp_min(0)[:, None]
            kept = logits.gather(1, col)
            kept = torch.where(torch.isfinite(kept), kept, torch.zeros_like(kept))
            logits.masked_fill_(stop_rows[:, None], float("-inf"))
            logits.scatter_(1, col, torch.where(stop_rows[:, None], kept, logits.gather(1, col)))
        if self.log_enabled:
            self._queue_readout(res, B)
        return logits

    # -- deferred, non-blocking readout for logs ------------------------------
    def _queue_readout(self, res, B: int) -> None:
        snap = {i: r for i, r in self.rows.items() if i < B}
        if self.is_cpu:
            self._log(res.kind.tolist(), res.period.tolist(), self.det.pos[:B].tolist(), snap)
            return
        copies = [t.to("cpu", non_blocking=True) for t in (res.kind, res.period, self.det.pos[:B])]
        event = torch.cuda.Event()
        event.record()
        self._pending = (event, copies, snap)

    def _readout(self) -> None:
        if self._pending is None:
            return
        event, copies, snap = self._pending
        if not event.query():  # not done yet: never wait on the decode path
            return
        self._pending = None
        self._log(*(c.tolist() for c in copies), snap)

    def _log(self, kinds, periods, positions, snap) -> None:
        for index, row in snap.items():
            kind = kinds[index]
            if kind != NONE and kind != row.logged_kind:
                event = {"event": "l0.intervention", "key": row.opts.key, "kind": KIND_NAMES[kind],
                         "period": periods[index], "token_index": positions[index],
                         "action": row.opts.action}
                log.warning("%s", json.dumps(event))
                self.kinds_seen[event["kind"]] = self.kinds_seen.get(event["kind"], 0) + 1
                if self.ckpt is not None:
                    self.ckpt.intervention(row.opts.key, event)
            row.logged_kind = kind


class L0EntryPoint(L0LogitsProcessor):
    """The class behind the ``vllm.logits_processors`` entry point. It stands
    down when the same engine also names :data:`FQCN` in ``--logits-processors``
    (as ``l0 serve`` does), so L0 never runs twice."""

    @staticmethod
    def _shadowed(vllm_config) -> bool:
        named = vllm_config.model_config.logits_processors or ()
        return any(n == FQCN or n is L0LogitsProcessor for n in named)
