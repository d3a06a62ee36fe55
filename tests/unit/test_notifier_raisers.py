"""Which functions can raise a critical alert (reach ``notifier.send_now``), derived from the code rather
than listed by hand: a reference graph of shared/ and functions/main.py (each top-level function or class
is a node; a name it uses, called or passed, is an edge; a module's top-level statements and the
functions a decorator registers there, routes and Slack handlers, are its module node's edges). Starting
from each function's entry point in topology.yaml, the graph says which can hand critical notices over to
``fleet-actions`` (docs/alerting.md, "Critical alerts at once"), which must then be allowed to publish
there. It over-approximates (a reachable name may never be called with a critical alert); only a call
made through a string (``getattr``) would escape it, and ``send_now`` is called by name."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from shared.platform import topology

ROOT = Path(__file__).resolve().parents[2]
SEND_NOW = ("shared.services.notifier", "send_now")
Node = tuple[str, str]  # (module, top-level name); "<module>" for the module's own statements

#: Functions the graph finds that do not publish to fleet-actions, each with why. A critical alert they
#: raise is still sent: their hand-over fails (logged) and the minute job sends it within about a minute.
WITHOUT_HAND_OVER = {
    # Over-approximation: the console calls the API's handlers in-process, so every route is reachable;
    # it only reads, acknowledges and snoozes (topology.yaml), which raise nothing.
    "fleet-console": "reads, acknowledges, snoozes",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def graph() -> tuple[dict[Node, set[Node]], frozenset[str]]:
    files = {_module_name(p): p for wing in ("shared", "functions") for p in (ROOT / wing).rglob("*.py")}
    edges: dict[Node, set[Node]] = {}
    for module, path in files.items():
        edges.update(_edges(module, ast.parse(path.read_text()), set(files)))
    return edges, frozenset(files)


def _edges(module: str, tree: ast.Module, files: set[str]) -> dict[Node, set[Node]]:
    modules: dict[str, str] = {}  # alias -> module
    objects: dict[str, Node] = {}  # alias -> (module, name) imported from it
    for node in ast.walk(tree):  # lazy imports inside functions too
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in files:
                    modules[alias.asname or alias.name] = full
                else:
                    objects[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name] = alias.name
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    top = {n.name for n in tree.body if isinstance(n, defs)}

    def uses(nodes: list[ast.stmt]) -> set[Node]:
        found: set[Node] = set()
        for stmt in nodes:
            for n in ast.walk(stmt):
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules:
                    found.add((modules[n.value.id], n.attr))
                elif isinstance(n, ast.Name) and n.id in top:
                    found.add((module, n.id))
                elif isinstance(n, ast.Name) and n.id in objects:
                    found.add(objects[n.id])
        return found

    edges: dict[Node, set[Node]] = {}
    statements: list[ast.stmt] = []
    registered: set[Node] = set()
    for stmt in tree.body:
        if isinstance(stmt, defs):
            edges[(module, stmt.name)] = uses([stmt]) | {(module, "<module>")}
            # A decorator registers its function (a route, a Slack handler); functions/main.py's are the
            # framework's own, and each of its entry points is a start of its own.
            if stmt.decorator_list and module != "functions.main":
                registered.add((module, stmt.name))
        elif not isinstance(stmt, ast.Import | ast.ImportFrom):
            statements.append(stmt)
    edges[(module, "<module>")] = uses(statements) | registered
    return edges


def reaches(start: Node, goal: Node) -> bool:
    edges, modules = graph()
    seen: set[Node] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node in seen:
            continue
        seen.add(node)
        # A name that is no function or class (a constant, a registry) stands for its module's statements.
        todo.extend(edges.get(node, {(node[0], "<module>")} if node[0] in modules else set()))
    return False


def raisers() -> set[str]:
    return {f.name for f in topology.load().functions if reaches(("functions.main", f.entry_point), SEND_NOW)}


def test_the_graph_finds_the_known_raisers_and_not_the_others() -> None:
    """The derivation can fail: the functions that call ``send_now`` are found, the minute job's are not."""
    found = raisers()
    assert {"fleet-registrations", "fleet-heartbeats", "fleet-costs", "fleet-api", "fleet-slack"} <= found
    assert not {"fleet-sweep", "fleet-reports", "fleet-dead-letters", "bench-baseline"} & found


def test_every_function_that_can_raise_a_critical_alert_may_hand_it_to_fleet_actions() -> None:
    functions = {f.name: f for f in topology.load().functions}
    found = raisers()
    missing = {name for name in found if "fleet-actions" not in functions[name].publishes}
    assert missing == set(WITHOUT_HAND_OVER), "a new raiser: publish to fleet-actions in topology.yaml"
    assert set(WITHOUT_HAND_OVER) <= found  # an exemption no longer needed is removed


def test_only_fleet_actions_sends_the_event_functions_hold_no_slack_token() -> None:
    """The agents' event functions raise critical alerts but never call Slack: ``fleet-actions`` does."""
    manifest = topology.load()
    agent_topics = {t.name for t in manifest.topics if t.event_type and not t.internal}
    event_functions = {s.push_to for s in manifest.subscriptions if s.topic in agent_topics} & raisers()
    holders = {f.name for f in manifest.functions if "slack-bot-token" in f.secrets}
    assert {"fleet-registrations", "fleet-heartbeats", "fleet-costs"} <= event_functions
    assert "fleet-actions" in holders
    assert not (event_functions - {"fleet-approvals"}) & holders  # fleet-approvals posts approval requests
