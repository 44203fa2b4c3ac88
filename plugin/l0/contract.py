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
"""
from __future__ import annotations

import re
import secrets

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
