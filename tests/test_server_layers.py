"""The server package has no import circle: the service layer sits below REST, UI and workers."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def server_imports() -> dict[str, set[str]]:
    """module -> the server.* modules it imports anywhere in its body (lazy imports included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO / "server").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("server"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets.update(n if Path(REPO, *n.split(".")).with_suffix(".py").is_file() else node.module for n in names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("server"))
        graph[module] = {t for t in targets if t != module}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_server_package_has_no_import_circle():
    graph = server_imports()
    assert {"server.rest", "server.service", "server.worker", "server.ui", "server.jobs"} <= set(graph)
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_the_service_layer_is_below_rest_ui_and_workers():
    graph = server_imports()
    assert not graph["server.service"] & {"server.rest", "server.ui", "server.worker", "server.jobs"}
    assert "server.service" in graph["server.worker"] and "server.service" in graph["server.rest"]
    assert "server.rest" not in graph["server.worker"]
    # the helper finds a circle when there is one
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
