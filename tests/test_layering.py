"""Imports go one way: a module imports its own floor or lower ones only, and no two packages
import each other. The floors come from this one list; the package's own imports are read with
``ast`` (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import rnn2gpt

# Low to high. A top-level module or package of rnn2gpt that is not here fails the test: give
# every new part a floor.
FLOORS = [
    {"errors", "config", "hardware", "atomic"},
    {"tokenizers", "models"},
    {"data", "checkpoint"},
    {"generation", "interop"},
    {"training", "tasks", "evaluation"},
    {"analysis", "experiments"},
    {"api"},
    {"cli", "server"},
]
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names}
PACKAGE = Path(rnn2gpt.__file__).parent


def _imports() -> set[tuple[str, str, str]]:
    """(importing part, imported part, file) for every import between parts of rnn2gpt."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py")
        if part in ("__init__", "__main__"):
            continue
        package = list(rel.parts[:-1])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                full = base + [m for m in (node.module or "").split(".") if m]
                targets.append(full[0] if full else node.names[0].name)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rnn2gpt."):
                targets.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                targets += [
                    a.name.split(".")[1] for a in node.names if a.name.startswith("rnn2gpt.")
                ]
            for target in targets:
                if target != part:
                    found.add((part, target, str(rel)))
    return found


def test_every_part_has_a_floor():
    parts = {
        p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()
    }
    parts -= {"__init__", "__main__", "__pycache__", "presets"}
    assert parts - set(FLOOR_OF) == set(), "add new parts to FLOORS"


def test_imports_never_go_up_a_floor():
    upward = sorted(
        f"{where}: {a} (floor {FLOOR_OF[a]}) imports {b} (floor {FLOOR_OF[b]})"
        for a, b, where in _imports()
        if b in FLOOR_OF and FLOOR_OF[b] > FLOOR_OF[a]
    )
    assert upward == []


def test_no_two_parts_import_each_other():
    edges = {(a, b) for a, b, _ in _imports()}
    assert sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges}) == []


def test_the_reader_sees_imports():
    # The check itself must be able to fail: a known upward import is found.
    found = _imports()
    assert ("training", "tasks", "training/setup.py") in found
    assert ("cli", "api", "cli/train.py") in found
