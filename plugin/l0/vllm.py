"""The public path vLLM loads L0 by: ``--logits-processors
l0.vllm:L0LogitsProcessor`` and the ``vllm.logits_processors`` entry point
``l0.vllm:L0EntryPoint``. The adapters live in :mod:`l0.engine.vllm`."""
from l0.engine.vllm import L0EntryPoint, L0LogitsProcessor

__all__ = ["L0LogitsProcessor", "L0EntryPoint"]
