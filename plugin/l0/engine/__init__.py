"""The engine wing: what the extras add (``l0[vllm]``, ``l0[cpu]``, Triton).

``step`` (the engine-agnostic decode step, ``StepCore``) over the device ops
in ``ops/`` (``detect``, ``act``; kernels in the repo's ``kernels/``); the
per-row host inputs (``host_tokens``, ``slot_tokens``, ``readback``,
``upload``, ``rows``); ``jsonstate`` and ``vocab`` (tables from the
tokenizer); ``config`` (server configuration and per-request options);
``checkpoint/`` (stores and the background writer); ``health/`` (watchdog,
NVML telemetry, drain, metrics); the engine adapters ``vllm/`` and
``triton/``; ``models`` and ``server`` (test models, launching ``vllm
serve``). It speaks to the client only through :mod:`l0.contract`.

Nothing here is imported by ``import l0``; torch loads when a step core or a
detector is made.
"""
