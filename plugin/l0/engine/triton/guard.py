"""Loop detection over a streamed LLM output, one stream at a time — the part
of the Triton step that does not import Triton (tested directly).

A :class:`StreamGuard` watches one stream: ``feed(token_ids)`` takes the next
chunk of tokens the LLM produced and returns how many of them to pass on and
the :class:`Verdict` if a loop fired. With ``l0_action: stop`` everything up
to and including the token at which the loop was detected is passed (the same
cut as the vLLM processor, which replaces the *next* token with the stop
token) and the stream ends; with ``observe`` every token passes and the
verdict is only reported; ``off`` passes everything unseen. ``penalize``
needs the logits, which a step after the LLM does not have: it is refused.

:class:`StreamTable` keeps the guards of the streams in flight, keyed by the
caller's stream key, evicting streams idle for ``idle_s`` and the least
recently used beyond ``max_streams`` (an ensemble step never learns that an
upstream stream ended).
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from l0.engine.config import KNOWN_OPTIONS, OptionError, RequestOptions, ServerConfig, params_from_xargs
from l0.engine.ops.detect_reference import KIND_NAMES, NONE, ReferenceDetector
from l0.engine.vocab import TokenClasses

ERR_PENALIZE = ("l0: option l0_action='penalize' needs the LLM's logits, which a Triton step after the LLM "
                "does not see; use stop or observe (or run L0 inside vLLM)")
ERR_OPTIONS_JSON = "l0: l0_options must be a JSON object of l0_* options: {why}"


def options_json(raw: str | bytes | None) -> dict[str, Any]:
    """The ``l0_options`` input: a JSON object text ("" = none). Raises OptionError."""
    if raw is None or raw == b"" or raw == "":
        return {}
    try:
        opts = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OptionError(ERR_OPTIONS_JSON.format(why=exc)) from None
    if not isinstance(opts, dict):
        raise OptionError(ERR_OPTIONS_JSON.format(why=f"got {type(opts).__name__}"))
    return opts


def parse_options(raw: str | bytes | Mapping[str, Any] | None, server: ServerConfig) -> RequestOptions:
    """Per-stream options from the ``l0_options`` input (JSON object text) or
    a mapping (request parameters). Same names and ranges as ``vllm_xargs``.
    Raises :class:`OptionError` naming the option."""
    opts = raw if isinstance(raw, Mapping) else options_json(raw)
    stray = sorted(k for k in opts if not str(k).startswith("l0_"))
    if stray:
        raise OptionError(f"l0: unknown option {stray[0]!r}; known options: {', '.join(KNOWN_OPTIONS)}")
    parsed = params_from_xargs(opts, server)
    if parsed.action == "penalize":
        raise OptionError(ERR_PENALIZE)
    return parsed


@dataclass(frozen=True)
class Verdict:
    kind: str          # loop | near_loop | echo | no_progress
    period: int        # 0 unless a loop
    token_index: int   # index in the stream's output of the token at which it fired
    action: str        # what was done: stop | observe

    def to_json(self) -> str:
        return json.dumps({"event": "l0.intervention", "kind": self.kind, "period": self.period,
                           "token_index": self.token_index, "action": self.action})


def make_stream_detector(max_period: int, classes: TokenClasses | None, device: str, backend: str):
    """A one-slot detector. ``backend`` as :func:`l0.engine.ops.make_detector`;
    ``auto`` without torch in this Python environment (a lean Triton Python
    backend environment) is the plain-Python reference — the spec itself.
    Raises ``RuntimeError`` for a torch backend without torch."""
    if backend == "reference":
        return ReferenceDetector(1, max_period, classes)
    try:
        import torch  # noqa: F401 - the torch backends need it; the factory imports it only when called
    except ImportError as exc:  # no torch here
        if backend == "auto":
            return ReferenceDetector(1, max_period, classes)
        raise RuntimeError(f"l0: detect backend {backend!r} needs torch ({exc})") from None
    from l0.engine.ops import make_detector
    return make_detector(1, max_period, classes, device, backend)


class StreamGuard:
    """One stream. ``device``/``backend``: see :func:`make_stream_detector`
    (``auto``: CUDA kernel on a GPU, fused C kernel on the CPU, torch, or the
    reference when torch is absent)."""

    def __init__(self, opts: RequestOptions, max_period_cap: int, classes: TokenClasses | None = None,
                 device: str = "cpu", backend: str = "auto", expected_items: int = 0) -> None:
        self.opts = opts
        self.count = 0          # tokens fed so far
        self.verdict: Verdict | None = None
        self.stopped = False
        self._det = None
        if opts.action != "off":
            self._det = make_stream_detector(max_period_cap, classes, device, backend)
            self._det.configure(0, opts.params, expected_items)
            if self._det.backend != "reference":
                import torch
                self._tok = torch.full((1,), -1, dtype=torch.int64, device=device)

    def _step(self, tok: int) -> tuple[int, int]:
        if self._det.backend == "reference":  # plain lists in, plain lists out
            (kind,), (period,), _ = self._det.step([tok])
            return kind, period
        self._tok[0] = tok
        res = self._det.step(self._tok)
        return int(res.kind[0]), int(res.period[0])

    def feed(self, token_ids: Sequence[int]) -> tuple[int, Verdict | None]:
        """``(n_pass, verdict)``: pass on ``token_ids[:n_pass]``; ``verdict`` is
        new in this chunk (None otherwise). After a stop every chunk passes 0."""
        if self.stopped:
            return 0, None
        if self._det is None:
            self.count += len(token_ids)
            return len(token_ids), None
        new = None
        for i, tok in enumerate(token_ids):
            kind, period = self._step(int(tok))
            self.count += 1
            if kind != NONE and self.verdict is None:
                new = self.verdict = Verdict(KIND_NAMES[kind], period, self.count - 1,
                                             "stop" if self.opts.action == "stop" else "observe")
                if self.opts.action == "stop":
                    self.stopped = True
                    return i + 1, new
        return len(token_ids), new


class StreamTable:
    """Guards by stream key, thread-safe (Triton may call ``execute`` from
    several threads). ``make(opts)`` builds a guard for a new stream."""

    def __init__(self, make: Callable[[RequestOptions], StreamGuard], idle_s: float = 300.0,
                 max_streams: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self._make = make
        self.idle_s, self.max_streams, self.clock = idle_s, max_streams, clock
        self._streams: OrderedDict[str, tuple[StreamGuard, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, opts: Callable[[], RequestOptions]) -> StreamGuard:
        """The stream's guard; a new one (options from ``opts()``, which may
        raise OptionError) for a key not seen within ``idle_s``."""
        now = self.clock()
        with self._lock:
            self._evict(now)
            hit = self._streams.pop(key, None)
            guard = hit[0] if hit is not None else None
        if guard is None:
            guard = self._make(opts())
        with self._lock:
            self._streams[key] = (guard, now)
        return guard

    def drop(self, key: str) -> None:
        with self._lock:
            self._streams.pop(key, None)

    def __len__(self) -> int:
        return len(self._streams)

    def _evict(self, now: float) -> None:
        while self._streams:
            key, (_, seen) = next(iter(self._streams.items()))
            if now - seen > self.idle_s or len(self._streams) >= self.max_streams:
                del self._streams[key]
            else:
                break
