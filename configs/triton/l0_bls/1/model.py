# L0 wrapping an LLM through BLS: the code lives in the installed `l0` package (pip install l0).
from l0.triton.model import BlsModel as TritonPythonModel  # noqa: F401
