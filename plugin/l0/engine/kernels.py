"""Finding the CUDA sources in ``kernels/``, from a wheel or an editable install.

A wheel ships them as ``l0/kernels/*.cu`` (see pyproject's force-include); an
editable install or a source checkout has them at ``<repo>/kernels``.
"""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # the l0 package


def candidate_dirs() -> list[Path]:
    return [_PKG / "kernels", _PKG.parents[1] / "kernels"]


def kernel_path(name: str) -> Path:
    """Path of ``kernels/<name>``. Raises ``FileNotFoundError`` naming every
    place it looked."""
    tried = [d / name for d in candidate_dirs()]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"L0 kernel source {name!r} not found; tried: " + ", ".join(map(str, tried)))


def kernel_source(name: str) -> str:
    return kernel_path(name).read_text()
