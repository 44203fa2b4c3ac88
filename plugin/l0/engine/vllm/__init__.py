"""vLLM glue: ``--logits-processors l0.vllm:L0LogitsProcessor`` (or the
``vllm.logits_processors`` entry point, :class:`L0EntryPoint`)."""
from l0.engine.vllm.logits_processor import L0EntryPoint, L0LogitsProcessor

__all__ = ["L0LogitsProcessor", "L0EntryPoint"]
