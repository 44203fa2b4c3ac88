"""L0: reliability for LLM serving, built into the inference engine.

Importing ``l0`` is cheap and side-effect free: no vLLM, no CUDA, no files.
"""
__version__ = "0.1.0"
