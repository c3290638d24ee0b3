"""The shape of the code: every module has a layer, imports run one way, and nothing imports in a circle.

Layers, from the top (a module may import its own layer and the ones below it, never one above):

    entry points  ->  app factory  ->  views  ->  app state  ->  services  ->  base  ->  clinical knowledge

A new module under service/ must be given its layer here (the test fails until it is), which is the
moment to decide where it belongs. The imports are read from the source with ``ast``: every
``import`` and ``from ... import`` anywhere in a module (inside functions and ``TYPE_CHECKING``
blocks too: a deferred import is still a dependency).
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "hooks", "fhir_fixtures")

#: Top to bottom. A name ending in ``.*`` covers a package's modules (not the package itself).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry points", (
        "service.cli", "service.wsgi",
        "service.ops.production", "service.ops.gunicorn_conf",
        "service.governance.explain", "service.governance.config_reference",
        "service.governance.evaluate", "service.governance.load_fixtures",
    )),
    ("app factory", ("service.app",)),
    ("views", (
        "service.protocol.cds", "service.protocol.openapi",
        "service.ops.health", "service.ops.metrics_view",
        "service.smart.views", "service.smart.landing",
        "service.storage.analytics",
    )),
    ("app state", ("service.state",)),
    ("services", (
        "service.protocol.models", "service.protocol.jsonbody", "service.protocol.guards",
        "service.protocol.cors", "service.protocol.answers", "service.protocol.turns",
        "service.prefetch.completion", "service.prefetch.fhir_client", "service.prefetch.allowlist",
        "service.auth.tokens", "service.auth.keys", "service.auth.replay",
        "service.storage.db", "service.storage.feedback", "service.storage.sql_store",
        "service.storage.smart_sessions", "service.storage.reporting",
        "service.storage.migrations", "service.storage.migrations.env",
        "service.storage.migrations.versions", "service.storage.migrations.versions.*",
        "service.smart.trend", "service.smart.card_html", "service.smart.assets",
    )),
    ("base", (
        "service", "service.protocol", "service.prefetch", "service.auth", "service.storage", "service.smart",
        "service.ops", "service.governance",
        "service.settings", "service.errors", "service.ops.logging", "service.ops.metrics",
    )),
    ("clinical knowledge", ("hooks", "hooks.*", "fhir_fixtures", "fhir_fixtures.*")),
)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` names module a.b when there is one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importing module's package upwards
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                targets.add(candidate if candidate in modules else source)
    return {t for t in targets if t.split(".")[0] in PACKAGES and t != name}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(name: str, layers=LAYERS) -> list[int]:
    """Indexes of every layer that claims ``name`` (exactly one, when the map is right)."""
    claims = []
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if name == pattern or (pattern.endswith(".*") and fnmatch.fnmatchcase(name, pattern)):
                claims.append(index)
                break
    return claims


def layer_problems(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Modules without exactly one layer, imports of missing modules, and imports that go upwards."""
    problems = []
    where: dict[str, int] = {}
    for name in sorted(graph):
        claims = layer_of(name, layers)
        if len(claims) != 1:
            problems.append(f"{name}: in {len(claims)} layers of the map; give it exactly one")
        else:
            where[name] = claims[0]
    for name in sorted(graph):
        for target in sorted(graph[name]):
            if target not in graph:
                problems.append(f"{name} imports {target}, which is no module of the project")
            elif name in where and target in where and where[target] < where[name]:
                problems.append(f"{name} ({layers[where[name]][0]}) imports {target} ({layers[where[target]][0]}), "
                                "a layer above it")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import one another in a circle (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative: a long chain of imports must not hit the recursion limit
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


# ------------------------------------------------------------------ the project


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_the_walk_sees_the_whole_project(graph):
    assert {"service.app", "service.state", "service.protocol.cds", "service.storage.migrations.env",
            "hooks.engine", "fhir_fixtures.samples"} <= set(graph)
    # lazy and type-only imports count: the app factory's views, the CLI's deferred commands
    assert {"service.protocol.cds", "service.state"} <= graph["service.app"]
    assert "service.governance.explain" in graph["service.cli"]


def test_every_module_has_one_layer_and_imports_run_downwards(graph):
    assert layer_problems(graph) == []


def test_no_module_imports_itself_in_a_circle(graph):
    assert cycles(graph) == []


def test_hooks_never_imports_service(graph):
    assert {(m, t) for m, targets in graph.items() if m.split(".")[0] == "hooks"
            for t in targets if t.split(".")[0] == "service"} == set()


def test_every_service_package_says_what_lives_there(graph):
    """Each package's __init__ is a docstring and nothing else: importing a package loads no module."""
    for name, path in project_modules().items():
        if name.split(".")[0] != "service" or path.name != "__init__.py" or name == "service.smart.assets":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no docstring"
        assert len(tree.body) == 1, f"{path.relative_to(ROOT)} holds more than its docstring"


def test_the_readme_maps_every_package():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    packages = sorted(p.name for p in (ROOT / "service").iterdir() if (p / "__init__.py").is_file())
    mapped = set(re.findall(r"`service/([a-z_]+)/`", readme))
    assert set(packages) - {"assets"} <= mapped, set(packages) - mapped


# ------------------------------------------------------------------ the checks themselves


def test_the_checks_catch_an_upward_import_a_cycle_and_an_unmapped_module():
    layers = (("top", ("a.top",)), ("bottom", ("a.low", "a.low2")))
    graph = {"a.top": {"a.low"}, "a.low": {"a.low2"}, "a.low2": {"a.low", "a.top"}, "a.new": set()}
    problems = layer_problems(graph, layers)
    assert "a.low2 (bottom) imports a.top (top), a layer above it" in problems
    assert "a.new: in 0 layers of the map; give it exactly one" in problems
    assert cycles(graph) == [["a.low", "a.low2", "a.top"]]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"c"}}) == [["a", "b"], ["c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_from_import_of_a_module_and_of_a_name_are_told_apart(tmp_path):
    pkg = tmp_path / "service"
    (pkg / "sub").mkdir(parents=True)
    for path in (pkg / "__init__.py", pkg / "sub" / "__init__.py", pkg / "sub" / "mod.py"):
        path.write_text('"""x"""\n')
    (pkg / "user.py").write_text("from service.sub import mod\nfrom service.sub.mod import thing\n"
                                 "def later():\n    from service import sub\n    from .sub import mod as again\n")
    modules = {name: path for name, path in project_modules(tmp_path).items()}
    assert imports_of("service.user", modules["service.user"], modules) == {"service.sub.mod", "service.sub"}
