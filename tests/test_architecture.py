"""The shape of the code, checked from its own source: the public plugin API is the only door, the core stays in
short modules without import cycles, and the registry stores and looks up without knowing about plugins.

Imports are read from the syntax tree, all of them: at module level, inside functions and under TYPE_CHECKING, since
a lazy import that closes a circle is still a circle a reader has to untangle.
"""
from __future__ import annotations

import ast
import string
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "src" / "deepcourse"
TEMPLATES = CORE / "templates"
MAX_LINES = 400


def core_modules() -> dict[str, Path]:
    """'deepcourse.engine' -> its file, for every module of the core (templates are plugin sources, not core)."""
    found = {}
    for path in sorted(CORE.glob("*.py")):
        name = "deepcourse" if path.stem == "__init__" else f"deepcourse.{path.stem}"
        found[name] = path
    return found


def parse(path: Path) -> ast.Module:
    text = path.read_text(encoding="utf-8")
    if TEMPLATES in path.parents:
        text = string.Template(text).substitute(name="example", dist="deepcourse-example", package="deepcourse_example",
                                                title="example")
    return ast.parse(text, filename=str(path))


def imported(tree: ast.Module, module: str, is_package: bool, modules: set[str] = frozenset()
             ) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a module's tree. `from . import x` imports the submodule x
    when there is one; only a name that is no module (`from . import __version__`) comes from the package itself."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            found += [(target, node.lineno) for target in submodules]
            if len(submodules) < len(node.names):
                found.append((base, node.lineno))
    return found


def core_graph() -> dict[str, set[str]]:
    modules = core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = {target for target, _ in imported(parse(path), name, path.stem == "__init__", set(modules))}
        graph[name] = {t for t in edges if t in modules and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets, as the list of modules around it."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_cycle_finder_finds_cycles_and_lazy_imports() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from . import engine, __version__\n    from .files import x\n")
    found = {t for t, _ in imported(tree, "deepcourse.cli", False, {"deepcourse.engine", "deepcourse.files"})}
    assert found == {"deepcourse.engine", "deepcourse", "deepcourse.files"}


def test_no_import_cycles_in_the_core() -> None:
    graph = core_graph()
    assert len(graph) > 20 and "deepcourse.engine" in graph["deepcourse.runner"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in src/deepcourse: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_registry_is_a_leaf() -> None:
    graph = core_graph()
    assert graph["deepcourse.registry"] <= {"deepcourse.errors", "deepcourse.credits"}, graph["deepcourse.registry"]
    assert not graph["deepcourse.errors"] and not graph["deepcourse.credits"]


def test_core_modules_stay_short() -> None:
    long = {name: n for name, path in core_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"core modules over {MAX_LINES} lines (split them by concept): {long}"


def test_the_core_never_imports_a_plugin() -> None:
    for name, path in core_modules().items():
        for target, line in imported(parse(path), name, path.stem == "__init__"):
            assert not target.startswith(("deepcourse_vision", "deepcourse_sequence")), f"{path}:{line}: {target}"


PLUGIN_SOURCES = sorted([*REPO.glob("plugins/*/src/**/*.py"), *REPO.glob("plugins/*/tests/**/*.py"),
                         *REPO.glob("plugins/*/scripts/*.py"), *TEMPLATES.glob("*/*.py")])


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_and_templates_import_only_the_public_api(path: Path) -> None:
    """A first-party plugin (its code and its tests) and every generated plugin use `deepcourse.api` alone, exactly
    as a third party would; `import deepcourse` itself gives only the package's `__all__` (run, evaluate, ...)."""
    import deepcourse

    for node in ast.walk(parse(path)):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name in ("deepcourse", "deepcourse.api") or not alias.name.startswith("deepcourse."), \
                    f"{where}: import {alias.name}: plugins import deepcourse.api only"
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "deepcourse":
                names = [a.name for a in node.names]
                assert set(names) <= set(deepcourse.__all__), f"{where}: from deepcourse import {', '.join(names)}"
            else:
                assert node.module == "deepcourse.api" or not node.module.startswith("deepcourse."), \
                    f"{where}: from {node.module} import ...: plugins import deepcourse.api only"


def test_plugin_sources_are_found() -> None:
    names = {p.name for p in PLUGIN_SOURCES}
    assert {"task.py", "report.py", "test_vision_cli.py", "test_end_to_end.py", "test_plugin.py"} <= names


def test_every_public_name_exists_and_is_documented() -> None:
    import deepcourse
    import deepcourse.api as api

    for name in api.__all__:
        assert hasattr(api, name), name
    assert len(set(api.__all__)) == len(api.__all__)
    for name in deepcourse.__all__:
        assert getattr(deepcourse, name) is not None
    guide = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    missing = [name for name in api.__all__ if f"`{name}" not in guide]
    assert not missing, f"docs/writing-plugins.md does not document: {missing}"


def test_every_distribution_ships_a_license_and_py_typed() -> None:
    import tomllib

    for root, package in ((REPO, CORE), (REPO / "plugins" / "vision", REPO / "plugins/vision/src/deepcourse_vision"),
                          (REPO / "plugins" / "sequence", REPO / "plugins/sequence/src/deepcourse_sequence")):
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"], root
        assert (root / "LICENSE").read_text().startswith("MIT License"), root
        assert (package / "py.typed").exists(), package
        assert project["dynamic"] == ["version"] and "version" not in project, root  # one place: the package


def test_every_directly_imported_package_is_declared() -> None:
    """What a distribution's code imports is in its own dependencies, not only pulled in by another's."""
    import importlib.metadata as md
    import sys
    import tomllib

    from packaging.requirements import Requirement

    providers = md.packages_distributions()
    norm = lambda n: n.lower().replace("_", "-")  # noqa: E731
    for root, package in ((REPO, CORE), (REPO / "plugins" / "vision", REPO / "plugins/vision/src/deepcourse_vision"),
                          (REPO / "plugins" / "sequence", REPO / "plugins/sequence/src/deepcourse_sequence")):
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        declared = {norm(Requirement(r).name) for r in project["dependencies"]}
        declared |= {norm(Requirement(r).name) for extra in project.get("optional-dependencies", {}).values()
                     for r in extra}
        declared.add(norm(project["name"]))
        for path in package.rglob("*.py"):
            if TEMPLATES in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else []
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top == "__future__":
                        continue
                    dists = {norm(d) for d in providers.get(top, [top])}
                    assert dists & declared, f"{path.relative_to(REPO)}:{node.lineno}: imports {top} " \
                                             f"({', '.join(sorted(dists))}), not declared in {root / 'pyproject.toml'}"


def test_dependency_floors_exclude_known_unsafe_versions() -> None:
    """torch < 2.6: its weights_only=True loader can be bypassed (CVE-2025-32434); datasets < 4.0 can still run a Hub
    repository's loading script. Every distribution that depends on them admits neither."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    floors = {"torch": Version("2.6"), "datasets": Version("4.0")}
    unsafe = {"torch": "2.5.1", "datasets": "3.6.0"}
    checked = set()
    for root in (REPO, REPO / "plugins" / "vision", REPO / "plugins" / "sequence"):
        for line in tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]:
            req = Requirement(line)
            if req.name in floors:
                checked.add((root.name, req.name))
                assert not req.specifier.contains(unsafe[req.name]), f"{root / 'pyproject.toml'}: {line}"
                assert req.specifier.contains(str(floors[req.name])), f"{root / 'pyproject.toml'}: {line}"
    assert {name for _, name in checked} == set(floors) and len(checked) == 6
