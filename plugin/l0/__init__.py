"""L0: reliability for LLM serving, built into the inference engine.

Importing ``l0`` is cheap and side-effect free: no vLLM, no CUDA, no files.
The client API is loaded on first use: ``l0.wrap``, ``l0.run``,
``l0.replay``, ``l0.diverge``, ``l0.Retry``, ``l0.Timeouts``; content
reliability: ``l0.structured``, ``l0.guardrails``, ``l0.drift``, ``l0.race``,
``l0.parallel``, ``l0.pipe``, ``l0.consensus``.
"""
__version__ = "0.1.0"

_LAZY = {
    "wrap": ("l0.harden", "wrap"),
    "run": ("l0.harden", "run"),
    "replay": ("l0.eventlog", "replay"),
    "diverge": ("l0.eventlog", "diverge"),
    "read_log": ("l0.eventlog", "read_log"),
    "EventLog": ("l0.eventlog", "EventLog"),
    "Retry": ("l0.policy", "Retry"),
    "Timeouts": ("l0.policy", "Timeouts"),
    "Category": ("l0.policy", "Category"),
    "Callbacks": ("l0.events", "Callbacks"),
    "backoff": ("l0.policy", "backoff"),
    "structured": ("l0.typed", "structured"),
    "structured_sync": ("l0.typed", "structured_sync"),
    "StructuredResult": ("l0.typed", "StructuredResult"),
    "StructuredFailed": ("l0.typed", "StructuredFailed"),
    "guardrails": ("l0.guardrails", None),
    "drift": ("l0.drift", None),
    "race": ("l0.orchestrate", "race"),
    "parallel": ("l0.orchestrate", "parallel"),
    "pipe": ("l0.orchestrate", "pipe"),
    "consensus": ("l0.orchestrate", "consensus"),
    "consensus_of": ("l0.orchestrate", "consensus_of"),
    "samples": ("l0.orchestrate", "samples"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'l0' has no attribute {name!r}")
