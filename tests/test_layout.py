"""The two wings stay apart: the client (``l0/client``, what ``pip install l0``
is) never imports the engine, the engine never imports the client; both
speak through ``l0/contract.py``. Read from the sources' import statements
(lazy imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "plugin" / "l0"


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "l0" or n.startswith("l0.")}


@pytest.mark.parametrize("wing,other", [("client", "engine"), ("engine", "client")])
def test_a_wing_never_imports_the_other(wing, other):
    crossing = {str(p.relative_to(PKG)): sorted(n for n in imported(p) if n.startswith(f"l0.{other}"))
                for p in (PKG / wing).rglob("*.py")}
    assert {k: v for k, v in crossing.items() if v} == {}


def test_the_contract_imports_nothing_of_l0():
    assert imported(PKG / "contract.py") == set()
