"""Layering rules of docs/design.md#layout, checked on the source with ``ast``.

The reference backend is the oracle: only the modules that check against it may import
it (the reference itself, the test helpers, the tolerance rule, the benchmark harness
``lcfast/bench.py`` or ``lcfast/bench/``).  The backend registry names it by a string
(loaded lazily when a user asks for ``backend="reference"``), which is not an import.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lcfast"
REFERENCE = "lcfast.engine.reference"


def allowed(rel: str) -> bool:
    """``rel``: a path relative to the repository root, with ``/``."""
    return (rel in ("lcfast/engine/reference.py", "lcfast/testing.py", "lcfast/tolerance.py", "lcfast/bench.py")
            or rel.startswith(("lcfast/bench/", "benchmarks/")))


def module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, rel: str) -> set[str]:
    """Every module a file imports (absolute names; ``from a import b`` yields ``a``
    and ``a.b``, as ``b`` may be a submodule), wherever the import statement is."""
    package = module_name(rel) if rel.endswith("__init__.py") else module_name(rel).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def imports_reference(source: str, rel: str) -> bool:
    return any(m == REFERENCE or m.startswith(REFERENCE + ".") for m in imported_modules(source, rel))


def test_checker_catches_every_import_form():
    bad = {
        "lcfast/engine/native.py": ["from .reference import crossing_counts", "from . import reference",
                                    "from .reference import *"],
        "lcfast/ops/x.py": ["from ..engine.reference import crossing_counts",
                            "from ..engine import reference as r"],
        "lcfast/api.py": ["import lcfast.engine.reference", "def f():\n    from .engine.reference import X\n"],
        "lcfast/engine/__init__.py": ["from .reference import ReferenceBackend"],
    }
    for rel, sources in bad.items():
        for src in sources:
            assert imports_reference(src, rel), (rel, src)
    fine = {"lcfast/engine/native.py": ["from .base import Backend", "from .. import sites",
                                        "R = 'lcfast.engine.reference:ReferenceBackend'"],
            "lcfast/api.py": ["from .engine import get_backend"]}
    for rel, sources in fine.items():
        for src in sources:
            assert not imports_reference(src, rel), (rel, src)
    assert allowed("lcfast/bench/checks.py") and allowed("lcfast/bench.py") and allowed("lcfast/testing.py")
    assert not allowed("lcfast/engine/native.py") and not allowed("lcfast/benchmarks.py")


def test_only_checkers_import_the_reference_backend():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20
    offenders = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if not allowed(rel) and imports_reference(path.read_text(), rel):
            offenders.append(rel)
    assert not offenders, f"these modules import the reference backend (the oracle): {offenders}"


def test_known_importer_is_seen():
    """The scan reads real files: the float64 oracle's helpers do import the reference."""
    assert imports_reference((PKG / "testing.py").read_text(), "lcfast/testing.py")
