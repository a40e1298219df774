"""The benchmarks are not run by the tests; their imports of detr_ray still must resolve
(a renamed function would otherwise surface only when someone measures)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[2] / "bench").glob("*.py"))


def detr_ray_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from detr_ray... import name``, at any depth."""
    return [
        (node.module, alias.name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detr_ray")
        for alias in node.names
    ]


def test_there_are_benchmarks():
    assert len(BENCH) >= 5


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.name)
def test_every_detr_ray_import_of_a_benchmark_resolves(path):
    missing = []
    for module_name, name in detr_ray_imports(path):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{module_name}.{name}")
    assert missing == []
