"""The core's layers, read from the imports (AST), so that a cycle or an upward import cannot
come back unnoticed.

From the top: ``metalora.cli`` (the commands), ``metalora.api`` (the Python API the commands
wrap), ``metalora.runs`` (set-up, the training loop,
the run directory), the components (adapters, prompts, episodes, evaluation, models, plugin
manager, config, pruning, ...), and the interfaces with the few modules they are made of
(errors, settings, records, hookspecs, the process group, the LoRA defaults). A module may
import its own layer or a lower one. The interfaces may *name* component types in
annotations (imports under ``if TYPE_CHECKING:``) but never import a component at run
time. The package itself (``metalora/__init__.py``, the public plugin API) sits above the
components and below runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metalora"
MAX_LINES = 500

INTERFACES = 0
COMPONENTS = 1
PUBLIC_API = 2
RUNS = 3
API = 4
CLI = 5
LAYER_NAMES = {INTERFACES: "interfaces", COMPONENTS: "components", PUBLIC_API: "public API",
               RUNS: "runs", API: "api", CLI: "cli"}
INTERFACE_MODULES = {"metalora.errors", "metalora.settings", "metalora.records",
                     "metalora.adapter_config",
                     "metalora.hookspecs", "metalora.activity", "metalora.distributed",
                     "metalora.files"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module == "metalora":
        return PUBLIC_API
    if module == "metalora.cli" or module.startswith("metalora.cli."):
        return CLI
    if module == "metalora.api":
        return API
    if module == "metalora.runs" or module.startswith("metalora.runs."):
        return RUNS
    if module.startswith("metalora.interfaces") or module in INTERFACE_MODULES:
        return INTERFACES
    return COMPONENTS


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The metalora modules an import statement in ``module`` reads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "metalora"]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    if base.split(".")[0] != "metalora":
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def imports(module: str) -> list[tuple[str, bool, int]]:
    """``(imported module, type-only, line)`` for every import in ``module``, at any depth."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for inner in child.body:
                    visit_statement(inner, True)
                for inner in child.orelse:
                    visit_statement(inner, type_only)
                continue
            visit_statement(child, type_only)

    def visit_statement(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend((target, type_only, node.lineno) for target in _resolve(module, node))
        else:
            visit(node, type_only)

    visit(tree, False)
    return found


def test_the_import_reader_sees_what_python_imports():
    # a check of the checker: known edges, at module level, in a function and type-only
    edges = {(t, type_only) for t, type_only, _ in imports("metalora.runs.engine")}
    assert ("metalora.runs.setup", False) in edges
    assert ("metalora.runs.plots", False) in edges  # imported inside write_plots
    learner_edges = {(t, type_only) for t, type_only, _ in imports("metalora.interfaces.learner")}
    assert ("metalora.prompts", True) in learner_edges
    assert ("metalora.distributed", False) in learner_edges
    assert layer("metalora.cli.run") == CLI and layer("metalora.runs.state") == RUNS
    assert layer("metalora.api") == API
    assert layer("metalora.adapters") == COMPONENTS and layer("metalora.errors") == INTERFACES


def test_every_import_points_to_the_same_or_a_lower_layer():
    wrong = []
    for module in MODULES:
        for target, type_only, line in imports(module):
            if target not in MODULES or target == module:
                continue
            if layer(target) <= layer(module):
                continue
            if type_only and layer(module) == INTERFACES and layer(target) == COMPONENTS:
                continue  # an interface names a component type in an annotation
            wrong.append(f"{module}:{line} ({LAYER_NAMES[layer(module)]}) imports {target} "
                         f"({LAYER_NAMES[layer(target)]})")
    assert not wrong, "\n".join(wrong)


def test_no_module_outside_the_cli_imports_it():
    sources = [*MODULES.values(), *sorted((ROOT / "plugins").rglob("*.py")),
               *sorted((ROOT / "examples").rglob("*.py"))]
    offenders = []
    for path in sources:
        if path.is_relative_to(PACKAGE / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module == "metalora.cli" or node.module.startswith("metalora.cli.")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(
                    a.name.startswith("metalora.cli") for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def _cycles(type_only: bool) -> list[list[str]]:
    graph = {m: sorted({t for t, only, _ in imports(m)
                        if t in MODULES and t != m and (type_only or not only)})
             for m in MODULES}
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_no_import_cycle_at_run_time():
    assert _cycles(type_only=False) == []


def test_no_import_cycle_even_through_annotations_above_the_interfaces():
    # the only type-level back edges allowed are the interfaces' annotations
    cycles = [c for c in _cycles(type_only=True)
              if not any(layer(m) == INTERFACES for m in c)]
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_core_module_is_over_500_lines(module):
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


# -- the public plugin API ---------------------------------------------------------------------
def _metalora_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metalora"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("metalora")]
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.py")), ids=lambda p: p.name)
def test_the_example_plugin_imports_only_the_public_api(path):
    own = {"metalora_metasgd", "metalora_metasgd.learner"}
    outside = [m for m in _metalora_imports(path) if m != "metalora" and m not in own]
    assert not outside, f"{path.name} imports {outside}; a plugin needs only `metalora`"


def test_every_public_name_resolves_and_is_documented():
    import metalora

    assert len(metalora.__all__) == len(set(metalora.__all__))
    assert set(metalora.__all__) == {"__version__", *metalora._SOURCES}
    for name in metalora.__all__:
        value = getattr(metalora, name)
        if name.isupper() or name in ("__version__", "Register"):
            continue  # constants and a type alias
        assert (value.__doc__ or "").strip(), f"metalora.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'Engine'"):
        metalora.Engine  # noqa: B018 (internals are not part of the surface)


def test_importing_the_public_api_does_not_import_torch():
    code = ("import sys, metalora; from metalora import hookimpl, setting, MetaloraError; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
