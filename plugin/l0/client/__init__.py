"""The client wing: what ``pip install l0`` is (httpx, no torch, no vLLM).

``wrap`` (``l0.wrap``/``l0.run``: a hardened stream that retries, fails over
and resumes), ``session``/``resume``/``chunks``/``events``/``retry`` (its
parts), ``eventlog`` (record, replay, diverge), ``structured`` (typed
answers), ``guardrails``/``drift``/``content`` (content checks),
``orchestrate`` (race, parallel, pipe, consensus), ``failover``
(``FailoverClient``, plain HTTP), ``stream`` (an SSE reader). It speaks to the
engine only through :mod:`l0.contract`.

``from l0.client import FailoverClient, RetryPolicy`` (the path the failover
client was published under) still works: those names load on first use.
"""
_FAILOVER = ("FailoverClient", "RetryPolicy", "StreamOutcome", "Event", "Delta", "HTTPStatus")


def __getattr__(name):
    if name in _FAILOVER:
        from l0.client import failover
        return getattr(failover, name)
    raise AttributeError(f"module 'l0.client' has no attribute {name!r}")
