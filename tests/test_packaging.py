"""CUDA sources are found from the source tree (editable) and from a built wheel."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from l0.engine.kernels import kernel_path

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_found_in_source_tree():
    assert kernel_path("detect.cu") == ROOT / "kernels" / "detect.cu"


def test_missing_kernel_names_the_places_tried():
    with pytest.raises(FileNotFoundError, match="tried: .*kernels/nope.cu"):
        kernel_path("nope.cu")


def test_kernel_found_in_installed_wheel(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("l0-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "l0/kernels/detect.cu" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from l0.engine.kernels import kernel_path; print(kernel_path('detect.cu'))"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(site / "l0" / "kernels" / "detect.cu")
    assert "l0/kernels/detect_cpu.c" in names


@pytest.mark.cc
def test_cpu_kernel_builds_from_installed_wheel(tmp_path):
    """The fused CPU kernel is compiled from the wheel's copy of the source into
    L0_CACHE on first use, and steps."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    site = tmp_path / "site"
    zipfile.ZipFile(next(tmp_path.glob("l0-*.whl"))).extractall(site)
    code = ("import torch, l0.engine.ops as d; from l0.engine.config import DetectorParams as P; "
            "det = d.make_detector(1, 8, backend='cpu'); det.configure(0, P(min_span=1, near_min_repeats=0)); "
            "r = [det.step(torch.tensor([t])).kind.item() for t in [7, 9] * 3]; print(d.__file__, r)")
    env = {**os.environ, "L0_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert out == f"{site / 'l0' / 'engine' / 'ops' / '__init__.py'} [0, 0, 0, 0, 0, 1]"
    assert len(list((tmp_path / "cache" / "kernels").glob("detect_cpu-*.so"))) == 1


@pytest.mark.nvcc
def test_kernels_build_for_hopper_and_blackwell_without_spills():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "check_kernels.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for arch in ("sm_90", "sm_100", "sm_120"):
        assert f"ok   kernels/detect.cu {arch}" in proc.stdout
