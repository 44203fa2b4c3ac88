"""What L0's client and its engine side say to each other, written once.

The engine (the vLLM processor, ``l0 serve``'s routes, the checkpoint
writer) and the client (``l0.wrap``/``l0.run``, resume) import these names;
neither spells them itself. Plain data and one check: no dependencies.

* A **session key** names one request's checkpoint record: 1-128 characters
  of ``[A-Za-z0-9._:-]`` (:func:`is_key`, :func:`new_key`).
* **Per-request options** travel in ``vllm_xargs`` (the OpenAI SDK's
  ``extra_body={"vllm_xargs": {...}}``) under the ``OPT_*`` names.
* **The checkpoint route**: ``GET {CHECKPOINTS_ROUTE}/{key}`` answers the
  record as JSON; 503 with ``error.type`` :data:`CHECKPOINTS_OFF` when the
  server keeps none (or can't reach its store).
* **A continuation** (resume on any replica) copies the record's
  :data:`SAMPLING_COPIED` fields and ``logit_bias`` verbatim and reduces its
  :data:`SAMPLING_BUDGET` fields by the tokens already generated; the engine
  records exactly those.
* **The checkpoint record** (:class:`Record`): everything needed to continue
  a request exactly, written by the engine's checkpointer and read by any
  replica and by the client. JSON on the wire and in every store; version 1.
  :meth:`Record.from_json` raises :class:`CorruptRecord` (a ``ValueError``)
  for anything that is not a well-formed version-1 record, and never returns
  a half-valid one.
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

KEY_RULE = "1-128 characters of [A-Za-z0-9._:-]"
_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

OPT_ACTION = "l0_action"
OPT_KEY = "l0_key"
OPT_PENALTY = "l0_penalty"
OPT_RESUME_FROM = "l0_resume_from"
OPT_CLOSE_AT_BUDGET = "l0_close_at_budget"

CHECKPOINTS_ROUTE = "/l0/checkpoints"
CHECKPOINTS_OFF = "checkpoints_off"

SAMPLING_COPIED = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos",
                   "presence_penalty", "frequency_penalty", "repetition_penalty", "skip_special_tokens",
                   "spaces_between_special_tokens", "include_stop_str_in_output", "bad_words", "allowed_token_ids",
                   "logprobs")
SAMPLING_BUDGET = ("max_tokens", "min_tokens")


def is_key(value: object) -> bool:
    """``value`` is a well-formed session key."""
    return isinstance(value, str) and _KEY_RE.match(value) is not None


def new_key() -> str:
    """A fresh key with 128 bits of randomness (``l0-`` + 32 hex digits)."""
    return "l0-" + secrets.token_hex(16)


# -- the checkpoint record ------------------------------------------------------

VERSION = 1


class CorruptRecord(ValueError):
    """A stored checkpoint could not be decoded (wrong JSON, wrong shape)."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced the tokens: a served name and a fingerprint of the
    tokenizer (token ids only mean something under the same vocabulary)."""

    name: str
    tokenizer: str

    def same_as(self, other: "ModelIdentity") -> bool:
        return self.tokenizer == other.tokenizer and self.name == other.name


@dataclass(frozen=True)
class Record:
    """One request's token state.

    * ``prompt_ids``: the prompt as the engine saw it (after chat templating).
    * ``output_ids``: tokens generated so far (for a resumed request: all of
      them, across replicas).
    * ``sampling``: the sampling parameters needed to continue (see
      :func:`l0.engine.checkpoint.sampling.sampling_to_dict`), with ``max_tokens`` the
      original budget; the client subtracts ``len(output_ids)``.
    * ``interventions``: L0 actions so far, as logged.
    * ``finished``/``finish_reason``: set when the request left the engine for
      good ("stop" on an EOS/stop token, "length" at max_tokens, "aborted"
      otherwise: a stop string, a client disconnect, a cancel).
    """

    key: str
    model: ModelIdentity
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    sampling: dict[str, Any] = field(default_factory=dict)
    interventions: tuple[dict[str, Any], ...] = ()
    created: float = 0.0
    updated: float = 0.0
    finished: bool = False
    finish_reason: str | None = None
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: asdict copies every token id
        # through a Python-level recursion (~1 ms per 1000 ids, GIL held),
        # which the writer thread would take from the serving loop.
        return {"key": self.key, "model": {"name": self.model.name, "tokenizer": self.model.tokenizer},
                "prompt_ids": list(self.prompt_ids), "output_ids": list(self.output_ids),
                "sampling": self.sampling, "interventions": list(self.interventions),
                "created": self.created, "updated": self.updated, "finished": self.finished,
                "finish_reason": self.finish_reason, "version": self.version}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> "Record":
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptRecord(f"checkpoint is not JSON: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> "Record":
        if not isinstance(doc, dict):
            raise CorruptRecord("checkpoint is not a JSON object")
        if doc.get("version") != VERSION:
            raise CorruptRecord(f"checkpoint version {doc.get('version')!r} is not {VERSION}")
        try:
            model = doc["model"]
            rec = cls(
                key=_typed(doc["key"], str, "key"),
                model=ModelIdentity(_typed(model["name"], str, "model.name"),
                                    _typed(model["tokenizer"], str, "model.tokenizer")),
                prompt_ids=_ids(doc["prompt_ids"], "prompt_ids"),
                output_ids=_ids(doc["output_ids"], "output_ids"),
                sampling=_typed(doc.get("sampling", {}), dict, "sampling"),
                interventions=tuple(_typed(doc.get("interventions", []), list, "interventions")),
                created=float(doc.get("created", 0.0)),
                updated=float(doc.get("updated", 0.0)),
                finished=_typed(doc.get("finished", False), bool, "finished"),
                finish_reason=doc.get("finish_reason"),
            )
        except (KeyError, TypeError) as exc:
            raise CorruptRecord(f"checkpoint lacks or mistypes {exc}") from None
        return rec

    def with_output(self, output_ids, finished: bool = False, finish_reason: str | None = None,
                    interventions=None, now: float | None = None) -> "Record":
        return dataclasses.replace(
            self, output_ids=tuple(output_ids), finished=finished, finish_reason=finish_reason,
            interventions=self.interventions if interventions is None else tuple(interventions),
            updated=time.time() if now is None else now)


def _typed(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind):
        raise CorruptRecord(f"checkpoint field {name} is not a {kind.__name__}")
    return value


def _ids(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                              for t in value):
        raise CorruptRecord(f"checkpoint field {name} is not a list of token ids")
    return tuple(value)
