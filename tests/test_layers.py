"""The layers of ``app/`` and the tools that keep the code clean.

Imports point down only: each subpackage may import the ones listed for it
in ``ALLOWED`` and nothing above. Read from the source (every ``import``,
including the ones inside functions), so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"

# Lower layers first. A subpackage may import itself and what is listed.
ALLOWED = {
    "models": set(),
    "engine": {"models"},
    "jobs": {"engine", "models"},
    "training": {"engine", "models"},
    "web": {"jobs", "engine", "models"},
    "notebook": {"web", "jobs", "engine", "models"},
    "bench": {"web", "jobs", "engine", "models"},
    "cli": {"bench", "notebook", "training", "web", "jobs", "engine", "models"},
}
# Third-party packages a layer must not touch: the engine and model loading know
# nothing of the web, the queue or the command line.
FORBIDDEN = {
    "models": {"flask", "werkzeug", "redis", "rq", "argparse"},
    "engine": {"flask", "werkzeug", "redis", "rq", "argparse"},
}


def layer_of(path: Path) -> str:
    """A file's layer. ``__main__.py`` files are programs (``python -m app.bench``), not
    library modules: nothing imports them, so they stand outside the layers, like the top."""
    rel = path.relative_to(APP).parts
    return rel[0] if len(rel) > 1 and path.name != "__main__.py" else "(top)"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; use app.<layer>... so the layer is visible")
    return found


def graph() -> dict[str, set[str]]:
    """Layer -> the app layers it imports."""
    edges: dict[str, set[str]] = {}
    for path in sorted(APP.rglob("*.py")):
        layer = layer_of(path)
        targets = {name.split(".")[1] for name in imports(path) if name.startswith("app.")}
        edges.setdefault(layer, set()).update(t for t in targets if t != layer)
    return edges


def test_imports_point_down_only():
    edges = graph()
    for layer, targets in edges.items():
        if layer == "(top)":  # app/__init__.py (create_app re-export), the __main__ programs, old-path aliases
            continue
        assert layer in ALLOWED, f"app/{layer}/ is a new layer: add it to ALLOWED with what it may import"
        assert targets <= ALLOWED[layer], f"app/{layer} imports {sorted(targets - ALLOWED[layer])}, above it"
    print("\n" + "\n".join(f"{layer}: {', '.join(sorted(t)) or '-'}" for layer, t in sorted(edges.items())))


def test_the_layers_have_no_import_circle():
    edges = graph()
    edges.pop("(top)", None)
    seen: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        if seen.get(node) == "done":
            return
        assert seen.get(node) != "open", "import circle: " + " -> ".join(stack + [node])
        seen[node] = "open"
        for target in edges.get(node, ()):
            visit(target, stack + [node])
        seen[node] = "done"

    for node in edges:
        visit(node, [])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(APP.rglob("*.py"))}


def _type_only(tree: ast.AST) -> set[int]:
    """The import nodes under ``if TYPE_CHECKING:``: they never run, so they close no
    cycle (a feature names the request type it is handed without importing types.py)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skip.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skip


def _known(name: str) -> str | None:
    """The app module ``name`` is, or lies in (``app.engine.types.X`` -> ``app.engine.types``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def module_imports(path: Path) -> set[str]:
    """The app modules ``path`` imports, wherever the import is (module level, in a function,
    in a method): ``from pkg import submodule`` counts as the submodule, a relative import is
    resolved. A package's ``__init__`` run on the way to a submodule does not count: every module
    would then import its own package."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(m for alias in node.names if (m := _known(alias.name)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else _known(base)
                if target:
                    found.add(target)
    found.discard(me)
    return found


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles as chains (``a -> b -> a``): the modules that import each other round
    a circle (Tarjan's strongly connected groups), and through each of them its shortest cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    chains: list[list[str]] = []
    for group in groups:  # through each module of the group, a shortest way back to it
        for start in sorted(group):
            paths = {start: [start]}
            queue = [start]
            chain = None
            while queue and chain is None:
                here = queue.pop(0)
                for target in sorted(edges[here] & group):
                    if target == start:
                        chain = paths[here]
                        break
                    if target not in paths:
                        paths[target] = paths[here] + [target]
                        queue.append(target)
            assert chain is not None
            first = chain.index(min(chain))  # one spelling per cycle: from its smallest name
            chain = chain[first:] + chain[:first]
            if chain + [chain[0]] not in chains:
                chains.append(chain + [chain[0]])
    return chains


def test_import_cycles_are_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e", "g"}, "g": {"f"}}
    assert import_cycles(edges) == [["a", "b", "c", "a"], ["e", "f", "e"], ["f", "g", "f"]]


def test_no_module_imports_itself_back():
    """No cycle between app modules, counting the imports inside functions: a lazy import
    hides a cycle from Python, not from the reader (nor from a refactoring that hoists it)."""
    edges = {name: module_imports(path) for name, path in MODULES.items()}
    cycles = import_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(chain) for chain in cycles)


def test_blueprints_share_through_the_service_module():
    """No module of app/web imports the app factory (``app/web/__init__.py``) for what the
    views share: that lives in app/web/service.py."""
    for name, path in MODULES.items():
        if name.startswith("app.web.") and "app.web" in module_imports(path):
            raise AssertionError(f"{path.relative_to(ROOT)} imports app/web/__init__.py; use app.web.service")


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py, shared helpers in helpers.py and browser_helpers.py:
    a fixture imported from another test module is a second copy of it (a session-scoped one
    made twice), and that module's tests are collected again under the importer's name."""
    tests = ROOT / "tests"
    names = {path.stem for path in tests.glob("test_*.py")}
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module in (None, "tests"):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                found = [node.module or ""]
            else:
                continue
            bad = [name for name in found if name.removeprefix("tests.") in names]
            assert not bad, f"tests/{path.name}:{node.lineno} imports {bad}: move what it needs to conftest.py or helpers.py"


def test_engine_and_models_know_nothing_of_web_queue_or_cli():
    for layer, banned in FORBIDDEN.items():
        for path in (APP / layer).rglob("*.py"):
            bad = {name for name in imports(path) if name.split(".")[0] in banned}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_cli_builds_argparse_parsers():
    for path in APP.rglob("*.py"):
        if layer_of(path) != "cli":
            assert "argparse" not in {n.split(".")[0] for n in imports(path)}, path.relative_to(ROOT)


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "app", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_mypy_is_clean():
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_pyproject_lists_the_requirements_colab_installs():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert project["dependencies"] == [line for line in lines if line]
    assert project["scripts"]["t2i"] == "app.cli:main"
