"""Device ops. One name per op across layers: ``l0/ops/<op>.py`` ↔
``kernels/<op>.cu`` ↔ ``tests/ops/test_<op>.py`` ↔ ``bench/bench_<op>.py``."""
