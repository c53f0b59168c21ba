"""The package's folders are its architecture: each imports only from the floors below it, and no
module imports itself back through others. Read from the source (every import, those inside
functions too), so a lazy import cannot hide a circle. docs/architecture.md draws the same floors."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# floor of each folder: a folder may import from strictly lower floors only (and from itself)
FLOORS = {
    "core": 0,
    "attention": 1,
    "data": 1,
    "models": 2,
    "backends": 3,
    "store": 4,
    "report": 5,
    "tasks": 6,
    "run": 6,
    "bench": 7,
    "reference": 7,
    "api": 7,
    "integrations": 8,
    "cli": 8,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*(ROOT / "evalkit").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "tasks":
        return "tasks"
    if len(parts) == 1:
        return None  # evalkit/__init__.py: the package's face may reach anything, lazily
    return parts[1]


def test_every_folder_has_a_floor():
    folders = {_folder(m) for m in _graph()} - {None, "__main__"}
    assert folders <= set(FLOORS), f"give {sorted(folders - set(FLOORS))} a floor here and in docs/architecture.md"


def test_imports_point_down_the_floors():
    wrong = []
    for module, deps in _graph().items():
        here = _folder(module)
        if here in (None, "__main__"):
            continue
        for dep in deps:
            there = _folder(dep)
            if there is not None and there != here and FLOORS[there] >= FLOORS[here]:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_graph_sees_lazy_imports():
    # an import inside a function counts: evaluate() imports the progress bar lazily
    assert "evalkit.run.progress" in _graph()["evalkit.run.evaluate"]
