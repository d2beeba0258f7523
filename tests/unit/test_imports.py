"""The package's imports form no circle: read with `ast` from the source (imports inside functions
count too: deferring an import hides a circle, it does not remove it), a module depends on what
it imports. (A module's own packages are not counted: they are always in sys.modules, half made,
while it loads; a name imported from one of them is.)"""
import ast
from pathlib import Path

from scripts.lab.common import REPO

PACKAGE = REPO / "pipeline"


def module_name(path: Path, top: Path) -> str:
    parts = list(path.relative_to(top).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its source."""
    paths = {module_name(p, root.parent): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        named = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                for alias in node.names:  # `from pkg import module` imports the module; else the name's module
                    named.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        deps = set()
        for target in named:
            while target and target not in paths:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "pipeline.s4_infer.loader" in graph["pipeline.app"]
    assert cycles(graph) == []


def test_the_engine_interface_imports_no_backend_and_one_loader_imports_them_all():
    graph = import_graph()
    backends = {"pipeline.s4_infer.onnxruntime_backend", "pipeline.s4_infer.tensorrt_backend",
                "pipeline.s4_infer.stub_backend"}
    assert not graph["pipeline.s4_infer.engine"] & backends
    assert not graph["pipeline.s4_infer"] & backends
    assert {m for m, deps in graph.items() if deps & backends} == {"pipeline.s4_infer.loader"}


def test_the_checker_finds_a_circle(tmp_path):
    """A circle hidden in a function's import, as s4_infer had one, is found."""
    package = tmp_path / "pipeline"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pipeline.sub.a import A\n")
    (package / "sub" / "a.py").write_text("class A:\n    pass\n\ndef load():\n    from pipeline.sub import b\n")
    (package / "sub" / "b.py").write_text("from pipeline.sub.a import A\n")
    assert cycles(import_graph(package)) == [["pipeline.sub.a", "pipeline.sub.b"]]


def test_every_folder_of_code_is_a_package_the_wheel_ships():
    """setuptools' find_packages (pyproject.toml) skips a folder without __init__.py: its modules
    would import here, from the source tree, and be missing from the installed package and image."""
    from setuptools import find_packages

    shipped = set(find_packages(str(REPO), include=["pipeline*"]))
    folders = {module_name(p.parent / "__init__.py", REPO) for p in PACKAGE.rglob("*.py")}
    assert folders <= shipped, folders - shipped
