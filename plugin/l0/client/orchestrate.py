"""Running several model calls together: :func:`race` (first answer wins, the
others are aborted), :func:`parallel` (bounded fan-out), :func:`pipe`
(sequential steps) and :func:`consensus` / :func:`consensus_of` (agreement
between several answers).

    r = await l0.race([lambda: client.chat.completions.create(**a, stream=True),
                       lambda: client.chat.completions.create(**b, stream=True)], hedge_s=0.5)
    async for chunk in r:               # every chunk of the winner, from its first
        ...

An *op* is a zero-argument callable returning an awaitable (an ``async def``,
or a lambda around ``create``) or the result itself. A result that is an async
iterator is a *stream* of chunks (whatever :func:`l0.client.chunks.parts` reads: SDK
chunk objects, their dicts, or plain strings); anything else is a *value*.

Aborting a request means closing its stream: ``close()`` (the SDK's
``AsyncStream``, ``L0Stream``) or ``aclose()`` (async generators). Closing the
HTTP response is what makes vLLM abort the request on the server.

Pure asyncio and stdlib. Pydantic is used duck-typed (``model_dump`` /
``model_validate``), never imported.
"""
from __future__ import annotations

import asyncio
import dataclasses
import difflib
import inspect
import json
import math
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from l0.client import chunks as ck, events as ev

CLOSE_TIMEOUT_S = 2.0
WINS = ("first_token", "complete")
STRATEGIES = ("majority", "unanimous", "weighted", "best")
RESOLVES = ("vote", "merge", "fail")
MISSING = "<missing>"    # the vote of an answer without a field; never a canonical JSON text


# --------------------------------------------------------------------------- helpers

def _emit(on_event: Callable[[ev.Event], Any] | None, event: type[ev.Event], **data: Any) -> None:
    """Calls ``on_event`` with a typed event (:mod:`l0.client.events`). A failing
    callback is ignored: observers must never change the outcome."""
    if on_event is None:
        return
    try:
        on_event(event(**data))
    except Exception:
        pass


def _is_stream(x: Any) -> bool:
    # Strings and bytes are iterable but never async-iterable, so this is exact.
    return hasattr(x, "__aiter__")


async def _call(op: Callable[[], Any]) -> Any:
    """``op()``, awaited when it returns an awaitable."""
    res = op()
    if inspect.isawaitable(res):
        res = await res
    return res


async def _close(stream: Any) -> bool:
    """Closes ``stream`` (``close()`` or ``aclose()``, awaited for at most
    :data:`CLOSE_TIMEOUT_S`). Never raises: a stream that won't close is
    abandoned, the request it belonged to has already lost. True when a close
    method was called."""
    fn = getattr(stream, "close", None) or getattr(stream, "aclose", None)
    if fn is None:
        return False
    try:
        res = fn()
        if inspect.isawaitable(res):
            await asyncio.wait_for(res, CLOSE_TIMEOUT_S)
    except Exception:   # a loser's close errors (or timeout) are not the caller's business
        pass
    return True


def _has_content(chunk: Any) -> bool:
    """Whether a chunk carries something of the answer: text, token ids,
    tool-call pieces or a finish reason (a role-only first chunk does not).
    Chunks :func:`l0.client.chunks.parts` can't read count as content."""
    try:
        p = ck.parts(chunk)
    except TypeError:
        return chunk is not None
    return bool(p.text or p.token_ids or p.tool_calls or p.finish_reason)


def _is_chunk(x: Any) -> bool:
    return isinstance(x, str) or hasattr(x, "model_dump") or (isinstance(x, Mapping) and "choices" in x)


def _text_of(items: Sequence[Any]) -> str:
    return "".join(ck.parts(c).text for c in items)


async def _drain(it: Any) -> list:
    out = []
    async for x in it:
        out.append(x)
    return out


def _completion_text(x: Any) -> str | None:
    """The first choice's text when ``x`` is a whole (non-streamed)
    ``ChatCompletion``/``Completion``, else None."""
    kind = x.get("object") if isinstance(x, Mapping) else getattr(x, "object", None)
    if kind not in ("chat.completion", "text_completion"):
        return None
    texts = choices_of(x)
    return texts[0] if texts else ""


# --------------------------------------------------------------------------- race

class RaceFailed(Exception):
    """Every op of a :func:`race` failed. ``errors``: op index -> exception."""

    def __init__(self, errors: dict[int, BaseException]) -> None:
        self.errors = dict(errors)
        listed = "; ".join(f"[{i}] {type(e).__name__}: {e}" for i, e in sorted(self.errors.items()))
        super().__init__(f"l0: all {len(self.errors)} ops of the race failed: {listed}")


