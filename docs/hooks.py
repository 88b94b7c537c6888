"""MkDocs hook: the parts of the documentation that are generated from the code.

A page asks for generated content with a directive, an HTML comment alone on
a line, which this hook replaces before the page is converted:

``<!-- metalora:cli -->``
    The CLI reference: every command of the Typer app (``metalora run``,
    ``plugins``, ``tasks`` and whatever a built-in plugin adds through
    ``register_commands``), its usage line, help and options, walked from
    ``typer.main.get_command(build_app())``.
``<!-- metalora:registry KIND -->``
    Every built-in implementation of ``KIND`` (learner, prior, suite, metric,
    pruner, logger) with its description and the table of its ``Settings``
    dataclass (:func:`metalora.settings.field_infos`).
``<!-- metalora:settings MODULE:CLASS OWNER -->``
    The settings table of one ``Settings`` dataclass (e.g. the example
    plugin's, on the tutorial page).
``<!-- metalora:api-rest PACKAGE -->``
    mkdocstrings ``:::`` blocks for every module of ``PACKAGE`` that no other
    page documents, so a new module appears in the API reference by itself.
``<!-- metalora:public-api -->``
    mkdocstrings ``:::`` blocks of every name in ``metalora.__all__`` (the
    plugin API), grouped by the module that defines it.
``<!-- metalora:benchmarks -->``
    ``benchmarks/README.md`` (if it exists) and every benchmark script with
    the command that runs it, from the script's docstring.

"Built-in" means registered by the ``metalora`` distribution's own entry
points: the generated pages are the same whichever third-party plugins are
installed where the site is built. Nothing is written into ``docs/``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PROG = "metalora"
BUILTIN_DISTRIBUTION = "metalora"

DIRECTIVE = re.compile(r"^<!-- metalora:(?P<name>[\w-]+)(?: +(?P<arg>[^>]*?))? *-->[ \t]*$",
                       re.MULTILINE)
API_BLOCK = re.compile(r"^::: +([\w.]+)", re.MULTILINE)
HTML_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):<code>(~?)")
LITERAL_MARK = re.compile(r"(<p>)?::</p>")


class DocsError(Exception):
    """A directive that cannot be rendered (stops the build)."""


# -- plugins -----------------------------------------------------------------------------
def builtin_plugin_manager():
    """A plugin manager holding only the ``metalora`` distribution's own entry points.

    Unlike :class:`~metalora.plugins.PluginManager`'s own loading, it ignores
    ``METALORA_PLUGINS`` and lets a built-in plugin that fails to import stop the
    build instead of leaving it out of the docs with a warning.
    """
    from metalora.plugins import ENTRY_POINT_GROUP, PluginManager

    manager = PluginManager(load_entry_points=False)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        if dist == BUILTIN_DISTRIBUTION and ep.name not in manager.plugin_names():
            manager.register(ep.load(), name=ep.name, provider=BUILTIN_DISTRIBUTION)
    return manager


# -- markdown helpers ----------------------------------------------------------------------
def md_escape(text: str) -> str:
    """Escape Markdown outside code spans (so help texts render literally)."""
    parts = re.split(r"(``[^`\n]+``|`[^`\n]*`)", " ".join(str(text).split()))
    for i in range(0, len(parts), 2):
        part = parts[i].replace("\\", "\\\\")
        for char in "*_[]|":
            part = part.replace(char, "\\" + char)
        parts[i] = part.replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts)


def code(value: str) -> str:
    """``value`` as an inline code span."""
    return f"`{value}`" if "`" not in value else f"`` {value} ``"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- CLI reference -------------------------------------------------------------------------
def cli_commands(app) -> Iterator[tuple[str, Any, Any]]:
    """``(command path, command, context)`` for the app and every (nested) command."""
    import typer

    root = typer.main.get_command(app)
    yield from _walk(root, root.make_context(PROG, [], resilient_parsing=True))


def _subcommands(command, ctx) -> Iterator[tuple[str, Any]]:
    """``(name, command)`` of a group's visible subcommands (none for a plain command)."""
    for name in command.list_commands(ctx) if hasattr(command, "list_commands") else ():
        sub = command.get_command(ctx, name)
        if sub is not None and not getattr(sub, "hidden", False):
            yield name, sub


def _walk(command, ctx) -> Iterator[tuple[str, Any, Any]]:
    yield ctx.command_path, command, ctx
    for name, sub in _subcommands(command, ctx):
        yield from _walk(sub, sub.make_context(name, [], parent=ctx, resilient_parsing=True))


def help_text(text: str | None) -> str:
    """A command's or option's help as written, without rich-markup escapes (``\\[``)."""
    return inspect.cleandoc(text or "").replace("\\[", "[")


