"""``l0.vllm:L0LogitsProcessor``: one name for both of vLLM's model runners.

vLLM has two logits-processor interfaces and checks a processor's class
against the one its runner uses: the V1 runner's loader wants a subclass of
``vllm.v1.sample.logits_processor.LogitsProcessor`` and builds it as
``cls(vllm_config, device, is_pin_memory)``; Model Runner V2 (vLLM's default
on NVIDIA GPUs since 0.32) wants a subclass of
``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` and builds it
as ``cls(vllm_config, req_states)`` — for ``--logits-processors`` names and
for every ``vllm.logits_processors`` entry point, which the frontend also
loads at start-up to validate requests.

:class:`L0LogitsProcessor` subclasses both (where the installed vLLM has the
V2 interface), so both loaders accept it, and constructing it returns the
adapter for the runner that built it: :class:`~l0.engine.vllm.v1_processor.L0V1Processor`
or :class:`~l0.engine.vllm.v2_processor.L0V2Processor`. ``validate_params`` is the
same for both. :class:`L0EntryPoint` does the same for the entry point (whose
adapters stand down when the engine also names :data:`FQCN`).
"""
from __future__ import annotations

from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from l0.engine.vllm.host import FQCN, server_config, validate  # noqa: F401  (server_config: re-exported)

try:  # the V2 interface ships with vLLM 0.32+ (import-light: no torch, no worker state)
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcRequestState
except ImportError:  # an older vLLM: V1 only
    V2LogitsProcessor = LogitsProcRequestState = None

_BASES = (V1LogitsProcessor,) if V2LogitsProcessor is None else (V1LogitsProcessor, V2LogitsProcessor)


def built_by_v2(args: tuple, kwargs: dict) -> bool:
    """The constructor arguments after ``vllm_config`` are Model Runner V2's
    (``req_states``) rather than the V1 runner's (``device, is_pin_memory``)."""
    if LogitsProcRequestState is None:
        return False
    state = args[0] if len(args) == 1 else kwargs.get("req_states")
    return isinstance(state, LogitsProcRequestState)


class L0LogitsProcessor(*_BASES):
    """See the module docstring. Never instantiated itself: ``cls(...)``
    returns the runner's adapter (not an instance of this class, so Python
    does not run ``__init__`` twice)."""

    _implementations: tuple[str, str] = ("l0.engine.vllm.v1_processor:L0V1Processor",
                                         "l0.engine.vllm.v2_processor:L0V2Processor")

    def __new__(cls, vllm_config, *args, **kwargs):
        impl = _load(cls._implementations[1 if built_by_v2(args, kwargs) else 0])
        return impl(vllm_config, *args, **kwargs)

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate(sampling_params)

    # The bases' abstract methods: the adapters implement them; these are
    # never called (cls(...) never returns an instance of this class).
    def apply(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def is_argmax_invariant(self) -> bool:  # pragma: no cover
        return False

    def update_state(self, batch_update) -> None:  # pragma: no cover
        raise NotImplementedError


class L0EntryPoint(L0LogitsProcessor):
    """The class behind the ``vllm.logits_processors`` entry point: every
    engine on a Python with L0 installed loads it, under either runner. Its
    default action is the server configuration's (``observe`` unless set);
    it stands down when the same engine also names :data:`FQCN` in
    ``--logits-processors`` (as ``l0 serve`` does), so L0 never runs twice."""

    _implementations = ("l0.engine.vllm.v1_processor:L0V1EntryPoint", "l0.engine.vllm.v2_processor:L0V2EntryPoint")


def _load(target: str):
    import importlib
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
