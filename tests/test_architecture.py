"""The layout ARCHITECTURE.md promises, read from the source (every import statement, at module level or inside a
function): data flows one way between the stages, and no module imports itself back through others."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dynamics"

# stage -> the stages its modules may import (besides their own)
ALLOWED = {
    "schema": set(),
    "store": {"schema"},
    "record": {"schema", "store"},
    "balance": {"schema", "record"},
    "analysis": {"schema", "store"},
    "report": {"schema", "store", "analysis"},
    "integrations": {"schema", "store", "record", "analysis"},
    "cli": {"schema", "store", "record", "analysis", "report", "integrations"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The dynamics modules ``path`` imports (``from . import x`` resolved to the module x where it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dynamics")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("dynamics"):
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_import_runs_down_the_stages():
    wrong = []
    for module, imported in _graph().items():
        stage = _stage(module)
        if stage not in ALLOWED:
            continue  # the package's own __init__ (lazy names) and py.typed
        for target in imported:
            other = _stage(target)
            if other is not None and other != stage and other not in ALLOWED[stage]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the data flow: " + ", ".join(sorted(wrong))


def test_no_module_imports_itself_back():
    graph = _graph()
    parents = {m for m in graph if any(o.startswith(m + ".") for o in graph)}  # a package's __init__ re-exports
    graph = {m: {t for t in ts if t not in parents} for m, ts in graph.items() if m not in parents}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