def _first_paragraph(text: str | None) -> str:
    return help_text(text).split("\n\n", 1)[0]


def cli_reference(app) -> str:
    """The Markdown CLI reference of a Typer app: one section per command."""
    sections = []
    for path, command, ctx in cli_commands(app):
        lines = [f"## `{path}`", ""]
        paragraphs = [p for p in help_text(command.help).split("\n\n") if p.strip()]
        lines += [md_escape(p) + "\n" for p in paragraphs]
        lines += ["```text", command.get_usage(ctx).strip(), "```", ""]
        rows = [[f"[`{name}`](#{path.replace(' ', '-')}-{name})",
                  md_escape(_first_paragraph(sub.help))]
                for name, sub in _subcommands(command, ctx)]
        if rows:
            lines += ["**Commands**", "", table(["Command", "Description"], rows), ""]
        panels: dict[str, list[list[str]]] = {}
        for param in command.get_params(ctx):
            if getattr(param, "hidden", False):
                continue
            record = param.get_help_record(ctx)
            if record is None:
                continue
            names, help_ = record
            if param.param_type_name == "argument":
                panel = "Arguments"
            else:
                panel = getattr(param, "rich_help_panel", None) or "Options"
            panels.setdefault(panel, []).append([code(names), md_escape(help_text(help_))])
        for panel, rows in panels.items():
            lines += [f"**{md_escape(panel)}**", "", table(["Option", "Description"], rows), ""]
        sections.append("\n".join(lines))
    return "\n".join(sections)


# -- settings and registries ------------------------------------------------------------------
def _type_name(info) -> str:
    if info.type is list:
        return f"list[{info.item_type.__name__}]"
    return info.type.__name__


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list):
        return code(",".join(str(v) for v in value)) if value else "(empty)"
    return code(repr(value) if isinstance(value, float) else str(value))


def settings_table(settings_cls: type, owner: str, merged: dict | None = None) -> str:
    """The Markdown table of one ``Settings`` dataclass.

    ``merged`` (name -> merged :class:`~metalora.settings.SettingInfo`) adds
    which other implementations declare the same setting.
    """
    from metalora.settings import field_infos

    infos = field_infos(settings_cls, owner)
    if not infos:
        return "No settings of its own."
    rows = []
    for info in infos:
        text = md_escape(info.help)
        if info.choices:
            text += " Choices: " + ", ".join(code(c) for c in info.choices) + "."
        others = [o for o in (merged or {}).get(info.name, info).owners if o != owner]
        if others:
            text += " Shared with: " + ", ".join(md_escape(o) for o in others) + "."
        rows.append([code(info.name), code("--" + info.name.replace("_", "-")),
                     code(_type_name(info)), _default(info.default), text])
    return table(["Setting", "Option", "Type", "Default", "Description"], rows)


def _implementation_facts(kind: str, reg, cls: type) -> list[str]:
    facts = [f"class `{cls.__module__}.{cls.__qualname__}`",
             f"entry point `{reg.plugin}` of package `{reg.provider}`"]
    if kind == "metric":
        facts.append("higher is better" if cls.higher_is_better else "lower is better")
    if kind == "learner" and getattr(cls, "mean_pair", "default") != "default":
        facts.append(f"global mean pair `{cls.mean_pair}`")
    if kind == "suite":
        facts.append("reads data (`--data-dir` or the hub)" if reg.implementation.needs_data
                     else "no external data")
    return facts


def registry_reference(manager, kind: str) -> str:
    """Every implementation of ``kind`` in ``manager``: description, facts, settings."""
    from metalora.config import all_setting_infos
    from metalora.hookspecs import HOOK_KINDS

    kinds = tuple(HOOK_KINDS.values())
    if kind not in kinds:
        raise DocsError(f"unknown registry kind {kind!r}; valid choices: {', '.join(kinds)}")
    merged = all_setting_infos(manager)
    sections = []
    for reg in manager.registry(kind):
        impl = reg.implementation
        cls = impl if isinstance(impl, type) else type(impl)
        lines = [f"## `{reg.name}`", ""]
        description = getattr(impl, "description", "") or ""
        if description:
            lines += [md_escape(description), ""]
        lines += ["*" + "; ".join(_implementation_facts(kind, reg, cls)) + ".*", ""]
        doc = inspect.getdoc(cls)
        if doc and doc.strip() != description.strip():
            lines += [doc, ""]
        if kind == "suite":
            lines += _suite_tasks(impl)
            recommended = getattr(impl, "recommended", {}) or {}
            if recommended:
                items = [f"`{k}.{n} = {x!r}`" if isinstance(v, dict) else f"`{k} = {v!r}`"
                         for k, v in recommended.items()
                         for n, x in (v.items() if isinstance(v, dict) else [(None, None)])]
                lines += ["**Recommended settings** (used where none is given; an option "
                          "overrides each): " + ", ".join(items) + ".", ""]
        settings_cls = getattr(impl, "Settings", None)
        if settings_cls is not None and dataclasses.is_dataclass(settings_cls):
            lines += ["**Settings**", "", settings_table(settings_cls, reg.name, merged), ""]
        sections.append("\n".join(lines))
    if not sections:
        return f"*The metalora package registers no {kind} in this version.*\n"
    return "\n".join(sections)


