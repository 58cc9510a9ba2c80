"""The layout's promises (issue 9), checked on the source tree:

- ``import index.client`` (what every backend and gRPC caller loads) does not load FAISS;
- no module imports a module that imports it back, directly or through others (a walk over every
  ``import`` statement, function-level ones included, ``if TYPE_CHECKING:`` blocks excluded);
- ``index/`` never imports the backend (``recs.serving``, ``recs.stores``, ``recs.commands``) nor
  the development tooling (``recs.local``); production code never imports ``recs.local``;
- no module is over ~400 lines, outside ``bench/`` and generated code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("conf", "index", "jobs", "models", "recs", "udfs")
GENERATED = ("index/proto/index_pb2.py", "index/proto/index_pb2_grpc.py")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (TYPE_CHECKING blocks aside)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)   # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    # Raised for the walk only: the contract parser's nesting guard relies on the default limit
    # (tests/recs/test_contracts.py "deep nesting" fails after this test if it is left raised).
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(10_000, limit))
    try:
        for v in graph:
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_importing_the_index_client_does_not_load_faiss():
    code = "import sys, index.client, index.errors; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_walk_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_index_and_production_code_stay_out_of_the_backend_and_the_tooling():
    graph = _graph()
    backend = ("recs.serving", "recs.stores", "recs.commands", "recs.cli", "recs.local")
    tooling_users = ("recs.local", "recs.commands", "recs.cli")
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                 if (m.startswith("index") and d.startswith(backend))
                 or (not m.startswith(tooling_users) and d.startswith("recs.local")))
    assert bad == []


def test_no_module_over_the_line_limit():
    roots = [ROOT / p for p in (*PACKAGES, "tests")]
    long = sorted(f"{p.relative_to(ROOT)}: {n}" for root in roots for p in root.rglob("*.py")
                  if str(p.relative_to(ROOT)) not in GENERATED
                  and (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert long == []
