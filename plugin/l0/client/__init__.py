"""The client wing: what ``pip install l0`` is (httpx, no torch, no vLLM).

One client, two transports: ``wrap`` (``l0.wrap``/``l0.run``) hardens a
client with the OpenAI SDK's surface, ``openai.AsyncOpenAI``/``OpenAI`` or
``http`` (``l0.http(url)``: plain HTTP, no SDK), read by the one SSE reader
``sse``. Its parts: ``options``, ``endpoints`` (probing and planning each
attempt: fresh, checkpoint, regenerate, text), ``session`` (the attempt
loop), ``resume`` (the checkpoint arithmetic), ``retry``, ``events``,
``chunks``, ``whole`` (non-streaming calls), ``sync`` (the synchronous twin).
Around it: ``eventlog`` (record, replay, diverge), ``structured`` (typed
answers), ``guardrails``/``drift``/``content`` (content checks), ``race``
(race, parallel, pipe), ``consensus``, ``stream`` (one unhardened read, the
tests' measuring stick) and ``failover`` (``FailoverClient``, kept for code
written against it: a thin layer over ``l0.wrap(l0.http(...))``). It speaks
to the engine only through :mod:`l0.contract`.

``from l0.client import FailoverClient, RetryPolicy`` (the path the failover
client was published under) still works: those names load on first use.
"""
_FAILOVER = ("FailoverClient", "RetryPolicy", "StreamOutcome", "Event", "Delta", "HTTPStatus")


def __getattr__(name):
    if name in _FAILOVER:
        from l0.client import failover
        return getattr(failover, name)
    raise AttributeError(f"module 'l0.client' has no attribute {name!r}")