class Rejected(Exception):
    """An op's complete result failed the race's ``accept``; ``value`` is what
    was rejected (the value, or the stream's text)."""

    def __init__(self, index: int, value: Any) -> None:
        self.index, self.value = index, value
        super().__init__(f"l0: op {index}'s result was rejected by accept: {str(value)[:80]!r}")


class EmptyStream(Exception):
    """An op's stream ended before any content chunk (``win="first_token"``)."""


class Race:
    """The outcome of :func:`race`.

    ``index``: the winning op. ``value``: its result when it was a value op
    (None for a stream). ``stream``: the winner's stream object (None for a
    value), e.g. an ``L0Stream`` to ask for its ``verdict()``.

    For a stream the Race is itself an async iterator over *all* the winner's
    chunks exactly once, in order: those already read while racing, then the
    rest. ``chunks``: the chunks yielded so far. ``text()`` reads what is left
    and returns the text of every chunk. ``close()`` (or leaving ``async
    with``) closes the winner's stream. Iterating a value op's Race raises
    TypeError.

    ``started``: the op indexes started, in order. ``cancelled``: the losers
    that were cancelled and closed (ops that failed are in ``errors`` instead:
    index -> exception).
    """

    def __init__(self, index: int, *, value: Any = None, stream: Any = None, it: Any = None,
                 buffered: Sequence[Any] = (), exhausted: bool = False, started: Sequence[int] = (),
                 cancelled: Sequence[int] = (), errors: dict[int, BaseException] | None = None) -> None:
        self.index = index
        self.value = value
        self.stream = stream
        self.chunks: list[Any] = []
        self.started = list(started)
        self.cancelled = list(cancelled)
        self.errors = dict(errors or {})
        self._it = it
        self._buffered = list(buffered)
        self._pos = 0
        self._exhausted = exhausted

    @property
    def is_stream(self) -> bool:
        return self._it is not None

    def __aiter__(self) -> "Race":
        if self._it is None:
            raise TypeError(f"l0: op {self.index} returned a value, not a stream (see .value)")
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            raise TypeError(f"l0: op {self.index} returned a value, not a stream (see .value)")
        if self._pos < len(self._buffered):
            chunk = self._buffered[self._pos]
            self._pos += 1
        else:
            if self._exhausted:
                raise StopAsyncIteration
            try:
                chunk = await self._it.__anext__()
            except StopAsyncIteration:
                self._exhausted = True
                raise
        self.chunks.append(chunk)
        return chunk

    async def text(self) -> str:
        """The whole text of the winner's stream (reads it to the end)."""
        async for _ in self:
            pass
        return _text_of(self.chunks)

    async def close(self) -> None:
        """Closes the winner's stream (never raises; see :func:`_close`)."""
        if self.stream is not None:
            self._exhausted = True
            self._buffered, self._pos = [], 0
            await _close(self.stream)

    async def __aenter__(self) -> "Race":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        kind = "stream" if self.is_stream else "value"
        return (f"Race(index={self.index}, {kind}, started={self.started}, cancelled={self.cancelled}, "
                f"errors={sorted(self.errors)})")


@dataclass
class _Entry:
    task: asyncio.Task | None = None
    stream: Any = None
    it: Any = None
    buffered: list = field(default_factory=list)
    value: Any = None
    exhausted: bool = False


