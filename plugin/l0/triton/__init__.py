"""The public path of L0's Triton models (``configs/triton/*/1/model.py``
import ``l0.triton.model``). The adapter lives in :mod:`l0.engine.triton`."""
