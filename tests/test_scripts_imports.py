"""The benchmarks and recipes import what the package has: a name moved in ``pipeline`` and not in
a script breaks it only when that line runs (often inside a function, after minutes of work), so
every ``pipeline`` import of every script is resolved here without running the script. This
checks names only: a function that now returns another type is found by running the script."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "recipes").glob("*.py")])


def pipeline_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) of each ``import pipeline...`` / ``from pipeline... import name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "pipeline":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == "pipeline"]
    return found


def missing(module: str, name: str | None) -> str | None:
    """Why ``from module import name`` (or ``import module``) fails, or None."""
    try:
        imported = importlib.import_module(module)
    except ImportError as error:
        return f"no module {module} ({error})"
    if name is None or name == "*" or hasattr(imported, name):
        return None
    try:
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return f"{module} has no {name}"
    return None


def test_every_script_has_pipeline_imports_to_check():
    assert len(SCRIPTS) >= 10
    assert sum(bool(pipeline_imports(path)) for path in SCRIPTS) >= len(SCRIPTS) - 2


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_script_s_pipeline_imports_resolve(script):
    problems = [f"{script.name}:{line}: {why}" for line, module, name in pipeline_imports(script)
                if (why := missing(module, name)) is not None]  # fmt: skip
    assert problems == []


def test_a_moved_name_is_found(tmp_path):
    script = tmp_path / "old.py"
    script.write_text(
        "def f():\n    from pipeline.io.annotations import species_groups\n    from pipeline import open_model\n"
    )
    found = pipeline_imports(script)
    assert found == [(2, "pipeline.io.annotations", "species_groups"), (3, "pipeline", "open_model")]
    assert missing(*found[0][1:]) == "pipeline.io.annotations has no species_groups"
    assert missing(*found[1][1:]) is None
