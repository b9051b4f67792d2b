"""The data stage imports downward only: no later stage (train reads recipes and imports data),
no loop between its own modules, and no ImportError guard around the package's own modules."""

from __future__ import annotations

import ast
from pathlib import Path

import bloomchat

DATA = Path(bloomchat.__file__).parent / "data"
UPWARD = ("bloomchat.pack", "bloomchat.train", "bloomchat.infer", "bloomchat.eval", "bloomchat.arena",
          "bloomchat.demo", "bloomchat.cli", "bloomchat.prepare_cli")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_data_imports_no_later_stage():
    for f in DATA.glob("*.py"):
        up = sorted(m for m in imports(f) if m.startswith(UPWARD))
        assert not up, f"{f.name} imports {up}"


def test_no_import_loop_inside_data():
    mods = {f"bloomchat.data.{f.stem}": f for f in DATA.glob("*.py") if f.stem != "__init__"}
    graph = {m: {i for i in imports(f) if i in mods and i != m} for m, f in mods.items()}

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph[a])

    loops = sorted(m for m in graph if reaches(m, m, {m}))
    assert not loops, f"import loop through {loops}"


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
