"""The checkpoint record: everything needed to continue a request exactly.

A record is written by the serving loop (``l0.vllm``) and read by any replica
and by the failover client. JSON on the wire and in every store; version 1.

Contract: :meth:`Record.from_json` raises :class:`CorruptRecord` (a
``ValueError``) for anything that is not a well-formed version-1 record, and
never returns a half-valid one.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

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
      :func:`l0.checkpoint.sampling.sampling_to_dict`), with ``max_tokens`` the
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