class _Racer:
    def __init__(self, ops: list, hedge_s: float | None, win: str, accept: Callable[[Any], bool] | None,
                 on_event: Callable[[ev.Event], Any] | None) -> None:
        self.ops, self.hedge_s, self.win, self.accept, self.on_event = ops, hedge_s, win, accept, on_event
        self.entries: dict[int, _Entry] = {}
        self.reports: list[tuple[int, BaseException | None]] = []   # in the order ops finished
        self.wake = asyncio.Event()
        self.progress = False      # some op produced content / returned: hedging stops

    def start(self, i: int, reason: str) -> None:
        e = self.entries[i] = _Entry()
        e.task = asyncio.ensure_future(self.run(i, e))
        _emit(self.on_event, ev.RaceStart, index=i, reason=reason)

    def report(self, i: int, exc: BaseException | None) -> None:
        self.reports.append((i, exc))
        self.wake.set()

    async def run(self, i: int, e: _Entry) -> None:
        try:
            await self.drive(i, e)
        except asyncio.CancelledError:
            raise              # a loser: the coordinator closes its stream
        except Exception as exc:
            self.report(i, exc)        # first, so failing over does not wait for the close
            if e.stream is not None:
                await _close(e.stream)
        except BaseException as exc:   # KeyboardInterrupt and the like: let the race see it, then go on up
            self.report(i, exc)
            raise
        else:
            self.report(i, None)

    async def drive(self, i: int, e: _Entry) -> None:
        res = await _call(self.ops[i])
        if not _is_stream(res):
            if self.accept is not None and not self.accept(res):
                raise Rejected(i, res)
            self.progress = True
            e.value = res
            return
        # Stored before the next await, so a cancel from here on finds the stream to close.
        e.stream, e.it = res, res.__aiter__()
        while True:
            try:
                chunk = await e.it.__anext__()
            except StopAsyncIteration:
                e.exhausted = True
                break
            e.buffered.append(chunk)
            if _has_content(chunk):
                self.progress = True
                if self.win == "first_token":
                    return
        if self.win == "first_token":
            raise EmptyStream(f"l0: op {i}'s stream ended before any content")
        if self.accept is not None:
            text = _text_of(e.buffered)
            if not self.accept(text):
                raise Rejected(i, text)

    async def go(self) -> Race:
        n = len(self.ops)
        next_i = 0
        if self.hedge_s is None:
            for i in range(n):
                self.start(i, "initial")
            next_i = n
        else:
            self.start(0, "initial")
            next_i = 1
        last_start = time.monotonic()
        errors: dict[int, BaseException] = {}
        seen = 0
        winner: int | None = None
        try:
            while winner is None:
                self.wake.clear()
                while seen < len(self.reports) and winner is None:
                    i, exc = self.reports[seen]
                    seen += 1
                    if exc is None:
                        winner = i
                        break
                    errors[i] = exc
                    _emit(self.on_event, ev.RaceError, index=i, error=f"{type(exc).__name__}: {exc}")
                    if not isinstance(exc, Exception):
                        raise exc
                    if next_i < n:                 # fail over at once, hedging or not
                        self.start(next_i, "failover")
                        next_i += 1
                        last_start = time.monotonic()
                if winner is not None:
                    break
                if len(errors) == n:
                    raise RaceFailed(errors)
                timeout = None
                if self.hedge_s is not None and next_i < n and not self.progress:
                    timeout = max(0.0, last_start + self.hedge_s - time.monotonic())
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    # The reports list, not the event, is the truth: nothing is lost here.
                    if not self.progress and next_i < n:
                        self.start(next_i, "hedge")
                        next_i += 1
                        last_start = time.monotonic()
        except BaseException:     # all failed, or race() itself cancelled: stop everything still running
            await self.cleanup(keep=None, errors=errors)
            raise
        # Ops that failed in the same tick as the winner failed on their own:
        # they are errors, not cancelled losers.
        for i, exc in self.reports[seen:]:
            if exc is not None:
                errors[i] = exc
                _emit(self.on_event, ev.RaceError, index=i, error=f"{type(exc).__name__}: {exc}")
        cancelled = await self.cleanup(keep=winner, errors=errors)
        _emit(self.on_event, ev.RaceWinner, index=winner)
        w = self.entries[winner]
        return Race(winner, value=w.value, stream=w.stream, it=w.it, buffered=w.buffered,
                    exhausted=w.exhausted, started=sorted(self.entries), cancelled=cancelled, errors=errors)

    async def cleanup(self, keep: int | None, errors: dict | None = None) -> list[int]:
        """Cancels and closes every started op but ``keep`` and those that
        failed (they close their own stream). Returns the cancelled indexes."""
        errors = errors or {}
        losers = [i for i in sorted(self.entries) if i != keep and i not in errors]
        for i in losers:
            self.entries[i].task.cancel()
        # Failed ops may still be closing their stream (bounded): wait for those too.
        await asyncio.gather(*(e.task for e in self.entries.values()), return_exceptions=True)
        await asyncio.gather(*(_close(self.entries[i].stream) for i in losers
                               if self.entries[i].stream is not None))
        for i in losers:
            _emit(self.on_event, ev.RaceCancel, index=i)
        return losers


