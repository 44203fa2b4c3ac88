"""L0: reliability for LLM serving, built into the inference engine.

Importing ``l0`` is cheap and side-effect free: no vLLM, no CUDA, no files.
The client API is loaded on first use: ``l0.wrap``, ``l0.http``, ``l0.run``
(``l0.Adapter`` and ``l0.Parts`` for any other stream protocol),
``l0.replay``, ``l0.diverge``, ``l0.Retry``, ``l0.Timeouts``, ``l0.Fleet``
(endpoint health shared by clients); content
reliability: ``l0.structured``, ``l0.guardrails``, ``l0.drift``, ``l0.race``,
``l0.parallel``, ``l0.pipe``, ``l0.consensus``.
"""
__version__ = "0.1.0"

_LAZY = {
    "wrap": ("l0.client.wrap", "wrap"),
    "run": ("l0.client.wrap", "run"),
    "http": ("l0.client.http", "http"),
    "Adapter": ("l0.client.adapters", "Adapter"),
    "Parts": ("l0.client.chunks", "Parts"),
    "replay": ("l0.client.eventlog", "replay"),
    "diverge": ("l0.client.eventlog", "diverge"),
    "read_log": ("l0.client.eventlog", "read_log"),
    "EventLog": ("l0.client.eventlog", "EventLog"),
    "Retry": ("l0.client.retry", "Retry"),
    "Timeouts": ("l0.client.retry", "Timeouts"),
    "Category": ("l0.client.retry", "Category"),
    "Fleet": ("l0.client.fleet", "Fleet"),
    "Callbacks": ("l0.client.events", "Callbacks"),
    "Tracing": ("l0.client.tracing", "Tracing"),
    "backoff": ("l0.client.retry", "backoff"),
    "structured": ("l0.client.structured", "structured"),
    "structured_sync": ("l0.client.structured", "structured_sync"),
    "StructuredResult": ("l0.client.structured", "StructuredResult"),
    "StructuredFailed": ("l0.client.structured", "StructuredFailed"),
    "guardrails": ("l0.client.guardrails", None),
    "drift": ("l0.client.drift", None),
    "race": ("l0.client.race", "race"),
    "parallel": ("l0.client.race", "parallel"),
    "pipe": ("l0.client.race", "pipe"),
    "consensus": ("l0.client.consensus", "consensus"),
    "consensus_of": ("l0.client.consensus", "consensus_of"),
    "samples": ("l0.client.consensus", "samples"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'l0' has no attribute {name!r}")
