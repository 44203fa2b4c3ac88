# L0's ensemble step: the code lives in the installed `l0` package (pip install l0).
from l0.triton.model import StepModel as TritonPythonModel  # noqa: F401