async def race(ops: Sequence[Callable[[], Any]], *, hedge_s: float | None = None, win: str = "first_token",
               accept: Callable[[Any], bool] | None = None,
               on_event: Callable[[ev.Event], Any] | None = None) -> Race:
    """Runs ``ops`` against each other and returns the winner as a :class:`Race`.

    Starting: without ``hedge_s`` every op starts at once. With ``hedge_s``
    op 0 starts alone, and the next op starts when no op has made progress
    (a content chunk, or a value returned) within ``hedge_s`` seconds of the
    latest start. Whatever ``hedge_s``, an op failing starts the next
    unstarted op at once.

    Winning: a value op wins when it returns. A stream op wins, with
    ``win="first_token"``, on its first chunk with content (text, token ids,
    tool calls or a finish reason: role-only chunks don't count, nor do empty
    strings); a stream ending before one fails (:class:`EmptyStream`). With
    ``win="complete"`` a stream wins when it ends without error (its chunks
    are buffered). ``accept(value)`` / ``accept(text)`` checks a value, or a
    complete stream's text; False (or raising) makes that op fail
    (:class:`Rejected`). It is not applied to ``first_token`` streams, which
    win before their text exists. When several ops finish in the same loop
    tick, the one that finished first wins.

    Losing: at the first winner every other started op is cancelled and its
    stream closed (at most 2 s each, errors swallowed) before ``race``
    returns; ops not started never start. An op that fails has its stream
    closed too. If ``race`` itself is cancelled, every op is.

    ``on_event`` gets typed events (:mod:`l0.client.events`, loggable like a
    stream's): ``race_start`` (``index``, ``reason``:
    initial/hedge/failover), ``race_error`` (``index``, ``error``),
    ``race_cancel`` (``index``) and ``race_winner`` (``index``), each with
    ``ts``; its exceptions are ignored.

    Raises :class:`RaceFailed` (with every error) when all ops fail, and
    ValueError for no ops, an unknown ``win`` or a negative ``hedge_s``.
    """
    ops = list(ops)
    if not ops:
        raise ValueError("l0: race needs at least one op")
    if not all(callable(op) for op in ops):
        raise ValueError("l0: race ops must be zero-argument callables")
    if win not in WINS:
        raise ValueError(f"l0: unknown win {win!r}; choose one of {list(WINS)}")
    if hedge_s is not None and not (hedge_s >= 0):
        raise ValueError("l0: hedge_s must be >= 0 or None")
    return await _Racer(ops, hedge_s, win, accept, on_event).go()


# --------------------------------------------------------------------------- parallel, pipe

async def parallel(ops: Sequence[Callable[[], Any]], *, concurrency: int = 4,
                   return_exceptions: bool = False) -> list:
    """Runs zero-argument callables (async, or returning a value) with at most
    ``concurrency`` in flight, starting them in order; returns their results
    in op order.

    Without ``return_exceptions`` the first op to fail (in time) cancels the
    others, and its exception is raised once they have stopped. With it a
    failing op's exception (an ``Exception``; anything else still propagates)
    takes its place in the results. Raises ValueError unless ``concurrency``
    is an int >= 1.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"l0: parallel concurrency must be an int >= 1, not {concurrency!r}")
    ops = list(ops)
    results: list[Any] = [None] * len(ops)
    cursor = 0
    first_error: list[BaseException] = []

    async def worker() -> None:
        nonlocal cursor
        while cursor < len(ops) and not first_error:
            i = cursor
            cursor += 1
            try:
                results[i] = await _call(ops[i])
            except Exception as exc:
                if not return_exceptions:
                    first_error.append(exc)
                    raise
                results[i] = exc

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(ops)))]
    if not workers:
        return results
    try:
        await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for w in workers:
            w.cancel()
        outcomes = await asyncio.gather(*workers, return_exceptions=True)
    if first_error:
        raise first_error[0]
    for out in outcomes:     # a BaseException that was not an op failure (KeyboardInterrupt, ...)
        if isinstance(out, BaseException) and not isinstance(out, asyncio.CancelledError):
            raise out
    return results


async def _settle(out: Any) -> Any:
    """An async-iterator result read to the end: its text when every item is a
    chunk (or a string), else the list of items."""
    if not _is_stream(out):
        return out
    try:
        items = await _drain(out)
    finally:
        await _close(out)
    if all(_is_chunk(x) for x in items):
        return _text_of(items)
    return items


async def pipe(steps: Sequence[Callable[[Any], Any]], value: Any = None, *,
               on_event: Callable[[ev.Event], Any] | None = None) -> Any:
    """Feeds ``value`` through ``steps`` in order: each step gets the previous
    output (sync or async; an async-iterator output is read to the end and
    becomes its text when it yields chunks, else the list of its items).
    Returns the last output (``value`` itself when there are no steps).

    A step's exception is re-raised with ``exc.l0_step = i`` and a note
    naming the step. ``on_event`` gets typed events ``pipe_step``
    (``index``, before the step), ``pipe_step_done`` (``index``) and
    ``pipe_error`` (``index``, ``error``), each with ``ts``.
    """
    for i, step in enumerate(steps):
        _emit(on_event, ev.PipeStep, index=i)
        try:
            out = step(value)
            if inspect.isawaitable(out):
                out = await out
            value = await _settle(out)
        except Exception as exc:
            try:
                exc.l0_step = i
            except Exception:
                pass
            if hasattr(exc, "add_note"):
                name = getattr(step, "__qualname__", None) or type(step).__name__
                exc.add_note(f"l0: in pipe step {i} ({name})")
            _emit(on_event, ev.PipeError, index=i, error=f"{type(exc).__name__}: {exc}")
            raise
        _emit(on_event, ev.PipeStepDone, index=i)
    return value


# --------------------------------------------------------------------------- consensus

class ConsensusFailed(Exception):
    """Consensus was not reached (``resolve="fail"``), or no op of
    :func:`consensus_of` succeeded. ``result``: the :class:`Consensus` (None
    when there was nothing to compare); ``failed``: op index -> exception."""

    def __init__(self, message: str, result: "Consensus | None" = None,
                 failed: dict[int, BaseException] | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.failed = dict(failed or {})


@dataclass(frozen=True)
class FieldAgreement:
    """One field of object answers. ``value``: the agreed value (the first
    original value among its voters; None when ``missing`` won);
    ``agreement``: its voters' weight / all the weight; ``votes``: canonical
    JSON (or ``"<missing>"``) -> weight; ``dissent``: the answer indexes
    that differ."""
    value: Any
    agreement: float
    votes: dict[str, float]
    dissent: list[int]
    missing: bool = False


@dataclass
class Consensus:
    """The outcome of :func:`consensus`. See there for ``agreement``/``ok``.

    ``votes``: text answers: normalised text -> weight; object answers:
    field -> {canonical JSON -> weight}. ``dissent``: ``(index, answer)`` of
    every answer differing from the value (objects: in at least one field).
    ``fields``: per-field :class:`FieldAgreement` (object answers only).
    ``conflicts``: ``resolve="merge"`` on objects: field -> distinct candidate
    values of the fields below threshold. ``answers``: the answers compared;
    ``indexes``: their indexes (op indexes for :func:`consensus_of`, where
    ``failed`` holds the ops that failed)."""
    value: Any
    agreement: float
    ok: bool
    strategy: str
    votes: dict
    dissent: list
    answers: list
    fields: dict = field(default_factory=dict)
    conflicts: dict = field(default_factory=dict)
    indexes: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict (models dumped, exceptions as text)."""
        return {
            "value": _plain(self.value),
            "agreement": self.agreement,
            "ok": self.ok,
            "strategy": self.strategy,
            "votes": self.votes,
            "dissent": [[i, _plain(a)] for i, a in self.dissent],
            "fields": {k: {"value": _plain(f.value), "agreement": f.agreement, "votes": f.votes,
                           "dissent": f.dissent, "missing": f.missing} for k, f in self.fields.items()},
            "conflicts": {k: [_plain(v) for v in vs] for k, vs in self.conflicts.items()},
            "answers": [_plain(a) for a in self.answers],
            "indexes": list(self.indexes),
            "failed": {str(i): f"{type(e).__name__}: {e}" for i, e in self.failed.items()},
        }


