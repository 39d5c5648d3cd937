"""Every checkpoint or tensor file is read with ``torch.load(..., weights_only=True)``: no pickled code runs
(``pyproject.toml`` requires torch >= 2.6, whose default is the same, but the calls say it explicitly)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unsafe_loads(source: str) -> list[int]:
    """Lines of ``torch.load`` calls without ``weights_only=True``."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
            and ast.unparse(node.func) == "torch.load"
            and {k.arg: ast.unparse(k.value) for k in node.keywords}.get("weights_only") != "True"]


def test_the_check_finds_an_unsafe_load():
    assert unsafe_loads("import torch\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n"
                        "z = torch.load(p, weights_only=True)\n") == [2, 3]


def test_every_torch_load_in_the_package_tests_and_benchmarks_is_weights_only():
    files = [p for d in ("rlpost", "tests", "comparisons") for p in ROOT.joinpath(d).rglob("*.py")]
    unsafe = [f"{p.relative_to(ROOT)}:{line}" for p in files for line in unsafe_loads(p.read_text())]
    assert unsafe == []
