"""The package's shape, read from its source with `ast` (imports inside functions count too):
mpi4py is imported by the comm room only, and no two modules import each other, directly or
through others."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fda"
MPI_ROOM = "fda.comm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def imported_names(name: str, tree: ast.AST) -> list[str]:
    """Every module this module's source imports (at any depth), as dotted names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package that holds this module
                anchor = name.split(".") if is_package(name) else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.append(sub if sub in MODULES else base)
    return found


IMPORTS = {name: imported_names(name, ast.parse(path.read_text(), str(path))) for name, path in MODULES.items()}


def internal_graph(imports: dict[str, list[str]]) -> dict[str, set[str]]:
    return {name: {m for m in found if m in imports and m != name} for name, found in imports.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_only_the_comm_room_imports_mpi4py():
    outside = sorted(name for name, found in IMPORTS.items()
                     if any(m == "mpi4py" or m.startswith("mpi4py.") for m in found)
                     and not (name == MPI_ROOM or name.startswith(MPI_ROOM + ".")))
    assert outside == [], f"modules importing mpi4py outside {MPI_ROOM}: {outside}"


def test_no_import_circles():
    found = circles(internal_graph(IMPORTS))
    detail = "; ".join(" <-> ".join(c) for c in found)
    assert found == [], f"import circles: {detail}"


# ------------------------------------------------------------------ the checks check
def test_a_function_local_import_closes_a_circle():
    graph = internal_graph({"a": ["b"], "b": [], "c": ["a"]})
    assert circles(graph) == []
    graph = internal_graph({"a": imported_names("a", ast.parse("import b")),
                            "b": imported_names("b", ast.parse("def f():\n    from a import x\n"))})
    assert circles(graph) == [["a", "b"]]


@pytest.mark.parametrize("source, expected", [
    ("from . import comm", ["fda.comm"]),                 # a submodule, named relatively
    ("from .comm import Comm", ["fda.comm"]),
    ("from fda import __version__", ["fda"]),             # a name of the package itself
    ("import mpi4py.MPI", ["mpi4py.MPI"]),
])
def test_imports_are_resolved_to_modules(source, expected):
    assert imported_names("fda.cli", ast.parse(source)) == expected