def _suite_tasks(sampler) -> list[str]:
    roles = sampler.roles()
    counts = ", ".join(f"{len(roles.get(r, []))} {r.value}" for r in roles)
    lines = [f"Tasks: {counts}.", "", '??? info "Task names"', ""]
    for role, names in roles.items():
        listed = ", ".join(code(n) for n in names) or "(none)"
        lines.append(f"    **{role.value}**: {listed}\n")
    return lines + [""]


# -- API reference -------------------------------------------------------------------------
def documented_identifiers(docs_dir: Path, skip: Path | None = None) -> set[str]:
    """What the pages (except ``skip``) document: every ``::: identifier`` block, every
    public name (``metalora:public-api``) and every package of an ``api-rest`` directive."""
    found: set[str] = set()
    for page in docs_dir.rglob("*.md"):
        if skip is not None and page.resolve() == skip.resolve():
            continue
        text = page.read_text(encoding="utf-8")
        found |= set(API_BLOCK.findall(text))
        for match in DIRECTIVE.finditer(text):
            if match["name"] == "api-rest" and match["arg"]:
                found.add(match["arg"].strip())
            elif match["name"] == "public-api":
                found |= {f"{module}.{name}" for module, names in public_api().items()
                          for name in names}
    return found


def public_api() -> dict[str, list[str]]:
    """module -> the names of ``metalora.__all__`` it defines, in ``__all__``'s order."""
    import metalora

    grouped: dict[str, list[str]] = {}
    for name, module in metalora._SOURCES.items():
        grouped.setdefault(module, []).append(name)
    return grouped


def public_api_page() -> str:
    """``:::`` blocks of every name in ``metalora.__all__``, grouped by defining module."""
    blocks = []
    for module, names in public_api().items():
        blocks.append(f"::: {module}\n    options:\n      show_root_heading: true\n"
                      f"      members: [{', '.join(names)}]")
    return "\n\n".join(blocks)


def package_modules(package: str) -> list[tuple[str, bool]]:
    """``(module, is_package)`` for ``package`` and its public modules, read from the
    repository's source folders (nothing is imported)."""
    for base in (ROOT, ROOT / "plugins"):
        folder = base / package.replace(".", "/")
        if (folder / "__init__.py").exists():
            break
    else:
        raise DocsError(f"package {package!r} is not in the repository")
    found = []
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(base).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        parts = parts[:-1] if is_package else parts
        if not any(part.startswith("_") for part in parts):
            found.append((".".join(parts), is_package))
    return sorted(found)


def _module_path(module: str) -> Path:
    for base in (ROOT, ROOT / "plugins"):
        folder = base / module.replace(".", "/")
        if (folder / "__init__.py").exists():
            return folder / "__init__.py"
        if folder.with_suffix(".py").exists():
            return folder.with_suffix(".py")
    raise DocsError(f"module {module!r} is not in the repository")


def _defined_names(path: Path) -> list[str]:
    """Public names a module defines itself (classes, functions, assignments), not imports."""
    names: list[str] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def api_rest(package: str, documented: set[str]) -> str:
    """``:::`` blocks for the modules of ``package`` that no other page documents.

    A package with modules of its own shows its docstring and only the objects
    it defines itself (its modules follow), so re-exported objects are
    documented once, where they are defined.
    """
    modules = package_modules(package)
    names = {m for m, _ in modules}
    # what a page documents for this package: a broader directive or block does not count
    documented = {d for d in documented if not (package == d or package.startswith(d + "."))}

    def is_module(identifier: str) -> bool:
        return identifier in names or any(m.startswith(identifier + ".") for m in names)

    def covered(module: str) -> bool:
        return any(module == d or module.startswith(d + ".")
                   or (d.startswith(module + ".") and is_module(d)) for d in documented)

    blocks = []
    for module, is_package in modules:
        if covered(module):
            continue
        has_children = is_package and any(m.startswith(module + ".") for m, _ in modules)
        if module == package and has_children and "." not in package:
            continue  # a distribution's top package: its page says what it holds
        elsewhere = {d[len(module) + 1:] for d in documented
                     if d.startswith(module + ".") and "." not in d[len(module) + 1:]}
        block = f"::: {module}"
        if has_children or elsewhere:
            defined = [n for n in _defined_names(_module_path(module)) if n not in elsewhere]
            if elsewhere and not defined:
                continue  # every name of it is documented (with the module) on another page
            block += "\n    options:\n      members: " + (
                "[" + ", ".join(defined) + "]" if defined else "false")
        blocks.append(block)
    return "\n\n".join(blocks)


