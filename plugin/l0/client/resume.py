"""Exact resume, the pure part: merge what a client received with a
checkpoint, and build the request that continues it on any replica.

A continuation is an ordinary ``/v1/completions`` request whose prompt is the
token ids ``prompt_ids + output_ids`` (so any vLLM replica can serve it, and
prefix caching makes the re-prefill cheap where the prefix is cached), with
the original sampling parameters, ``max_tokens``/``min_tokens`` reduced by the
tokens already generated, and ``vllm_xargs.l0_resume_from`` telling L0 on the
new replica how many prompt tokens are earlier output (it primes the loop
detector with them and keeps writing the same checkpoint record).

What is exact (see README): greedy decoding — token-identical to an
uninterrupted run. Seeded sampling — the prefix is exact, the continuation is
a valid sample from the same distribution but not the uninterrupted run's
(vLLM's per-request generator restarts from its seed). Guided decoding —
vLLM's grammar cannot be advanced through a prefix from the API — and stop
strings — checked by vLLM in a request's own output only — make a request
*regenerated* from the start, the already-delivered tokens and text checked
and skipped (:func:`needs_regeneration`); exact under greedy.
"""
from __future__ import annotations

from typing import Any, Sequence

from l0.contract import OPT_KEY, OPT_RESUME_FROM, SAMPLING_COPIED, Record


class ResumeError(RuntimeError):
    """Resuming is impossible or unsafe. ``token_ids``/``text`` hold everything
    received so far: nothing is lost."""

    def __init__(self, message: str, token_ids: Sequence[int] = (), text: str = "") -> None:
        super().__init__(message)
        self.token_ids = list(token_ids)
        self.text = text


ERR_MODEL = ("l0: checkpoint {key!r} was written by model {got!r}, not {want!r}: refusing to resume "
             "(token ids only mean something under the same model and tokenizer)")
ERR_DIVERGED = ("l0: checkpoint {key!r} disagrees with the tokens already received at index {at}: "
                "refusing to resume")


def merge(received: Sequence[int], checkpoint: Sequence[int], key: str = "") -> list[int]:
    """The longer of the two when one extends the other (the checkpoint may
    hold tokens the client never got; the client may hold tokens generated
    after the last checkpoint). Raises :class:`ResumeError` when they differ
    within their common length."""
    n = min(len(received), len(checkpoint))
    for i in range(n):
        if received[i] != checkpoint[i]:
            raise ResumeError(ERR_DIVERGED.format(key=key, at=i), received)
    return list(received if len(received) >= len(checkpoint) else checkpoint)


def check_model(record: Record, model: str, received: Sequence[int] = ()) -> None:
    if record.model.name != model:
        raise ResumeError(ERR_MODEL.format(key=record.key, got=record.model.name, want=model), received)


def needs_regeneration(record: Record) -> bool:
    """Guided decoding cannot continue mid-grammar through the API. Stop
    strings can't either: vLLM looks for them in a request's own output
    only, so a continuation from token ids misses one that straddles the
    cut, and a stream's text lags its ids (vLLM holds back what could start
    a stop string), so the ids received say nothing of the text shown.
    Regenerating the same request is exact (greedy)."""
    stop = record.sampling.get("stop")
    return "structured_outputs" in record.sampling or bool(stop)


# Sampling fields copied verbatim into a continuation request (the budget is reduced below).
_COPY = SAMPLING_COPIED + ("logit_bias",)


def continuation_body(record: Record, output_ids: Sequence[int], model: str,
                      stream: bool = True) -> dict[str, Any]:
    """The ``/v1/completions`` body that continues ``record`` after
    ``output_ids`` (which must extend or equal ``record.output_ids``)."""
    s = record.sampling
    done = len(output_ids)
    body: dict[str, Any] = {"model": model, "prompt": list(record.prompt_ids) + list(output_ids),
                            "stream": stream, "return_token_ids": True}
    for name in _COPY:
        if s.get(name) is not None:
            body[name] = s[name]
    if s.get("max_tokens") is not None:
        body["max_tokens"] = max(1, int(s["max_tokens"]) - done)
    if s.get("min_tokens"):
        body["min_tokens"] = max(0, int(s["min_tokens"]) - done)
    xargs = dict(s.get("vllm_xargs") or {})
    xargs[OPT_KEY] = record.key
    xargs[OPT_RESUME_FROM] = done
    body["vllm_xargs"] = xargs
    return body


def remaining(record: Record, output_ids: Sequence[int]) -> int | None:
    """Tokens still allowed (None: no limit recorded)."""
    mt = record.sampling.get("max_tokens")
    return None if mt is None else int(mt) - len(output_ids)
