"""TEST ONLY: lets vLLM's Model Runner V2 run on this CPU, in Triton's interpreter.

vLLM picks V2 only when Triton is usable; the CPU build checks that Triton
has a ``cpu`` backend (``vllm/triton_utils/importing.py``), which needs
triton-cpu — not on PyPI. With ``TRITON_INTERPRET=1`` Triton runs every
kernel in its own interpreter on CPU tensors, so V2's kernels need no backend
at all; this file, put on ``PYTHONPATH`` for the engine's processes with
``L0_TEST_TRITON_CPU=1``, only answers vLLM's availability check by
registering an inactive ``cpu`` entry in ``triton.backends.backends``.
Nothing else is changed: the model runner, its kernels and L0 are real.
"""
import os

if os.environ.get("L0_TEST_TRITON_CPU") == "1":
    from types import SimpleNamespace

    class _InactiveDriver:
        @staticmethod
        def is_active() -> bool:
            return False

    try:
        from triton.backends import backends

        backends.setdefault("cpu", SimpleNamespace(driver=_InactiveDriver, compiler=None))
    except Exception as exc:  # the test says what happened
        print(f"l0 test shim: could not register a Triton cpu entry: {exc}")