# -- benchmarks ----------------------------------------------------------------------------
def _strip_relative_links(markdown: str) -> str:
    """``[text](relative/path)`` -> ``text`` (the target is not part of the site)."""
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#|mailto:)[^)]*\)", r"\1", markdown)


def _commands(doc: str, invocation: str) -> list[str]:
    """The lines of ``doc`` that run ``invocation`` (with their ``\\`` continuations)."""
    lines = [line.strip() for line in doc.splitlines()]
    commands: list[str] = []
    i = 0
    while i < len(lines):
        if invocation in lines[i]:
            commands.append(lines[i])
            while lines[i].endswith("\\") and i + 1 < len(lines):
                i += 1
                commands.append("    " + lines[i])
        i += 1
    return commands or [invocation]


def benchmarks_page(root: Path = ROOT) -> str:
    """The measured tables of ``benchmarks/README.md`` and every script's command."""
    folder = root / "benchmarks"
    parts = []
    readme = folder / "README.md"
    if readme.exists():
        text = _strip_relative_links(readme.read_text(encoding="utf-8"))
        text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.MULTILINE)
        text = re.sub(r"^## .*\n", "", text, count=1) if text.startswith("## ") else text
        parts += ["## Measured results", "",
                  "From `benchmarks/README.md`, where each table names the command that "
                  "produced it.", "", text.strip(), ""]
    else:
        parts += ["## Measured results", "",
                  "No measured tables are recorded in the repository yet "
                  "(`benchmarks/README.md` is absent); the numbers of each benchmark are in "
                  "the closing notes of the issue that added it. Run the scripts below to "
                  "measure on your machine.", ""]
    parts += ["## Scripts", ""]
    for script in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        title = doc.split("\n", 1)[0].strip() or script.stem
        commands = _commands(doc, f"python benchmarks/{script.name}")
        parts += [f"### `{script.name}`", "", md_escape(title), "",
                  "```bash", *commands, "```", ""]
    return "\n".join(parts)


# -- directives and MkDocs events ----------------------------------------------------------------
_state: dict[str, Any] = {}


def _manager():
    if "manager" not in _state:
        _state["manager"] = builtin_plugin_manager()
    return _state["manager"]


def _import(target: str) -> Any:
    module, _, name = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise DocsError(f"cannot import {module!r}: {exc}") from None
    return getattr(obj, name) if name else obj


def render(name: str, arg: str, page_path: Path | None = None) -> str:
    """The Markdown that replaces one directive."""
    args = arg.split()
    if name == "cli":
        from metalora.cli import build_app

        return cli_reference(build_app(_manager()))
    if name == "registry" and len(args) == 1:
        return registry_reference(_manager(), args[0])
    if name == "settings" and len(args) == 2:
        from metalora.config import all_setting_infos

        merged = all_setting_infos(_manager())
        return settings_table(_import(args[0]), args[1], merged)
    if name == "api-rest" and len(args) == 1:
        return api_rest(args[0], documented_identifiers(DOCS, skip=page_path))
    if name == "public-api" and not args:
        return public_api_page()
    if name == "benchmarks" and not args:
        return benchmarks_page()
    raise DocsError(f"unknown or malformed directive 'metalora:{name} {arg}'")


def expand(markdown: str, page_path: Path | None = None) -> str:
    """Replace every directive in ``markdown``."""
    return DIRECTIVE.sub(lambda m: render(m["name"], m["arg"] or "", page_path), markdown)


def on_config(config, **kwargs):
    """Make the build independent of the working directory; forget cached plugins."""
    _state.clear()
    for src in sorted((ROOT / "examples").glob("*/src")):
        if str(src) not in sys.path:
            sys.path.append(str(src))
    snippets = config.mdx_configs.setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(ROOT)]
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    from mkdocs.exceptions import PluginError

    source = Path(config.docs_dir) / page.file.src_path
    try:
        return expand(markdown, source)
    except DocsError as exc:
        raise PluginError(f"{page.file.src_path}: {exc}") from None


def on_page_content(html, page, config, files, **kwargs):
    """reST left in docstrings: roles (``:class:`X```) render as plain code, and the ``::``
    that introduces a literal block as ``:``."""
    html = HTML_ROLE.sub("<code>", html)
    return LITERAL_MARK.sub(lambda m: "" if m.group(1) == "<p>" else ":</p>", html)
