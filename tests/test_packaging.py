"""CUDA sources are found from the source tree (editable) and from a built wheel."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from l0.kernels import kernel_path

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
    code = "from l0.kernels import kernel_path; print(kernel_path('detect.cu'))"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(site / "l0" / "kernels" / "detect.cu")


@pytest.mark.nvcc
def test_kernels_build_for_hopper_and_blackwell_without_spills():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "check_kernels.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for arch in ("sm_90", "sm_100", "sm_120"):
        assert f"ok   kernels/detect.cu {arch}" in proc.stdout
