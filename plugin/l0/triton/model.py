"""``configs/triton/l0_step`` and ``l0_bls`` load their models from here:
see :mod:`l0.engine.triton.model`."""
from l0.engine.triton.model import BlsModel, StepModel

__all__ = ["StepModel", "BlsModel"]