def normalize_text(s: str) -> str:
    """The default text normalisation: Unicode NFKC, casefold, whitespace
    runs collapsed to one space, and surrounding whitespace and trailing
    ``.!?;:`` removed (``" Paris. "`` -> ``"paris"``)."""
    s = " ".join(unicodedata.normalize("NFKC", s).casefold().split())
    return re.sub(r"[\s.!?;:]+\Z", "", s)


def _is_object(x: Any) -> bool:
    return (isinstance(x, Mapping) or callable(getattr(x, "model_dump", None))
            or (dataclasses.is_dataclass(x) and not isinstance(x, type)))


def _as_dict(x: Any) -> dict:
    if isinstance(x, Mapping):
        return dict(x)
    if callable(getattr(x, "model_dump", None)):
        return x.model_dump()
    return dataclasses.asdict(x)


def _plain(x: Any) -> Any:
    """Plain data: models dumped, dataclasses as dicts, tuples as lists."""
    if isinstance(x, Mapping) or _is_object(x):
        return {str(k): _plain(v) for k, v in _as_dict(x).items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _canon(x: Any, norm: Callable[[str], str]) -> Any:
    """The comparable form of a value: strings normalised, objects as plain
    dicts, integral floats as ints (``1.0`` equals ``1``; bools stay bools)."""
    if isinstance(x, str):
        return norm(x)
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    if isinstance(x, Mapping) or _is_object(x):
        return {str(k): _canon(v, norm) for k, v in _as_dict(x).items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v, norm) for v in x]
    return x


