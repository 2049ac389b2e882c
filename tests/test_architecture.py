"""The shape of the code, checked from its own source: the floor plan (a flat contract and six wings, each importing
only its own floor and those below), the public plugin API as the only door, short modules without import cycles,
and a registry that stores and looks up without knowing about plugins.

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
TEMPLATES = CORE / "cli" / "templates"
MAX_LINES = 400

#: The floor plan, bottom up (docs/writing-plugins.md draws it). A module imports modules of its own floor or of a
#: floor below, never above; a name ending in a wing's folder stands for every module of that wing.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("contract: the leaves", ("deepcourse._version", "deepcourse.errors", "deepcourse.registry", "deepcourse.figures",
                              "deepcourse.attribution", "deepcourse.metrics", "deepcourse.optim",
                              "deepcourse.discovery")),
    ("lab", ("deepcourse.lab",)),
    ("recipe", ("deepcourse.recipe",)),
    ("contract: data and tasks", ("deepcourse.data", "deepcourse.task")),
    ("rundir", ("deepcourse.rundir",)),
    ("training", ("deepcourse.training",)),
    ("contract: the plugin API", ("deepcourse.api",)),
    ("results", ("deepcourse.results",)),
    ("studies", ("deepcourse.studies",)),
    ("faces", ("deepcourse", "deepcourse.__main__", "deepcourse.runner", "deepcourse.builtins", "deepcourse.testing",
               "deepcourse.cli")),
]
#: the one arrow allowed to run up, for one release: api's lazy, deprecated re-exports of deepcourse.testing
DEPRECATED_UPWARD = {("deepcourse.api", "deepcourse.testing")}
WINGS = {"lab", "recipe", "rundir", "training", "results", "studies", "cli"}
FLAT_CONTRACT = {"__init__", "__main__", "_version", "api", "runner", "errors", "registry", "discovery", "task", "data",
                 "metrics", "optim", "figures", "attribution", "testing", "builtins"}


def core_modules() -> dict[str, Path]:
    """'deepcourse.training.loop' -> its file, for every module of the core (templates are plugin sources, not core)."""
    found = {}
    for path in sorted(CORE.rglob("*.py")):
        if TEMPLATES in path.parents:
            continue
        parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def floor_of(module: str) -> int:
    """The floor a module stands on: the most specific name of FLOORS that is it or a package above it."""
    best = (-1, -1)
    for index, (_, names) in enumerate(FLOORS):
        for name in names:
            if module == name or (name != "deepcourse" and module.startswith(name + ".")):
                best = max(best, (len(name), index))
    assert best[1] >= 0, f"{module} stands on no floor of the plan: add it to FLOORS in {__file__}"
    return best[1]


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
    tree = ast.parse("def f():\n    from . import loop, __version__\n    from .files import x\n")
    found = {t for t, _ in imported(tree, "deepcourse.training.build", False,
                                    {"deepcourse.training.loop", "deepcourse.training.files"})}
    assert found == {"deepcourse.training.loop", "deepcourse.training", "deepcourse.training.files"}


def test_no_import_cycles_in_the_core() -> None:
    graph = core_graph()
    assert len(graph) > 20 and "deepcourse.training.loop" in graph["deepcourse.runner"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in src/deepcourse: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("plugin", ["vision", "sequence"])
def test_no_import_cycles_in_a_plugin(plugin: str) -> None:
    """A plugin's own modules stack too (type-only imports count: a reader follows them the same way)."""
    src = REPO / "plugins" / plugin / "src"
    modules = {".".join(p.relative_to(src).with_suffix("").parts[:-1] if p.stem == "__init__" else
                        p.relative_to(src).with_suffix("").parts): p for p in src.rglob("*.py")}
    graph = {name: {t for t, _ in imported(parse(path), name, path.stem == "__init__", set(modules))
                    if t in modules and t != name} for name, path in modules.items()}
    assert len(graph) > 8
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles in plugins/{plugin}: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_flat_contract_and_the_six_wings() -> None:
    flat = {p.stem for p in CORE.glob("*.py")}
    folders = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert flat == FLAT_CONTRACT, f"modules beside the wings changed: {flat ^ FLAT_CONTRACT} (a concept's module " \
                                  f"belongs in its wing; the flat contract is what plugins and faces stand on)"
    assert folders == WINGS, folders ^ WINGS
    for name in core_modules():
        floor_of(name)  # every module has a place in the plan


