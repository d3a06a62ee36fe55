"""The house rules of the layout, checked on the source: wings, module size, imports and cycles.

- ``shared/`` holds packages named for their role, and no loose module;
- no module under shared/, functions/, sdk/ or jobs/ is over 400 lines, except pure data tables;
- ``shared/domain/`` imports nothing outside the domain (and the SDK's contracts);
- an import of our own code inside a function is there for cold-start laziness and says so
  (``# lazy:`` on the line before), never to hide an import cycle;
- the imports at module level form no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("shared", "functions", "sdk/fleet_agent", "jobs")
MAX_LINES = 400
#: Modules that are pure data tables (exempt from the size limit), with why.
DATA_TABLES: dict[str, str] = {}
WINGS = {
    "api",
    "cli",
    "console",
    "domain",
    "launchers",
    "ml",
    "otlp",
    "pipeline",
    "platform",
    "services",
    "slack",
    "store",
    "training",
}
OURS = ("shared", "fleet_agent", "jobs", "functions")


def _modules() -> Iterator[tuple[str, Path]]:
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            if "egg-info" in str(path) or "/build/" in str(path):
                continue
            rel = path.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts)
            if parts[0] == "sdk":
                parts = parts[1:]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


MODULES = dict(_modules())


def test_shared_holds_wings_only() -> None:
    loose = sorted(p.name for p in (ROOT / "shared").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"loose modules at the top of shared/: {loose}"
    packages = {p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").exists()}
    assert packages == WINGS


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name: str) -> None:
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    if str(path.relative_to(ROOT)) in DATA_TABLES:
        return
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[ast.stmt, str]]:
    """Every import statement with the absolute module it names (relative ones resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node, base
            for alias in node.names:
                yield node, f"{base}.{alias.name}"


def _resolve(name: str) -> str | None:
    """The module of ours a dotted name refers to (``shared.store.db.client`` -> ``shared.store.db``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _top_level(tree: ast.Module) -> set[int]:
    """The ids of import statements that run at import time (module level, not in TYPE_CHECKING)."""
    found: set[int] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.add(id(node))
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = _top_level(tree)
        edges = graph.setdefault(name, set())
        for node, target in _imports(tree, name, path.name == "__init__.py"):
            resolved = _resolve(target)
            if id(node) in top and resolved and resolved != name:
                edges.add(resolved)
    return graph


def test_the_domain_imports_only_the_domain() -> None:
    strays = []
    for name, path in MODULES.items():
        if not name.startswith("shared.domain"):
            continue
        for _, target in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            resolved = _resolve(target)
            if resolved and not resolved.startswith(("shared.domain", "fleet_agent")):
                strays.append(f"{name} imports {resolved}")
    assert strays == []


def test_imports_of_our_code_inside_functions_say_why() -> None:
    unexplained = []
    for path in MODULES.values():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        top = _top_level(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in top:
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                ours = True
            else:
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                ours = (module or "").split(".")[0] in OURS
            if not ours or _in_type_checking(tree, node):
                continue
            # The comment may sit above a group of imports: look back over the imports just above.
            index = node.lineno - 2
            while index >= 0 and lines[index].strip().startswith(("from ", "import ")):
                index -= 1
            if index < 0 or "# lazy:" not in lines[index]:
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert unexplained == [], "imports inside functions without a '# lazy:' reason:\n" + "\n".join(unexplained)


def _in_type_checking(tree: ast.Module, target: ast.stmt) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test)
            and any(child is target for child in ast.walk(node))
        ):
            return True
    return False


def test_module_level_imports_form_no_cycle() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_a_cycle_hidden_in_a_function_would_be_seen() -> None:
    """The checks above can fail: a function-level import without a reason is reported."""
    tree = ast.parse("def f():\n    from shared.store import db\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert id(node) not in _top_level(tree)
    assert not _in_type_checking(tree, node)
