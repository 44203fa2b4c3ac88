"""What L0's two vLLM adapters share (V1 runner: :mod:`l0.engine.vllm.v1_processor`;
Model Runner V2: :mod:`l0.engine.vllm.v2_processor`): the server configuration, the
request facts read from ``SamplingParams``, and :class:`EngineHost` — the
host-only parts next to the step core: the tokenizer and its tables,
checkpoints of keyed requests, the watchdog heartbeat and health monitor,
per-request starvation, and the intervention log.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time

import torch

from l0.engine import jsonstate
from l0.engine.config import load_server_config, params_from_xargs
from l0.engine.health.starvation import StarvationTracker
from l0.engine.health.watchdog import Heartbeat
from l0.engine.step import StepCore
from l0.engine.vocab import classes_from_texts, token_texts

log = logging.getLogger("l0")
FQCN = "l0.vllm:L0LogitsProcessor"


@functools.cache
def server_config():
    return load_server_config()


def validate(sampling_params) -> None:
    """vLLM's ``validate_params`` for both runners. Raises ``OptionError`` (a
    ``ValueError``: vLLM answers HTTP 400 with its message)."""
    params_from_xargs(sampling_params.extra_args, server_config(), is_json(sampling_params))


def tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank
        return get_tensor_model_parallel_rank()
    except Exception:
        return 0


def stop_token(params) -> int:
    """The token a ``stop`` forces: EOS, or the first ``stop_token_ids`` entry
    under ``ignore_eos``; -1 when the request has none."""
    if not params.ignore_eos and params.eos_token_id is not None:
        return params.eos_token_id
    if params.stop_token_ids:
        return params.stop_token_ids[0]
    return -1


def is_constrained(params) -> bool:
    """A grammar masks this request's logits (structured outputs, tool calls)."""
    return getattr(params, "structured_outputs", None) is not None


def is_json(params) -> bool:
    """The grammar is JSON from the first output token: a JSON schema (tool
    calls with ``tool_choice`` required or named are served that way) or
    ``json_object``. Regex, choice, EBNF grammars and structural tags are not."""
    so = getattr(params, "structured_outputs", None)
    return so is not None and (so.json is not None or bool(so.json_object))


def json_schema(params):
    """The request's JSON schema as a dict (None for json_object or unparsable)."""
    so = getattr(params, "structured_outputs", None)
    schema = getattr(so, "json", None)
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            return None
    return schema if isinstance(schema, dict) else None


def output_budget(params, prompt_len: int, max_model_len: int | None) -> int:
    """Output tokens the request may still generate: ``max_tokens``, capped by
    the model's length limit; -1 when neither is known."""
    budget = params.max_tokens if params.max_tokens is not None else -1
    if max_model_len:
        room = max(max_model_len - prompt_len, 0)
        budget = room if budget < 0 else min(budget, room)
    return budget


def shadowed_by_named(vllm_config) -> bool:
    """The engine also names :data:`FQCN` (or the class) in ``--logits-processors``."""
    from l0.engine.vllm.logits_processor import L0LogitsProcessor
    named = vllm_config.model_config.logits_processors or ()
    return any(n == FQCN or n is L0LogitsProcessor for n in named)


