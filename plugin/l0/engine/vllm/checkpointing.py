"""Checkpoint glue for the logits processor: turns vLLM's per-request objects
into :class:`~l0.contract.Record` snapshots for the background writer.

Host-only. A step looks only at the requests due for a snapshot (a heap
ordered by the step each is expected to reach its next ``every`` tokens),
and hands each one's live list to the writer, which copies, encodes and
writes on its own thread. Rank 0 only.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from l0.contract import ModelIdentity, Record
from l0.engine.checkpoint import open_store
from l0.engine.checkpoint.writer import CheckpointWriter
from l0.engine.config import CheckpointConfig, RequestOptions
from l0.contract import OPT_RESUME_FROM, SAMPLING_BUDGET, SAMPLING_COPIED
from l0.engine.rows import move_entry

log = logging.getLogger("l0")

# SamplingParams fields a continuation needs, copied as plain JSON values
# (logit_bias, structured outputs and the xargs are converted below).
_SAMPLING_FIELDS = SAMPLING_COPIED + SAMPLING_BUDGET


def sampling_to_dict(params) -> dict[str, Any]:
    """The continuation-relevant part of a vLLM ``SamplingParams`` as JSON."""
    out: dict[str, Any] = {}
    for name in _SAMPLING_FIELDS:
        value = getattr(params, name, None)
        if value is not None:
            out[name] = list(value) if isinstance(value, (set, tuple)) else value
    bias = getattr(params, "logit_bias", None)
    if bias:
        out["logit_bias"] = {str(k): v for k, v in bias.items()}
    so = getattr(params, "structured_outputs", None)
    if so is not None:
        spec = {k: getattr(so, k) for k in ("json", "regex", "choice", "grammar", "json_object",
                                               "structural_tag") if getattr(so, k, None) is not None}
        if spec:
            out["structured_outputs"] = spec
    xargs = getattr(params, "extra_args", None)
    if xargs:
        out["vllm_xargs"] = {k: v for k, v in xargs.items() if k != OPT_RESUME_FROM}
    return json.loads(json.dumps(out, default=str))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the vocabulary (token → id) and the special tokens: equal
    fingerprints mean token ids mean the same text."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{tok}\n".encode("utf-8", "surrogatepass"))
    specials = getattr(tokenizer, "all_special_tokens", []) if tokenizer is not None else []
    h.update(json.dumps(sorted(map(str, specials))).encode())
    return "sha256:" + h.hexdigest()


def model_identity(vllm_config, tokenizer) -> ModelIdentity:
    mc = vllm_config.model_config
    name = getattr(mc, "served_model_name", None)
    if not isinstance(name, str):
        name = getattr(mc, "model", None) or "unknown"
    return ModelIdentity(name=str(name), tokenizer=tokenizer_fingerprint(tokenizer))


@dataclass
class _Tracked:
    base: Record
    out_ids: list[int]          # vLLM's live output list
    prefix: tuple[int, ...]     # output generated before a resume (on another replica)
    stop_ids: frozenset[int]
    max_tokens: int | None
    written: int = -1           # output length at the last snapshot
    interventions: list[dict] = field(default_factory=list)
    final: bool = False         # the finished snapshot was offered (by the finisher)
    gone: bool = False          # no longer followed (its heap entry is skipped)
    seen_at: tuple[int, int] = (0, 0)  # (step, output length) when last scheduled
    pace: int = 1               # most tokens it may add in a step (see Checkpointer._schedule)
    encoded: "_Encoding" = field(default_factory=lambda: _Encoding())  # the writer thread's, see _Snapshot


def _known_len(out_ids: list[int]) -> int:
    """How many of a live output list's ids are known: under async scheduling
    the newest entry may be a -1 placeholder."""
    n = len(out_ids)
    while n and out_ids[n - 1] < 0:
        n -= 1
    return n


class _Encoding:
    """A request's record as JSON pieces, kept by the writer thread between
    snapshots (:meth:`_Snapshot.to_json`): the fixed parts, encoded once,
    and the output ids encoded so far."""

    __slots__ = ("n", "ids", "head", "mid", "prefix", "created", "tail")

    def __init__(self) -> None:
        self.n, self.ids = 0, ""  # ids encoded so far, as "a,b,c"
        self.head = None  # None until the first snapshot is encoded


class _Snapshot:
    """A record as of now, built by the writer thread when it writes: the
    serving loop hands over the live output list and its known length (ids
    below it never change: the list only grows, and a placeholder is only
    ever at its end), not a copy.

    The stores call :meth:`to_json`, equal to ``build().to_json()``, made
    for the writer's budget: the parts of a request's record that never
    change are encoded once (``encoded``: kept on the request, touched by the
    writer thread only), and its output ids incrementally, each snapshot
    adding only the ids since the last one; so a snapshot's cost does not
    grow with the answer."""

    __slots__ = ("base", "prefix", "ids", "n", "reason", "interventions", "now", "encoded")

    def __init__(self, base: Record, prefix: tuple, ids: list[int], n: int, reason: str | None,
                 interventions: tuple, now: float, encoded: _Encoding | None = None) -> None:
        self.base, self.prefix, self.ids, self.n = base, prefix, ids, n
        self.reason, self.interventions, self.now = reason, interventions, now
        self.encoded = encoded if encoded is not None else _Encoding()

    @property
    def key(self) -> str:
        return self.base.key

    @property
    def finished(self) -> bool:
        return self.reason is not None

    def build(self) -> Record:
        return self.base.with_output(self.prefix + tuple(self.ids[:self.n]), finished=self.reason is not None,
                                     finish_reason=self.reason, interventions=self.interventions, now=self.now)

    def to_json(self) -> str:
        enc, n = self.encoded, self.n
        if enc.head is None:  # first use: the fixed parts, in Record.to_dict's order
            d = self.base.to_dict()
            head = {k: d[k] for k in ("key", "model", "prompt_ids")}
            enc.head = json.dumps(head, separators=(",", ":"))[:-1] + ',"output_ids":['
            enc.mid = '],"sampling":' + json.dumps(d["sampling"], separators=(",", ":")) + ',"interventions":'
            enc.prefix = ",".join(map(str, self.prefix))
            enc.created = f',"created":{json.dumps(d["created"])},"updated":'
            enc.tail = f',"version":{d["version"]}}}'
        if enc.n > n:  # an older snapshot than the last encoded: start the ids again
            enc.n, enc.ids = 0, ""
        new = ",".join(map(str, self.ids[enc.n:n]))
        if new:
            enc.ids = f"{enc.ids},{new}" if enc.ids else new
        enc.n = n
        ids = f"{enc.prefix},{enc.ids}" if enc.prefix and enc.ids else enc.prefix or enc.ids
        return "".join((enc.head, ids, enc.mid, json.dumps(list(self.interventions), separators=(",", ":")),
                        enc.created, json.dumps(self.now), ',"finished":',
                        "true" if self.reason is not None else "false", ',"finish_reason":',
                        json.dumps(self.reason), enc.tail))


class Checkpointer:
    """``finish_poll_s``: how often a daemon thread looks for rows that have
    finished (their live output ends in a stop token or fills max_tokens)
    and writes their final snapshot. vLLM tells a logits processor about a
    finished row only in the next engine step, and an engine that goes idle
    has no next step: without this, the last requests before a pause kept
    an unfinished record (and no stop intervention) until the next request
    came (seen in the compatibility tests). 0 turns it off."""

    def __init__(self, cfg: CheckpointConfig, identity: ModelIdentity, finish_poll_s: float = 0.2,
                 output_of=None, tokens_per_step: int = 1) -> None:
        """``output_of(index, out_ids) -> list | None``: the finisher's read of
        a row's output when the live list can lag the engine (vLLM's V2 runner
        keeps ids on the device: the adapter reads them there); None: no
        settled read yet. Default: the live list. ``tokens_per_step``: the
        most tokens a request gains in one step (1; speculative decoding:
        1 + draft tokens), the pace snapshots are scheduled at."""
        self.tokens_per_step = max(1, tokens_per_step)
        self.cfg = cfg
        self.output_of = output_of
        self.identity = identity
        self.writer = CheckpointWriter(lambda: open_store(cfg.store, cfg.ttl_s))
        self.tracked: dict[int, _Tracked] = {}  # persistent-batch row -> request
        self._steps = 0
        self._due: list[tuple[int, int, _Tracked]] = []  # (step, tie-break, request): the next snapshot due
        self._tie = itertools.count()
        self._closing = threading.Event()
        self._finisher = None
        if finish_poll_s > 0:
            self._finisher = threading.Thread(target=self._finish_loop, args=(finish_poll_s,),
                                              name="l0-checkpoint-finisher", daemon=True)
            self._finisher.start()

    def add(self, index: int, opts: RequestOptions, params, prompt_ids, out_ids) -> None:
        # vLLM may reuse a removed row for a new request without listing the
        # removal: the request that was there still gets its final snapshot.
        self.remove(index)
        if opts.key is None:
            return
        prompt = list(prompt_ids or ())
        n = opts.resume_from if 0 < opts.resume_from <= len(prompt) else 0
        prefix = tuple(prompt[len(prompt) - n:]) if n else ()
        sampling = sampling_to_dict(params)
        if n and sampling.get("max_tokens") is not None:
            sampling["max_tokens"] += n  # the record keeps the original budget
        if n and sampling.get("min_tokens"):
            sampling["min_tokens"] += n
        now = time.time()
        base = Record(key=opts.key, model=self.identity, prompt_ids=tuple(prompt[: len(prompt) - n]),
                      output_ids=prefix, sampling=sampling, created=now, updated=now)
        stop_ids = set(params.stop_token_ids or ())
        eos = getattr(params, "eos_token_id", None)
        if eos is not None and not params.ignore_eos:
            stop_ids.add(eos)
        stop_ids |= set(getattr(params, "all_stop_token_ids", ()) or ())
        t = self.tracked[index] = _Tracked(base, out_ids, prefix, frozenset(stop_ids), params.max_tokens)
        self._snapshot(t)  # the prompt is resumable from the first token on
        t.seen_at, t.pace = (self._steps, len(out_ids)), self.tokens_per_step
        self._schedule(t, len(out_ids))

    def move(self, a: int, b: int, swap: bool) -> None:
        if not swap:
            # vLLM's condense fills a finished request's slot b with the last
            # row and does not list b as removed: b's request ended, so it
            # gets its final snapshot here (dropping it lost the finish and
            # the last tokens of every such request: seen in the tests).
            self.remove(b)
        move_entry(self.tracked, a, b, swap)

    def remove(self, index: int) -> None:
        t = self.tracked.pop(index, None)
        if t is None:
            return
        t.gone = True
        out = self._known(t.out_ids)
        reason = self._finished(t, out)
        # Removed without stop/length: preempted (it comes back), aborted, or
        # ended by a stop string; the final snapshot stays resumable.
        if reason is not None and self.cfg.retention == "delete":
            self.writer.delete(t.base.key)
            return
        self._snapshot(t, reason)

    def forget(self, index: int) -> None:
        """Stop following a row without a final snapshot (its request goes on elsewhere)."""
        t = self.tracked.pop(index, None)
        if t is not None:
            t.gone = True

    def step(self) -> None:
        """Once per engine step: snapshot the requests with ``every`` new
        tokens since their last one. Only the requests the heap says are due
        are looked at: a step where none is due costs a compare."""
        self._steps += 1
        due = self._due
        while due and due[0][0] <= self._steps:
            t = heapq.heappop(due)[2]
            if t.gone:
                continue
            n = len(t.out_ids)
            if n - max(t.written, 0) >= self.cfg.every:
                self._snapshot(t)
            self._schedule(t, n)

    def _schedule(self, t: _Tracked, n: int) -> None:
        """Due again at the first step it could have ``every`` new tokens,
        growing at most ``pace`` tokens a step: the larger of the host's
        ``tokens_per_step`` and the fastest growth seen between two looks at
        this request. While no step grows faster than that (the V1 runner:
        one token a step), each snapshot lands at the step, and length, that
        checking every request every step gives."""
        step0, n0 = t.seen_at
        if self._steps > step0:
            t.pace = max(t.pace, -(-(n - n0) // (self._steps - step0)))
        t.seen_at = (self._steps, n)
        wait = max(1, (max(t.written, 0) + self.cfg.every - n) // t.pace)
        heapq.heappush(self._due, (self._steps + wait, next(self._tie), t))

    def intervention(self, key: str | None, event: dict) -> None:
        """Record a logged intervention with the request's next snapshot
        (looked up by key: on a GPU the log readout lags a step, rows may move)."""
        for t in self.tracked.values():
            if key is not None and t.base.key == key:
                t.interventions.append(event)
                return

    @staticmethod
    def _finished(t: _Tracked, out: list[int]) -> str | None:
        if out and out[-1] in t.stop_ids:
            return "stop"
        if t.max_tokens is not None and len(out) >= t.max_tokens:
            return "length"
        return None

    def finish_idle(self) -> int:
        """Offer the final snapshot of every tracked row whose output shows it
        finished; returns how many. Runs on the finisher thread: it reads a
        copy of the row table and copies of the live output lists (atomic
        under the GIL), and the engine thread's own final snapshot at removal
        writes the same record again (harmless)."""
        n = 0
        for index, t in list(self.tracked.items()):
            if t.final:
                continue
            out = self._known(t.out_ids) if self.output_of is None else self.output_of(index, t.out_ids)
            if out is None:
                continue
            reason = self._finished(t, out)
            if reason is None or self.cfg.retention == "delete":
                continue
            t.final = True
            self._snapshot(t, reason, out)
            n += 1
        return n

    def _finish_loop(self, every_s: float) -> None:
        while not self._closing.wait(every_s):
            try:
                self.finish_idle()
            except Exception:  # noqa: BLE001 - a race with the engine thread: next round
                pass

    def _snapshot(self, t: _Tracked, reason: str | None = None, out: list[int] | None = None) -> None:
        ids = t.out_ids if out is None else out
        n = _known_len(t.out_ids) if out is None else len(out)
        t.written = n
        self.writer.offer(_Snapshot(t.base, t.prefix, ids, n, reason, tuple(t.interventions), time.time(),
                                    t.encoded))

    @staticmethod
    def _known(out_ids: list[int]) -> list[int]:
        return out_ids[:_known_len(out_ids)]

    def close(self) -> None:
        self._closing.set()
        self.writer.close()
