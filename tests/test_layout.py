"""The package's own layout: no import circles among its modules (imports inside functions count too)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "adaptertune"


def _imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative imports; a child's import of its parent package excluded)."""
    found = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
                deps |= {base} | {f"{base}.{a.name}" for a in node.names}
        found[name] = deps
    return {m: {d for d in deps if d in found and d != m and not m.startswith(d + ".")} for m, deps in found.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return path[path.index(d):] + [d]
            if d not in state and (hit := visit(d)):
                return hit
        state[m] = "done"
        path.pop()
        return None

    return next((hit for m in sorted(graph) if m not in state and (hit := visit(m))), None)


def test_the_checker_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_in_the_package():
    graph = _imports()
    assert "adaptertune.analysis.claims" in graph and "adaptertune.planted" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
