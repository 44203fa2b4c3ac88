"""The options of ``l0.wrap`` and ``l0.run``: one frozen :class:`Options`,
made from keywords by :func:`options_from` (which raises TypeError for an
unknown one)."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from l0.client import events as ev
from l0.client.retry import Retry, Timeouts


@dataclass(frozen=True)
class Options:
    """Everything ``wrap``/``run`` take besides the client (see README)."""
    retry: Retry = field(default_factory=Retry)
    timeout: Timeouts = field(default_factory=Timeouts)
    fallbacks: tuple = ()
    callbacks: ev.Callbacks = field(default_factory=ev.Callbacks)
    log: Any = None                         # an EventLog (made from a path by wrap/run)
    resume: bool = True
    check_zero_output: bool = True
    l0_resume: bool = True                  # probe for L0 servers and resume from checkpoints
    verdict: bool = False                   # L0 servers: fetch the record at the end (a Verdict event)
    verdict_wait_s: float = 2.0             # how long the record may take to show the finish
    guardrails: Any = None                  # an l0.client.guardrails.Guardrails (spec; each stream runs a fresh copy)
    drift: Any = None                       # drift monitors (a Guardrails of l0.client.drift rules)
    hold: bool = False                      # streams: deliver once the answer passed its end checks
    fleet: Any = None                       # an l0.Fleet: endpoint health shared by the client's streams
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.time


def options_from(retry=None, timeout=None, fallbacks=(), log=None, log_fsync="end", callbacks=None,
             resume=True, check_zero_output=True, l0_resume=True, verdict=False, verdict_wait_s=2.0,
             guardrails=None, drift=None, hold=False, sleep=None, clock=None, trace=None, fleet=None,
             **cbs) -> Options:
    from l0.client.eventlog import EventLog
    from l0.client.fleet import Fleet

    if callbacks is None:
        unknown = set(cbs) - {"on_start", "on_retry", "on_fallback", "on_wait", "on_resume", "on_timeout", "on_complete",
                              "on_error", "on_violation", "on_drift", "on_tool_call", "on_token", "on_event"}
        if unknown:
            raise TypeError(f"l0: unknown option(s) {sorted(unknown)}")
        callbacks = ev.Callbacks(**cbs)
    elif cbs:
        raise TypeError("l0: pass callbacks= or on_* keywords, not both")
    if trace:   # True (the global OpenTelemetry providers) or an l0.Tracing
        from l0.client.tracing import Tracing
        tracing = trace if isinstance(trace, Tracing) else Tracing()
        callbacks = dataclasses.replace(callbacks, on_event=tracing.chain(callbacks.on_event))
    if isinstance(retry, dict):
        retry = Retry(**retry)
    if isinstance(timeout, dict):
        timeout = Timeouts(**timeout)
    elif isinstance(timeout, (int, float)):
        timeout = Timeouts(inter_token_s=float(timeout))
    if log is not None and not hasattr(log, "event"):
        log = EventLog(log, fsync=log_fsync)
    if guardrails is not None:
        from l0.client.guardrails import as_guardrails
        guardrails = as_guardrails(guardrails)
    if drift is not None and drift is not False:
        from l0.client.drift import as_monitors
        drift = as_monitors(drift)
    else:
        drift = None
    return Options(retry=retry or Retry(), timeout=timeout or Timeouts(), fallbacks=tuple(fallbacks),
                   callbacks=callbacks, log=log, resume=resume, check_zero_output=check_zero_output,
                   l0_resume=l0_resume, verdict=verdict, verdict_wait_s=verdict_wait_s,
                   guardrails=guardrails, drift=drift, hold=bool(hold), fleet=fleet if fleet is not None else Fleet(),
                   sleep=sleep or asyncio.sleep, clock=clock or time.time)
