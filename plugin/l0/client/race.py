"""Running several model calls together: :func:`race` (first answer wins, the
others are aborted), :func:`parallel` (bounded fan-out) and :func:`pipe`
(sequential steps). Agreement between answers is :mod:`l0.client.consensus`.

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
import inspect
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from l0.client import chunks as ck, events as ev
from l0.client.deadline import CLOSE_TIMEOUT_S, close_stream  # noqa: F401 - CLOSE_TIMEOUT_S: race's bound too

WINS = ("first_token", "complete")


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


async def call_op(op: Callable[[], Any]) -> Any:
    """``op()``, awaited when it returns an awaitable."""
    res = op()
    if inspect.isawaitable(res):
        res = await res
    return res


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


def completion_text(x: Any) -> str | None:
    """The first choice's text when ``x`` is a whole (non-streamed)
    ``ChatCompletion``/``Completion``, else None."""
    kind = x.get("object") if isinstance(x, Mapping) else getattr(x, "object", None)
    if kind not in ("chat.completion", "text_completion"):
        return None
    texts = ck.choices_of(x)
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
            await close_stream(self.stream)

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
                await close_stream(e.stream)
        except BaseException as exc:   # KeyboardInterrupt and the like: let the race see it, then go on up
            self.report(i, exc)
            raise
        else:
            self.report(i, None)

    async def drive(self, i: int, e: _Entry) -> None:
        res = await call_op(self.ops[i])
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
        await asyncio.gather(*(close_stream(self.entries[i].stream) for i in losers
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
                results[i] = await call_op(ops[i])
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


async def settle(out: Any) -> Any:
    """An async-iterator result read to the end: its text when every item is a
    chunk (or a string), else the list of items."""
    if not _is_stream(out):
        return out
    try:
        items = await _drain(out)
    finally:
        await close_stream(out)
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
            value = await settle(out)
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