class DebugFreeze:
    """DEBUG ONLY, off by default: with ``L0_DEBUG_FAULTS=1`` and
    ``L0_DEBUG_FREEZE_FILE=path``, a decode step waits while that file exists
    — tests freeze a real server's decode loop with it. A file holding a
    number ``N`` freezes only once some row has ``N`` output tokens: the
    client then has exactly ``N`` tokens and the engine none beyond, so a
    kill or a stall lands at that token, whatever the client's lag.
    ``rows``: row or slot -> the request's live output ids (kept by the adapter)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[int, list[int]] = {}

    @classmethod
    def from_env(cls) -> "DebugFreeze | None":
        if os.environ.get("L0_DEBUG_FAULTS") != "1" or not os.environ.get("L0_DEBUG_FREEZE_FILE"):
            return None
        path = os.environ["L0_DEBUG_FREEZE_FILE"]
        log.warning("l0: DEBUG fault hook armed: the decode loop freezes while %s exists", path)
        return cls(path)

    def __call__(self) -> None:
        while True:
            try:
                with open(self.path) as f:
                    text = f.read().strip()
            except FileNotFoundError:
                return
            at = int(text) if text.isdigit() else 0
            if at and not any(len(out) >= at for out in list(self.rows.values())):
                return
            time.sleep(0.05)


class EngineHost:
    """The host side of L0 in one vLLM engine process, for either runner.

    ``num_slots``: detector slots (the runner's request capacity, plus any
    spare the adapter keeps). ``runner``: ``"v1"`` or ``"v2"`` (logged).
    Sets ``enabled`` (L0 does anything at all), ``core`` (the step core, or
    None when detection is off), ``ckpt`` (the checkpointer, or None).
    """

    def _host_init(self, vllm_config, device: torch.device, pin_memory: bool, num_slots: int,
                   shadowed: bool, runner: str) -> None:
        self.cfg = server_config()
        self.runner = runner
        self.detect = self.cfg.action != "off" and not shadowed
        self.core: StepCore | None = None
        self.log_enabled = False
        self.ckpt = None
        self.monitor = None
        self.heartbeat = Heartbeat()
        self.starvation = None  # per-request token gaps, only with the health monitor
        self.kinds_seen: dict[str, int] = {}
        self._margins: dict[str, int] = {}  # schema -> close margin
        self._freeze = DebugFreeze.from_env()
        self.tokenizer = None
        self.max_model_len = getattr(vllm_config.model_config, "max_model_len", None)
        rank0 = tp_rank() == 0
        self.want_ckpt = self.cfg.checkpoint.enabled and not shadowed and rank0
        self.enabled = self.detect or self.want_ckpt
        if self.cfg.health.enabled and not shadowed:
            self.starvation = StarvationTracker()
            self._start_monitor()
        if not self.enabled:
            return
        self.tokenizer = self._load_tokenizer(vllm_config)
        if self.want_ckpt:
            from l0.engine.vllm.checkpointing import Checkpointer, model_identity
            self.ckpt = Checkpointer(self.cfg.checkpoint, model_identity(vllm_config, self.tokenizer),
                                     **self._checkpointer_options())
        if not self.detect:
            return
        vocab = vllm_config.model_config.get_vocab_size()
        classes = tables = None
        if self.tokenizer is not None:
            # One decode of the vocabulary: token classes and the JSON tables.
            texts = token_texts(self.tokenizer, vocab)
            special = getattr(self.tokenizer, "all_special_ids", ())
            classes = classes_from_texts(texts, special)
            tables = jsonstate.tables_from_texts(texts, special)
        self.log_enabled = self.cfg.log_interventions and rank0
        self.core = StepCore(num_slots, max_period=self.cfg.max_period_cap, device=device,
                             backend=self.cfg.backend, classes=classes, pin_memory=pin_memory,
                             decode=self.tokenizer.decode if self.tokenizer is not None else None,
                             on_event=self._on_event if self.log_enabled else None, json=tables,
                             close_margin=self.cfg.close_margin)
        # One line per rank at startup, through vLLM's logger so it carries the
        # worker's prefix ("(Worker_TP1 pid=...)"): shows L0 runs on every rank.
        logging.getLogger("vllm.l0").info(
            "l0: logits processor on tp rank %d: %s runner, action %s, backend %s, max_period_cap %d, %d slots",
            tp_rank(), runner, self.cfg.action, self.core.backend, self.cfg.max_period_cap, num_slots)

    def _checkpointer_options(self) -> dict:
        return {}

    @property
    def det(self):
        return self.core.det

    @property
    def rows(self):
        return self.core.rows if self.core is not None else {}

    def _start_monitor(self) -> None:
        """The engine's watchdog/telemetry/status thread (never fatal to the engine)."""
        try:
            from l0.engine.health.monitor import EngineMonitor

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

    def _host_step(self) -> None:
        """The host-only per-step work, after the step's tokens are on the
        host lists and before the core: the debug freeze, starvation, and
        the checkpoints due (snapshots handed to the writer, no I/O)."""
        if self._freeze is not None:
            self._freeze()
        if self.starvation is not None:
            self.starvation.step()
        if self.ckpt is not None and self.ckpt.tracked:
            self.ckpt.step()

    def _core_add(self, slot: int, opts, params, out_ids, prompt_len: int, **kw) -> None:
        """Start tracking a request in the core: the request facts both runners read alike."""
        as_json = is_json(params)
        self.core.add(slot, opts, out_ids, stop_token=stop_token(params), min_tokens=params.min_tokens or 0,
                      constrained=is_constrained(params), json=as_json,
                      max_tokens=output_budget(params, prompt_len, self.max_model_len),
                      close_margin=self._close_margin(params) if as_json else None, **kw)

    def _close_margin(self, params) -> int:
        """The row's close margin (:func:`l0.engine.jsonstate.schema_margin`: the
        required fields close mode may still have to write), once per schema."""
        schema = json_schema(params)
        if schema is None or self.tokenizer is None:
            return self.cfg.close_margin
        key = json.dumps(schema, sort_keys=True)
        margin = self._margins.get(key)
        if margin is None:
            margin = jsonstate.schema_margin(
                schema, lambda text: self.tokenizer.encode(text, add_special_tokens=False), self.cfg.close_margin)
            if len(self._margins) < 4096:  # a bound, not an LRU: schemas repeat
                self._margins[key] = margin
        return margin

    def _on_event(self, event: dict) -> None:
        log.warning("%s", json.dumps(event))
        self.kinds_seen[event["kind"]] = self.kinds_seen.get(event["kind"], 0) + 1
        if self.ckpt is not None:
            self.ckpt.intervention(event["key"], event)
