"""L0: reliability for LLM serving, built into the inference engine.

Importing ``l0`` is cheap and side-effect free: no vLLM, no CUDA, no files.
The client API is loaded on first use: ``l0.wrap``, ``l0.run``,
``l0.replay``, ``l0.diverge``, ``l0.Retry``, ``l0.Timeouts``.
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
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'l0' has no attribute {name!r}")
