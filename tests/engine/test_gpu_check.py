"""``make gpu-check`` without a GPU: it says so plainly and fails, and every
piece it runs on a GPU imports and collects here (so a lent GPU's minutes are
never lost to an import error)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def _no_gpu_env():
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", L0_REQUIRE="")


def test_make_gpu_check_fails_plainly_without_a_gpu():
    proc = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"], cwd=ROOT,
                          env=_no_gpu_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "gpu-check: no CUDA device here (torch.cuda.is_available() is False)" in proc.stderr


def test_every_piece_collects_without_a_gpu():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *gpu_check.TEST_FILES], cwd=ROOT, env=_no_gpu_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = proc.stdout.splitlines()
    scale = [i for i in ids if "test_detect_at_scale[" in i]
    assert len(scale) == 12  # batch 1/64/256 x max_period 64/512/2048/4096
    assert sum("test_scenario_cuda_equals_cpu[" in i for i in ids) == 6
    for name in ("test_hypothesis_full_batch_equals_reference", "test_launches_are_ordered_on_the_current_stream",
                 "test_sync_debug_mode_catches_a_sync", "test_nvml_source_reads_every_field_without_error",
                 "test_hypothesis_equals_reference[cuda-kernel]", "test_cuda_kernel_equals_spec[152064-bf16]",
                 "test_tracker_on_the_gpu", "test_tracker_with_random_cuts_on_the_gpu",
                 "test_rows_scenario_cuda_equals_cpu[cuda-dtype0]"):
        assert any(name in i for i in ids), name


def test_junit_parsing_and_summary(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="a" name="ok" time="0.5"/>'
                   '<testcase classname="a" name="bad" time="1.0"><failure message="boom"/></testcase>'
                   '<testcase classname="a" name="skip"><skipped/></testcase></testsuite></testsuites>')
    res = gpu_check._junit(xml)
    assert (res["passed"], res["failed"], res["skipped"], res["errors"]) == (1, 1, 1, 0)
    assert res["failures"] == [{"test": "a::bad", "message": "boom"}]
    report = {"device": {"name": "X", "capability": "9.0", "torch": "t", "cuda": "c", "cupy": "k", "driver": "d"},
              "tests": {**res, "wall_s": 1.0, "rc": 1}, "errors": [], "sanitizer": [], "wall_s": 2.0, "path": "p",
              "bench_detect": [{"batch": 1, "max_period": 512, "cuda_device_us": 5.0, "cuda_host_us": 20.0,
                                "cuda_kernels_per_step": 2.0, "torch_device_us": 90.0, "torch_host_us": 400.0,
                                "torch_kernels_per_step": 60.0, "torch_over_cuda_device": 18.0}]}
    text = gpu_check.summary(report)
    assert "1 passed, 1 failed" in text and "FAIL a::bad: boom" in text and "18.0" in text
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