def test_wings_import_downward_only() -> None:
    """Each import goes to the importer's own floor or one below: no arrow runs back up the plan."""
    upward = [f"{source} (floor {floor_of(source)}: {FLOORS[floor_of(source)][0]}) imports {target} "
              f"(floor {floor_of(target)}: {FLOORS[floor_of(target)][0]})"
              for source, targets in core_graph().items() for target in sorted(targets)
              if floor_of(target) > floor_of(source) and (source, target) not in DEPRECATED_UPWARD]
    assert not upward, "imports running up the floor plan:\n" + "\n".join(upward)


def test_the_floor_check_sees_an_upward_import() -> None:
    assert floor_of("deepcourse.training.loop") > floor_of("deepcourse.recipe.load") > floor_of("deepcourse.errors")
    assert floor_of("deepcourse.cli.main") == floor_of("deepcourse.runner") > floor_of("deepcourse.studies.tune")
    assert floor_of("deepcourse") == len(FLOORS) - 1 and floor_of("deepcourse.api") < floor_of("deepcourse.results")


def test_importing_the_plugin_api_loads_no_command_line_and_no_studies() -> None:
    import subprocess
    import sys

    code = "import sys, deepcourse.api; print(' '.join(sorted(m for m in sys.modules if m.startswith('deepcourse'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "deepcourse.api" in loaded and "deepcourse.training.evaluation" in loaded
    assert not [m for m in loaded if m.startswith(("deepcourse.cli", "deepcourse.studies", "deepcourse.results"))], \
        loaded


def test_the_registry_and_discovery_are_leaves() -> None:
    graph = core_graph()
    assert graph["deepcourse.registry"] <= {"deepcourse.errors"}, graph["deepcourse.registry"]
    assert not graph["deepcourse.errors"]
    # discovery imports no component: the core's own arrive through its entry point, like every plugin's
    assert graph["deepcourse.discovery"] <= {"deepcourse.errors", "deepcourse.registry", "deepcourse._version"}, \
        graph["deepcourse.discovery"]


def test_core_modules_stay_short() -> None:
    long = {name: n for name, path in core_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"core modules over {MAX_LINES} lines (split them by concept): {long}"


def test_the_core_never_imports_a_plugin() -> None:
    for name, path in core_modules().items():
        for target, line in imported(parse(path), name, path.stem == "__init__"):
            assert not target.startswith(("deepcourse_vision", "deepcourse_sequence")), f"{path}:{line}: {target}"


PLUGIN_SOURCES = sorted([*REPO.glob("plugins/*/src/**/*.py"), *REPO.glob("plugins/*/tests/**/*.py"),
                         *REPO.glob("plugins/*/scripts/*.py"), *TEMPLATES.glob("*/*.py.tmpl")])
#: what a plugin may import: the API, and in its tests the documentation and test helpers
PUBLIC = ("deepcourse.api", "deepcourse.testing")
#: a lab plugin (what `new-plugin --kind lab` writes) may also import `deepcourse.lab`, the public face of the labs:
#: the course's exercises are written against it (`lab.layer`, `lab.loss`, `lab.update_rule`, `lab.check`, what a
#: student reads in the docs), and `deepcourse.api` re-exports only what other plugins need to build modules from
#: pieces. Any other plugin source reaches lab pieces through `deepcourse.api` alone.
LAB_FACE = "deepcourse.lab"
LAB_PLUGIN_SOURCES = TEMPLATES / "lab"


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_and_templates_import_only_the_public_api(path: Path) -> None:
    """A first-party plugin (its code and its tests) and every generated plugin use `deepcourse.api` alone, exactly
    as a third party would, and their tests `deepcourse.testing` too; `import deepcourse` itself gives only the
    package's `__all__` (run, evaluate, ...)."""
    import deepcourse

    is_test = "tests" in path.parts or path.name.startswith("test_")
    allowed: tuple[str, ...] = PUBLIC if is_test else PUBLIC[:1]
    if LAB_PLUGIN_SOURCES in path.parents:
        allowed += (LAB_FACE,)
    for node in ast.walk(parse(path)):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name in ("deepcourse", *allowed) or not alias.name.startswith("deepcourse."), \
                    f"{where}: import {alias.name}: plugins import {' and '.join(allowed)} only"
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "deepcourse":
                names = [a.name for a in node.names]
                public = {*deepcourse.__all__, *(m.removeprefix("deepcourse.") for m in allowed)}
                assert set(names) <= public, f"{where}: from deepcourse import {', '.join(names)}"
            else:
                assert node.module in allowed or not node.module.startswith("deepcourse."), \
                    f"{where}: from {node.module} import ...: plugins import {' and '.join(allowed)} only"


def test_plugin_sources_are_found() -> None:
    names = {p.name for p in PLUGIN_SOURCES}
    assert {"task.py", "report.py", "test_vision_cli.py", "test_end_to_end.py", "test_plugin.py.tmpl"} <= names


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

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

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