def _key(x: Any, norm: Callable[[str], str], text: bool = False) -> str:
    """The vote key of a whole answer or a field value: canonical JSON of
    :func:`_canon`, or with ``text`` (answers that are all strings) the
    normalised text itself. Never ``"<missing>"``, which isn't JSON."""
    if text:
        return norm(x)
    return json.dumps(_canon(x, norm), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _tally(keys: Sequence[str], weights: Sequence[float]) -> tuple[dict[str, float], str]:
    """Votes per key (in first-seen order) and the winner: the most weight,
    ties to the key seen first."""
    votes: dict[str, float] = {}
    for k, w in zip(keys, weights):
        votes[k] = votes.get(k, 0) + w
    best = None
    for k, w in votes.items():      # dicts keep first-seen order: a tie keeps the earlier key
        if best is None or w > votes[best]:
            best = k
    return votes, best


def _reaches(agreement: float, threshold: float) -> bool:
    return agreement >= threshold - 1e-9     # weights are floats: 0.1+0.2 must reach 0.3


def _check(strategy: str, threshold: float, resolve: str, weights: Sequence[float] | None, n: int | None,
           score: Any = None) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"l0: unknown consensus strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if resolve not in RESOLVES:
        raise ValueError(f"l0: unknown consensus resolve {resolve!r}; choose one of {list(RESOLVES)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"l0: consensus threshold must be a number in [0, 1], not {threshold!r}")
    if strategy == "weighted":
        if weights is None:
            raise ValueError("l0: strategy='weighted' needs weights (one per answer)")
        ws = list(weights)
        if n is not None and len(ws) != n:
            raise ValueError(f"l0: {len(ws)} weights for {n} answers")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
               for w in ws):
            raise ValueError("l0: consensus weights must be finite numbers >= 0")
        if not any(w > 0 for w in ws):
            raise ValueError("l0: consensus weights are all zero")
    elif weights is not None:
        raise ValueError("l0: weights are only used by strategy='weighted'")
    if score is not None and strategy != "best":
        raise ValueError("l0: score is only used by strategy='best'")


def consensus(values: Iterable[Any], *, strategy: str = "majority", threshold: float = 0.5,
              resolve: str = "vote", weights: Sequence[float] | None = None,
              score: Callable[[Any], float] | None = None, normalize: Callable[[str], str] | None = None,
              schema: Any = None) -> Consensus:
    """How far ``values`` (several answers to one question) agree, and on what.

    Answers are either all *whole* answers (strings, or other scalars/lists,
    compared by their normalised text / canonical JSON) or all *objects*
    (dicts, pydantic models via ``model_dump()``, dataclasses), compared
    field by field over the union of their top-level keys: nested values by
    canonical JSON with strings normalised; an answer lacking a key votes
    ``"<missing>"`` for it. Strings are normalised by ``normalize``
    (default :func:`normalize_text`).

    Votes weigh 1 each, or ``weights[i]`` with ``strategy="weighted"``. A
    winner is the key with the most weight; ties go to the one seen first
    (lowest answer index). Agreement of a winner = its weight / all weight.

    * ``majority`` / ``weighted``: whole answers: ``agreement`` is the
      winner's and ``ok`` iff ``agreement >= threshold``. Objects: each field
      has its own winner and agreement, ``ok`` iff *every* field's agreement
      ``>= threshold``, and ``agreement`` is the mean over fields (1.0 with
      no fields).
    * ``unanimous``: the same, with ``ok`` iff every agreement is 1.0
      (``threshold`` is not used).
    * ``best``: the single answer with the highest ``score(answer)``; with
      no ``score``, the one most similar to the others (sum of similarities:
      difflib ratio of normalised texts; for objects the share of equal
      fields over both answers' keys). Ties go to the lowest index.
      ``agreement`` is the share of answers equal to it (objects: in every
      field), ``ok`` iff ``agreement >= threshold``; ``value`` is always that
      answer, and per-field agreements are measured against it.

    ``value``: whole answers: the first original answer with the winning
    key. Objects: the dict of winning field values (first original value of
    each; a field whose winner is ``"<missing>"`` is left out), validated
    with ``schema.model_validate`` when ``schema`` is given (its validation
    error propagates).

    When ``ok`` is False ``resolve`` says what happens: ``vote`` returns the
    result as is; ``merge`` also lists, for object fields below threshold,
    their distinct candidate values (first seen first, ``"<missing>"`` left
    out) in ``conflicts`` (same as ``vote`` for whole answers); ``fail``
    raises :class:`ConsensusFailed` with the result as ``.result``.

    Raises ValueError for no answers, a mix of objects and whole answers, an
    unknown strategy or resolve, a threshold outside [0, 1], ``weights``
    without ``weighted`` (or missing, of the wrong length, negative or all
    zero with it), and ``schema`` with whole answers.
    """
    return _consensus(list(values), None, strategy=strategy, threshold=threshold, resolve=resolve,
                      weights=weights, score=score, normalize=normalize, schema=schema)


def _consensus(answers: list, indexes: list[int] | None, *, strategy: str, threshold: float, resolve: str,
               weights: Sequence[float] | None, score: Callable[[Any], float] | None,
               normalize: Callable[[str], str] | None, schema: Any, failed: dict | None = None) -> Consensus:
    if not answers:
        raise ValueError("l0: consensus needs at least one answer")
    _check(strategy, threshold, resolve, weights, len(answers), score)
    n = len(answers)
    idx = list(indexes) if indexes is not None else list(range(n))
    ws = list(weights) if strategy == "weighted" else [1] * n
    norm = normalize or normalize_text
    kinds = {_is_object(a) for a in answers}
    if len(kinds) > 1:
        raise ValueError("l0: consensus answers must be all objects or all whole answers (text)")
    objects = kinds == {True}
    if schema is not None and not objects:
        raise ValueError("l0: consensus schema needs object answers (dicts, models, dataclasses)")

    if not objects:
        text = all(isinstance(a, str) for a in answers)
        keys = [_key(a, norm, text) for a in answers]
        votes, win = _tally(keys, ws)
        if strategy == "best":
            def similarity(i: int, j: int) -> float:
                if text:
                    return difflib.SequenceMatcher(None, keys[i], keys[j], autojunk=False).ratio()
                return 1.0 if keys[i] == keys[j] else 0.0
            win = keys[_best(answers, score, similarity)]
            agreement = sum(1 for k in keys if k == win) / n
        else:
            agreement = votes[win] / sum(ws)
        ok = (votes[win] == sum(ws)) if strategy == "unanimous" else _reaches(agreement, threshold)
        value = answers[keys.index(win)]
        dissent = [(idx[i], a) for i, (a, k) in enumerate(zip(answers, keys)) if k != win]
        result = Consensus(value=value, agreement=agreement, ok=ok, strategy=strategy, votes=votes,
                           dissent=dissent, answers=answers, indexes=idx, failed=dict(failed or {}))
    else:
        result = _objects(answers, idx, ws, strategy, threshold, resolve, score, norm, failed)
        if schema is not None:
            result.value = schema.model_validate(result.value)
    if not result.ok and resolve == "fail":
        raise ConsensusFailed(f"l0: no consensus ({strategy}): agreement {result.agreement:.3f}"
                              + (f" < threshold {threshold}" if strategy != "unanimous" else " < 1.0"),
                              result=result, failed=failed)
    return result


def _best(answers: list, score: Callable[[Any], float] | None,
          similarity: Callable[[int, int], float]) -> int:
    """The index of the best answer: highest ``score``, or the most similar to
    the others; ties to the lowest index."""
    n = len(answers)
    if score is not None:
        scores = [score(a) for a in answers]
    else:
        scores = [sum(similarity(i, j) for j in range(n) if j != i) for i in range(n)]
    best = 0
    for i in range(1, n):
        if scores[i] > scores[best]:
            best = i
    return best


def _objects(answers: list, idx: list[int], ws: list, strategy: str, threshold: float, resolve: str,
             score: Callable[[Any], float] | None, norm: Callable[[str], str],
             failed: dict | None) -> Consensus:
    dicts = [{str(k): v for k, v in _as_dict(a).items()} for a in answers]
    names: list[str] = []
    for d in dicts:
        names += [k for k in d if k not in names]
    # keys[f][i]: answer i's vote for field f
    keys = {f: [(_key(d[f], norm) if f in d else MISSING) for d in dicts] for f in names}
    n, total = len(answers), sum(ws)

    pick = None
    if strategy == "best":
        def similarity(i: int, j: int) -> float:
            both = [f for f in names if f in dicts[i] or f in dicts[j]]
            if not both:
                return 1.0
            return sum(1 for f in both if keys[f][i] == keys[f][j]) / len(both)
        pick = _best(answers, score, similarity)

    fields: dict[str, FieldAgreement] = {}
    conflicts: dict[str, list] = {}
    votes_all: dict[str, dict] = {}
    value: dict[str, Any] = {}
    any_below = False
    for f in names:
        votes, win = _tally(keys[f], ws)
        if pick is not None:
            win = keys[f][pick]
        agreement = votes[win] / total
        voter = keys[f].index(win)
        missing = win == MISSING
        fa = FieldAgreement(value=None if missing else dicts[voter][f], agreement=agreement, votes=votes,
                            dissent=[idx[i] for i, k in enumerate(keys[f]) if k != win], missing=missing)
        fields[f], votes_all[f] = fa, votes
        if not missing:
            value[f] = fa.value
        below = votes[win] != total if strategy == "unanimous" else not _reaches(agreement, threshold)
        any_below = any_below or below
        if below and resolve == "merge":
            firsts = [keys[f].index(k) for k in votes if k != MISSING]
            conflicts[f] = [dicts[i][f] for i in firsts]

    if pick is not None:
        agreement = sum(1 for i in range(n) if all(keys[f][i] == keys[f][pick] for f in names)) / n
        ok = _reaches(agreement, threshold)
        if ok:
            conflicts = {}
        value = dict(dicts[pick])
    else:
        agreement = sum(fa.agreement for fa in fields.values()) / len(fields) if fields else 1.0
        ok = not any_below
    dissenting = {i for fa in fields.values() for i in fa.dissent}
    dissent = [(idx[i], a) for i, a in enumerate(answers) if idx[i] in dissenting]
    return Consensus(value=value, agreement=agreement, ok=ok, strategy=strategy, votes=votes_all,
                     dissent=dissent, answers=answers, fields=fields, conflicts=conflicts, indexes=idx,
                     failed=dict(failed or {}))


async def consensus_of(ops: Sequence[Callable[[], Any]], *, concurrency: int = 4, **kw: Any) -> Consensus:
    """Runs ``ops`` (at most ``concurrency`` at once, see :func:`parallel`)
    and returns :func:`consensus` of their results; ``kw`` are consensus's
    options (``weights``: one per op).

    An op may return a string, an object, a stream (read to the end: its
    text), or a whole ``ChatCompletion``/``Completion`` (its first choice's
    text; use :func:`choices_of` for ``n > 1``). Ops that fail are left out:
    ``result.failed`` maps their index to the exception, and ``dissent`` /
    ``indexes`` use op indexes. Raises :class:`ConsensusFailed` when no op
    succeeded, and the ValueErrors of :func:`consensus` before running
    anything.
    """
    ops = list(ops)
    if not ops:
        raise ValueError("l0: consensus_of needs at least one op")
    _check(kw.get("strategy", "majority"), kw.get("threshold", 0.5), kw.get("resolve", "vote"),
           kw.get("weights"), len(ops), kw.get("score"))

    async def one(op: Callable[[], Any]) -> Any:
        out = await _settle(await _call(op))
        text = _completion_text(out)
        return out if text is None else text

    results = await parallel([(lambda op=op: one(op)) for op in ops], concurrency=concurrency,
                             return_exceptions=True)
    failed = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    good = [i for i in range(len(ops)) if i not in failed]
    if not good:
        listed = "; ".join(f"[{i}] {type(e).__name__}: {e}" for i, e in failed.items())
        raise ConsensusFailed(f"l0: every op of consensus_of failed: {listed}", failed=failed)
    if kw.get("weights") is not None:
        kw = {**kw, "weights": [kw["weights"][i] for i in good]}
        if not any(w > 0 for w in kw["weights"]):
            raise ConsensusFailed("l0: every op with weight > 0 failed", failed=failed)
    opts = {"strategy": "majority", "threshold": 0.5, "resolve": "vote", "weights": None, "score": None,
            "normalize": None, "schema": None, **kw}
    return _consensus([results[i] for i in good], good, failed=failed, **opts)


def choices_of(completion: Any) -> list[str]:
    """The text of every choice of a non-streamed ``ChatCompletion`` (message
    content) or ``Completion`` (text), SDK object or dict, in choice-index
    order; a choice without text (tool calls only) gives ``""``. Raises
    TypeError for anything ``l0.client.chunks.as_dict`` can't read."""
    d = ck.as_dict(completion)
    if not isinstance(d, Mapping):
        raise TypeError(f"l0: not a completion: {type(completion).__name__}")
    choices = list(d.get("choices") or ())
    order = sorted(range(len(choices)), key=lambda p: (choices[p].get("index", p), p))
    out = []
    for p in order:
        c = choices[p]
        msg = c.get("message")
        out.append(((msg or {}).get("content") if msg is not None else c.get("text")) or "")
    return out


async def samples(client: Any, n: int, *, schema: Any = None, **params: Any) -> list:
    """``n`` answers from one chat request (``n`` choices: vLLM samples them
    in one batch, sharing the prompt's prefill) — the cheap source of
    samples for :func:`consensus`. ``client``: ``l0.wrap(AsyncOpenAI(...))``
    or a plain ``AsyncOpenAI``; ``params``: ``chat.completions.create``'s
    (``model``, ``messages``, ``temperature``, ``seed``, ...).

    With ``schema`` (a Pydantic model class or a JSON-schema dict) the
    request asks for that structured output and each answer is parsed into
    a dict (a choice that doesn't parse is dropped, so fewer than ``n`` may
    come back): ready for field-by-field consensus
    (``consensus(answers, schema=Model)``). Raises ValueError for
    ``n < 1``."""
    if n < 1:
        raise ValueError("l0: samples needs n >= 1")
    if schema is not None:
        from l0.client.structured import _Schema

        params["response_format"] = _Schema(schema, None).response_format()
    out = choices_of(await client.chat.completions.create(n=n, **params))
    if schema is None:
        return out
    from l0.client.structured import parse

    parsed = []
    for text in out:
        try:
            parsed.append(parse(text))
        except ValueError:
            continue
    return parsed
