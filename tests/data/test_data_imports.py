"""No ImportError guard around the package's own modules in the data stage (the import graph's
layering and loops are checked for the whole package in tests/test_structure.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import bloomchat

DATA = Path(bloomchat.__file__).parent / "data"


def test_no_import_error_guard_around_own_modules():
    for f in DATA.glob("*.py"):
        text = f.read_text()
        assert "bloomchat[langid]" not in text  # no such extra: py3langid is a dependency
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers)):
                continue
            own = [n.module for b in node.body for n in ast.walk(b)
                   if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("bloomchat")]
            assert not own, f"{f.name}:{node.lineno} guards an import of bloomchat's own {own}"
