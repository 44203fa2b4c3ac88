"""L0 for NVIDIA Triton Inference Server: Python-backend models (ensemble
step, BLS wrapper), the stub probe, and a launcher for tests/benchmarks."""
