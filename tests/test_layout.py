"""The repository's shape: what sits at the root, what imports what.

The import graph is read from the source (every `import`, function-level ones included), so a cycle
fails here the moment it is written, not when some call order happens to trip over it.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

PACKAGES = ("tinyhelen", "studies", "data", "simplify", "tinykernels", "bench")
ROOT_LIMIT = 13


def project_modules() -> dict[str, object]:
    """Dotted module name -> path, for every .py file of the project outside tests/."""
    modules = {p.stem: p for p in REPO.glob("*.py")}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(name: str, path, modules: dict) -> set[str]:
    """The project modules that `name` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:  # import a.b.c loads a.b.c (and its parents)
                    target = target.rpartition(".")[0]
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from its own package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                if f"{origin}.{alias.name}" in modules:  # from package import submodule
                    found.add(f"{origin}.{alias.name}")
                elif origin in modules:
                    found.add(origin)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_reader_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "pkg" / "mod.py"
    source.parent.mkdir()
    source.write_text("def f():\n    import other\n    from . import sibling\n    from pkg.sibling import x\n")
    modules = {"pkg.mod": source, "other": None, "pkg.sibling": None}
    assert imports_of("pkg.mod", source, modules) == {"other", "pkg.sibling"}


def test_the_engine_never_imports_a_study():
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t == "studies" or t.startswith("studies."))
                 for m, targets in graph.items() if not (m == "studies" or m.startswith("studies."))}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_package_imports_no_entry_script():
    """tinyhelen/ is what the entry scripts import, never the other way round (except the models)."""
    graph = import_graph()
    scripts = {p.stem for p in REPO.glob("*.py")} - {"model_llama", "model_mamba", "model_common", "trainer"}
    offenders = {m: sorted(graph[m] & scripts) for m in graph if m.startswith("tinyhelen")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_root_holds_at_most_13_python_files():
    names = sorted(p.name for p in REPO.glob("*.py"))
    assert len(names) <= ROOT_LIMIT, names
    for first in ("model_llama.py", "model_mamba.py", "train.py", "trainer.py"):
        assert first in names


def test_importing_the_llama_loads_no_mamba_scan():
    code = ("import sys, model_llama; bad = [m for m in sys.modules if m.startswith(('model_mamba', "
            "'tinykernels.selective_scan', 'tinykernels.ssd', 'tinykernels.scan'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
