"""The shape of the source tree: short functions, and an import graph without loops that points
downward only (a stage uses the stages before it, never one after it), read from the code with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import bloomchat

SRC = Path(bloomchat.__file__).parent
MAX_FUNCTION_LINES = 80

# Functions allowed over the limit while being split elsewhere (none now); a listed function that is
# short again fails below, so the list cannot go stale.
ALLOWED_LONG: set[str] = set()

# The pipeline, bottom to top. A module may import modules of its own package and of any earlier
# layer. Stages that share a layer (export and infer both read a trained model) may not import each
# other; the shared modules at the bottom and the command line at the top may (loops are still
# caught). A new top-level module or package must be placed here before the tests pass.
LAYERS: list[tuple[str, ...]] = [
    # shared by every stage: the error type, languages, the chat format, models and tokenizers
    ("bloomchat", "errors", "langs", "conversation", "chat_format", "chat_tokens", "asgi_limits", "models"),
    ("data",),
    ("pack",),
    ("train",),
    ("export", "infer"),
    ("eval",),
    ("arena",),  # reads eval's judge runs
    ("demo",),
    ("cli", "__main__", "prepare_cli"),  # the command line over all of them
]

# Upward imports tolerated while being fixed elsewhere (none now; a fixed one fails as stale).
ALLOWED_UPWARD: set[tuple[str, str]] = set()

# ImportError guards around bloomchat's own modules tolerated while being removed elsewhere (none now).
ALLOWED_GUARDS: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imported_modules(name: str, source: str, is_package: bool = False) -> set[str]:
    """bloomchat modules a file imports, at module level or inside a function (`from a import b`
    counts as a.b when b is a module, else as a)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t not in MODULES and "." in t:
                t = t.rpartition(".")[0]
            if t in MODULES and t != name:
                found.add(t)
    return found


GRAPH = {name: _imported_modules(name, path.read_text(encoding="utf-8"), path.name == "__init__.py")
         for name, path in MODULES.items()}


def _layer_entry(module: str) -> str:
    """'bloomchat.eval.cli' -> 'eval'; 'bloomchat.errors' -> 'errors'; 'bloomchat' -> 'bloomchat'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


RANK = {entry: i for i, layer in enumerate(LAYERS) for entry in layer}


def test_no_function_longer_than_80_lines():
    long, seen = [], set()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key, n = f"{rel}:{node.name}", node.end_lineno - node.lineno + 1
                seen.add(key)
                if n > MAX_FUNCTION_LINES and key not in ALLOWED_LONG:
                    long.append(f"{key} ({n} lines)")
                if n <= MAX_FUNCTION_LINES and key in ALLOWED_LONG:
                    long.append(f"{key} is {n} lines now: remove it from ALLOWED_LONG")
    long += [f"{k} no longer exists: remove it from ALLOWED_LONG" for k in ALLOWED_LONG - seen]
    assert not long, "split these into functions that say what they do: " + "; ".join(sorted(long))


def test_every_top_level_module_has_a_layer():
    entries = {_layer_entry(m) for m in MODULES}
    assert entries - set(RANK) == set(), "place these in LAYERS"
    assert set(RANK) - entries == set(), "LAYERS names modules that do not exist"


def test_import_graph_has_no_loop():
    """Tarjan's strongly connected components; any with two or more modules is a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not loops, f"import loops: {loops}"


def test_stages_import_downward_only():
    upward = []
    for a, targets in GRAPH.items():
        for b in targets:
            ea, eb = _layer_entry(a), _layer_entry(b)
            shared = RANK[ea] == RANK[eb] in (0, len(LAYERS) - 1)
            if ea != eb and RANK[eb] >= RANK[ea] and not shared and (a, b) not in ALLOWED_UPWARD:
                upward.append(f"{a} -> {b}")
    stale = [f"{a} -> {b}" for a, b in ALLOWED_UPWARD if b not in GRAPH.get(a, ())]
    assert not upward, f"imports of a later (or sibling) stage: {sorted(upward)}"
    assert not stale, f"fixed, remove from ALLOWED_UPWARD: {stale}"


def test_the_graph_reader_sees_every_kind_of_import():
    """Imports inside functions, `from package import module`, relative imports and plain
    `import a.b` all count (else the tests above could pass on a graph with arrows missing)."""
    source = ("import bloomchat.errors\n"
              "from bloomchat.eval import report\n"
              "from . import cache\n"
              "from ..pack.stats import SplitStats\n"
              "def f():\n    from bloomchat.infer import load_chat_model\n"
              "import json\n")
    assert _imported_modules("bloomchat.eval.compare", source) == {
        "bloomchat.errors", "bloomchat.eval.report", "bloomchat.eval.cache", "bloomchat.pack.stats",
        "bloomchat.infer"}
    assert _imported_modules("bloomchat.eval", "from . import cache\n", is_package=True) == {"bloomchat.eval.cache"}
    assert "bloomchat.arena.db" in GRAPH["bloomchat.arena.cli"]  # inside a function, in the real tree
    assert "bloomchat.eval.report" in GRAPH["bloomchat.eval.compare"]


def test_no_import_error_guard_around_the_packages_own_modules_or_hints_at_missing_extras():
    """bloomchat's own modules always ship with it, so `try: from bloomchat... except ImportError`
    is dead code; an install hint must name an extra pyproject.toml declares."""
    import re
    import tomllib

    pyproject = SRC.parent.parent / "pyproject.toml"
    extras = set(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]) \
        if pyproject.exists() else None
    bad, guarded = [], set()
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        for extra in re.findall(r"bloomchat\[([a-z0-9_,-]+)\]", text):
            if extras is not None and not set(extra.split(",")) <= extras:
                bad.append(f"{name}: install hint for bloomchat[{extra}], no such extra")
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers)):
                continue
            own = [n.module for b in node.body for n in ast.walk(b)
                   if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("bloomchat")]
            own += [a.name for b in node.body for n in ast.walk(b) if isinstance(n, ast.Import)
                    for a in n.names if a.name.startswith("bloomchat")]
            if own and name not in ALLOWED_GUARDS:
                bad.append(f"{name}:{node.lineno} guards an import of bloomchat's own {own}")
            if own:
                guarded.add(name)
    bad += [f"{m} has no guard left: remove it from ALLOWED_GUARDS" for m in ALLOWED_GUARDS - guarded]
    assert not bad, "; ".join(bad)
