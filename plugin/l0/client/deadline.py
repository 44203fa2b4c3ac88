"""Active timeouts that never outlive a cancel: ``await within(aw, limit)``.

``asyncio.wait_for`` runs ``aw`` in a task of its own, and on Python 3.11 a
cancel that reaches it as that task finishes is swallowed: the caller's
cancel is lost and the stream reads on (a cancelled request that keeps
costing tokens). ``within`` awaits ``aw`` in the caller's own task under a
deadline instead (``asyncio.timeout`` from 3.11; a timer that cancels the
task on 3.10), so a cancel reaches the stream being read, and the stream's
own clean-up (an async generator's ``finally``, closing an HTTP response)
runs before the cancel goes on up. ``close_stream`` is the bounded close
every abandoned or finished stream gets.
"""
from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")
CLOSE_TIMEOUT_S = 2.0   # how long a stream's close() is waited for before it is abandoned

if sys.version_info >= (3, 11):
    async def within(aw: Awaitable[T], limit: float | None) -> T:
        """``await aw``, raising ``TimeoutError`` after ``limit`` seconds
        (None: no limit). A cancel of the caller is never swallowed."""
        if limit is None:
            return await aw
        async with asyncio.timeout(limit):
            return await aw
else:  # pragma: no cover - CI runs 3.11
    async def within(aw: Awaitable[T], limit: float | None) -> T:
        if limit is None:
            return await aw
        task = asyncio.current_task()
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()
        timer = asyncio.get_running_loop().call_later(limit, fire)
        try:
            return await aw
        except asyncio.CancelledError:
            if fired:
                raise asyncio.TimeoutError from None
            raise
        finally:
            timer.cancel()


async def close_stream(stream: Any) -> bool:
    """Closes ``stream`` (``close()`` or ``aclose()``, awaited in this task
    for at most :data:`CLOSE_TIMEOUT_S`). Never raises: a stream that won't
    close is abandoned. True when a close method was called."""
    fn = getattr(stream, "close", None) or getattr(stream, "aclose", None)
    if fn is None:
        return False
    try:
        res = fn()
        if inspect.isawaitable(res):
            await within(res, CLOSE_TIMEOUT_S)
    except Exception:   # a close that fails or hangs is not the caller's business
        pass
    return True
