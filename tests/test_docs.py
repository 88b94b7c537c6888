"""Meta-tests of the documentation, in the manner of datasette's.

* every hook specification has a test (``test_hook_<name>`` below, each
  registering an implementation through that hook and using it) and appears
  with its exact signature in the docs;
* every CLI command, and every option of it, appears in the generated CLI
  reference; every built-in implementation and its settings appear on its
  plugin page;
* ``mkdocs build --strict`` passes (skipped when the docs extra is missing).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

from metalora import hookimpl, hookspecs
from metalora.adapters import AdapterHandle, attach_adapters
from metalora.cli import build_app
from metalora.interfaces import (
    Calibrator,
    DataOptions,
    Learner,
    Metric,
    Prior,
    Pruner,
    StepLog,
    TaskSampler,
)
from metalora.records import Suite, Task, TaskRecord, TaskRole
from metalora.runs.engine import Engine
from metalora.scoring import option_probs
from metalora.settings import setting
from tests.conftest import make_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
runner = CliRunner()


def _load_docs_hooks():
    spec = importlib.util.spec_from_file_location("metalora_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_hooks = _load_docs_hooks()


def hookspec_functions() -> dict[str, object]:
    """Every hook specification of :mod:`metalora.hookspecs`, by name."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, marker)}


def hook_signature(fn) -> str:
    """``name(args) -> return`` as written in the docs (postponed annotations unquoted)."""
    return fn.__name__ + str(inspect.signature(fn)).replace("'", "")


def docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md")))


def invoke(app, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, color=False)


QUICK_RUN = ("--model", "tiny", "--epochs", "1", "--query-cap", "4", "--no-plots",
             "--no-tensorboard", "--no-per-task")


# -- meta-tests ---------------------------------------------------------------------------
def test_the_hookspecs_are_the_ones_the_registries_use():
    specs = hookspec_functions()
    assert set(hookspecs.HOOK_KINDS) | {"register_commands", "suite_from_path"} == set(specs)


def test_every_hookspec_has_a_test():
    tests: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tests |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    for name in hookspec_functions():
        assert any(t == f"test_hook_{name}" or t.startswith(f"test_hook_{name}_")
                   for t in tests), f"hook {name} has no test_hook_{name}"


def test_every_hookspec_appears_with_its_exact_signature_in_the_docs():
    page = (DOCS / "plugin-hooks.md").read_text(encoding="utf-8")
    for name, fn in hookspec_functions().items():
        assert f"\n## {name}\n" in page, f"no section for {name} in plugin-hooks.md"
        assert hook_signature(fn) in page, f"{hook_signature(fn)} is not in plugin-hooks.md"


def test_every_cli_command_and_option_appears_in_the_cli_reference():
    assert "<!-- metalora:cli -->" in (DOCS / "cli.md").read_text(encoding="utf-8")
    app = build_app(docs_hooks.builtin_plugin_manager())
    reference = docs_hooks.cli_reference(app)
    paths = []
    for path, command, ctx in docs_hooks.cli_commands(app):
        paths.append(path)
        assert f"## `{path}`" in reference
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                assert f"`{record[0]}`" in reference, f"{record[0]} of {path} is missing"
    assert {"metalora run", "metalora plugins", "metalora tasks"} <= set(paths)


def test_every_builtin_implementation_and_setting_is_on_its_plugin_page():
    manager = docs_hooks.builtin_plugin_manager()
    for kind, page in [("learner", "learners"), ("prior", "priors"), ("suite", "suites"),
                       ("metric", "metrics"), ("pruner", "pruners"), ("logger", "loggers")]:
        source = (DOCS / f"{page}.md").read_text(encoding="utf-8")
        assert f"<!-- metalora:registry {kind} -->" in source
        generated = docs_hooks.expand(source)
        for reg in manager.registry(kind):
            assert reg.provider == "metalora"
            assert f"## `{reg.name}`" in generated
            settings = getattr(reg.implementation, "Settings", None)
            for name in getattr(settings, "__dataclass_fields__", {}):
                assert f"`{name}`" in generated, f"setting {name} of {reg.name} is missing"


def test_an_unknown_directive_stops_the_build():
    with pytest.raises(docs_hooks.DocsError, match="unknown or malformed directive"):
        docs_hooks.expand("<!-- metalora:nonsense -->")
    with pytest.raises(docs_hooks.DocsError, match="unknown registry kind"):
        docs_hooks.expand("<!-- metalora:registry widget -->")


def _api_blocks(text: str) -> list[tuple[str, set[str] | None]]:
    """``(identifier, members)`` of every ``:::`` block (members None: all of them)."""
    out = []
    for chunk in re.split(r"^(?=::: )", text, flags=re.MULTILINE)[1:]:
        identifier = chunk.split()[1]
        listed = re.search(r"^ +members: (\[[^\]]*\]|false)", chunk, re.MULTILINE)
        if listed is None:
            out.append((identifier, None))
        elif listed[1] == "false":
            out.append((identifier, set()))
        else:
            out.append((identifier, {n.strip() for n in listed[1][1:-1].split(",")}))
    return out


def test_the_api_reference_covers_every_module_once():
    # the pages as the build expands them: every module has a block, and where a module
    # is on two pages (its public names, then the rest) no name is shown twice
    blocks: list[tuple[str, set[str] | None]] = []
    for page in sorted((DOCS / "api").glob("*.md")):
        blocks += _api_blocks(docs_hooks.expand(page.read_text(), page))
    by_module: dict[str, list[set[str] | None]] = {}
    for identifier, members in blocks:
        by_module.setdefault(identifier, []).append(members)
    for identifier, member_sets in by_module.items():
        if len(member_sets) > 1:
            assert None not in member_sets, f"{identifier} is documented whole twice"
            names = [n for s in member_sets for n in s]
            assert len(names) == len(set(names)), f"{identifier}: a name shown twice"
    for package in ("metalora", "metalora_plugins"):
        for module, _ in docs_hooks.package_modules(package):
            if module != package:
                assert module in by_module, f"{module} is on no API page"


def test_the_plugin_api_page_shows_exactly_the_public_names():
    import metalora

    page = DOCS / "api" / "public.md"
    text = docs_hooks.expand(page.read_text(), page)
    shown = {name.strip() for members in re.findall(r"members: \[([^\]]*)\]", text)
             for name in members.split(",")}
    assert shown == set(metalora.__all__) - {"__version__"}


def test_readme_links_to_the_docs_and_says_how_to_build_and_serve_them():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    assert "mkdocs serve" in section and "mkdocs build --strict" in section
    assert "docs/" in section


def test_the_installation_page_gives_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    test_command = [line for line in setup.splitlines() if "pytest" in line][0]
    assert test_command in (DOCS / "installation.md").read_text(encoding="utf-8")


def _mkdocs_missing() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:
            return module
    return None


@pytest.mark.skipif(_mkdocs_missing() is not None,
                    reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict_passes(built_docs):
    site = built_docs.site
    assert built_docs.returncode == 0, built_docs.stderr[-4000:]
    assert "WARNING" not in built_docs.stderr, built_docs.stderr[-4000:]
    pages = {p: p.read_text(encoding="utf-8") for p in site.rglob("*.html")}
    assert not [p for p, html in pages.items() if "<!-- metalora:" in html]
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    app = build_app(docs_hooks.builtin_plugin_manager())
    for path, _, _ in docs_hooks.cli_commands(app):
        assert path in cli
    tutorial = (site / "writing-a-plugin" / "index.html").read_text(encoding="utf-8")
    assert "MetaSGDLearner" in tutorial and "metasgd_alpha_lr" in tutorial
    assert "--8&lt;--" not in tutorial and "--8<--" not in tutorial


# -- one test per hook -----------------------------------------------------------------------
@dataclass(frozen=True)
class EchoSettings:
    echo_temperature: float = setting(1.0, "echo: divides the label logits before the softmax.")


class EchoLearner(Learner):
    """Never trains; predicts with the model's option probabilities at a temperature."""

    name = "test-echo"
    description = "A learner registered by a test."
    Settings = EchoSettings

    def __init__(self, context) -> None:
        super().__init__(context)
        self._adapters = attach_adapters(context.model, context.adapter, ["default"])

    @property
    def adapters(self) -> AdapterHandle:
        return self._adapters

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        return iter(())

    def adapt(self, support) -> None:
        pass

    def predict_proba(self, batch) -> Tensor:
        probs = option_probs(self.context.model, batch)
        logits = probs.clamp_min(1e-12).log() / self.settings.echo_temperature
        return torch.softmax(logits.masked_fill(~batch.option_mask, float("-inf")), dim=-1)


def _manager_with(plugin, name: str):
    from metalora.plugins import PluginManager

    manager = PluginManager()
    manager.register(plugin, name=name)
    return manager


def test_hook_register_learners(tmp_path):
    class Plugin:
        @hookimpl
        def register_learners(self, register):
            register(EchoLearner)

    manager = _manager_with(Plugin(), "echo-plugin")
    reg = {r.name: r for r in manager.registry("learner")}["test-echo"]
    assert reg.implementation is EchoLearner and reg.plugin == "echo-plugin"
    app = build_app(manager)
    assert "test-echo" in invoke(app, "plugins").output
    assert "--echo-temperature" in docs_hooks.cli_reference(app)
    assert "`echo_temperature`" in docs_hooks.registry_reference(manager, "learner")
    result = invoke(app, "run", "--learner", "test-echo", "--tasks", "demo", *QUICK_RUN,
                    "--max-eval-tasks", "1", "--echo-temperature", "2.0",
                    "--output-dir", str(tmp_path), "--run-name", "echo")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "echo" / "config.json").read_text())
    assert config["learner_settings"]["test-echo"] == {"echo_temperature": 2.0}


@dataclass(frozen=True)
class LaplaceSettings:
    laplace_scale: float = setting(1.0, "test-laplace prior: scale of the Laplace on the mean.")


class LaplacePrior(Prior):
    name = "test-laplace"
    description = "Laplace on the global mean (a test prior)."
    Settings = LaplaceSettings

    def negative_log_density(self, mu: Tensor, log_var: Tensor) -> Tensor:
        return mu.abs().sum() / self.settings.laplace_scale


def test_hook_register_priors():
    class Plugin:
        @hookimpl
        def register_priors(self, register):
            register(LaplacePrior)

    manager = _manager_with(Plugin(), "laplace-plugin")
    assert "test-laplace" in manager.registry("prior")
    engine = Engine(make_config(manager, learner=["pretrained"], model="tiny",
                                laplace_scale=2.0), manager)
    prior = engine.make_prior("test-laplace")
    assert isinstance(prior, LaplacePrior) and prior.settings.laplace_scale == 2.0
    mu = torch.tensor([[1.0, -3.0]], requires_grad=True)
    value = prior.negative_log_density(mu, torch.zeros(1, 2))
    value.backward()
    assert value.detach().item() == 2.0 and mu.grad.tolist() == [[0.5, -0.5]]
    assert "`laplace_scale`" in docs_hooks.registry_reference(manager, "prior")


class ParitySuite(TaskSampler):
    """Is the number even or odd? Two training tasks and one test task."""

    name = "test-parity"
    description = "Generated parity questions (a test suite)."

    def roles(self) -> dict[TaskRole, list[str]]:
        return {TaskRole.TRAIN: ["parity-a", "parity-b"], TaskRole.VALIDATION: [],
                TaskRole.TEST: ["parity-c"]}

    def load(self, options: DataOptions) -> Suite:
        def task(name: str, offset: int) -> Task:
            records = [TaskRecord(name, f"Is {n} even or odd?", "even" if n % 2 == 0 else "odd",
                                  ("even", "odd")) for n in range(offset, offset + 16)]
            return Task(name, records)

        return Suite(self.name, train=[task("parity-a", 0), task("parity-b", 100)],
                     test=[task("parity-c", 200)])


def test_hook_register_task_samplers(tmp_path):
    class Plugin:
        @hookimpl
        def register_task_samplers(self, register):
            register(ParitySuite())

    manager = _manager_with(Plugin(), "parity-plugin")
    app = build_app(manager)
    assert "test-parity" in invoke(app, "tasks").output
    listing = invoke(app, "tasks", "test-parity").output
    assert "parity-c" in listing and "test" in listing
    result = invoke(app, "run", "--learner", "pretrained", "--tasks", "test-parity", *QUICK_RUN,
                    "--output-dir", str(tmp_path), "--run-name", "parity")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "parity" / "metrics.json").read_text())
    assert "parity-c" in json.dumps(metrics)
    assert "## `test-parity`" in docs_hooks.registry_reference(manager, "suite")


class ConfidenceMetric(Metric):
    """Mean probability of the predicted option."""

    name = "test-confidence"
    description = "Mean top probability (a test metric)."

    def compute(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> float:
        return float(probs.max(dim=-1).values.mean())


def test_hook_register_metrics(tmp_path):
    class Plugin:
        @hookimpl
        def register_metrics(self, register):
            register(ConfidenceMetric)

    manager = _manager_with(Plugin(), "confidence-plugin")
    app = build_app(manager)
    result = invoke(app, "run", "--learner", "pretrained", "--tasks", "demo", *QUICK_RUN,
                    "--max-eval-tasks", "1", "--metrics", "accuracy,test-confidence",
                    "--output-dir", str(tmp_path), "--run-name", "conf")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "conf" / "pretrained" / "seed-0" / "metrics.json")
                         .read_text())
    assert "test-confidence" in json.dumps(metrics)
    assert "## `test-confidence`" in docs_hooks.registry_reference(manager, "metric")


class SharpenCalibrator(Calibrator):
    """Square every probability and renormalise (a test calibrator)."""

    name = "test-sharpen"
    description = "Square and renormalise (a test calibrator)."
    fitted = 0

    def fit(self, probs: Tensor, targets: Tensor, option_mask: Tensor) -> None:
        SharpenCalibrator.fitted += 1

    def apply(self, probs: Tensor, option_mask: Tensor) -> Tensor:
        squared = probs**2
        return squared / squared.sum(-1, keepdim=True)


def test_hook_register_calibrators(tmp_path):
    class Plugin:
        @hookimpl
        def register_calibrators(self, register):
            register(SharpenCalibrator)

    manager = _manager_with(Plugin(), "sharpen-plugin")
    app = build_app(manager)
    runs = {}
    for calibrate in ("none", "test-sharpen"):
        result = invoke(app, "run", "--learner", "pretrained", "--tasks", "demo", *QUICK_RUN,
                        "--max-eval-tasks", "1", "--calibrate", calibrate,
                        "--output-dir", str(tmp_path), "--run-name", calibrate)
        assert result.exit_code == 0, result.output
        runs[calibrate] = [json.loads(line)["probs"] for line in
                           (tmp_path / calibrate / "pretrained" / "seed-0" / "predictions.jsonl")
                           .read_text().splitlines()]
    assert SharpenCalibrator.fitted >= 1  # once per evaluated task
    for plain, sharp in zip(runs["none"], runs["test-sharpen"], strict=True):
        squared = [p * p for p in plain]
        assert sharp == pytest.approx([q / sum(squared) for q in squared], abs=1e-5)
    assert "## `test-sharpen`" in docs_hooks.registry_reference(manager, "calibrator")


class FirstRowsPruner(Pruner):
    """Zero the first rows of every layer (a test pruner)."""

    name = "test-rows"
    description = "Zero the first rows (a test pruner)."

    def select(self, weights, ratio: float) -> dict[str, Tensor]:
        return {name: torch.arange(int(ratio * w.shape[0]), dtype=torch.int64)
                for name, w in weights.items()}


def test_hook_register_pruners(tmp_path):
    class Plugin:
        @hookimpl
        def register_pruners(self, register):
            register(FirstRowsPruner)

    manager = _manager_with(Plugin(), "rows-plugin")
    app = build_app(manager)
    assert "test-rows" in invoke(app, "plugins").output
    result = invoke(app, "prune", "--pruner", "test-rows", "--learner", "pretrained",
                    "--tasks", "demo", "--model", "tiny", "--ratio", "0.5",
                    "--max-eval-tasks", "1", "--query-cap", "4", "--no-plots",
                    "--no-tensorboard", "--output-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "50% Pruned" in result.output
    assert "## `test-rows`" in docs_hooks.registry_reference(manager, "pruner")


def test_hook_register_commands():
    class Plugin:
        @hookimpl
        def register_commands(self, app):
            @app.command("hello")
            def hello(name: str = "world") -> None:
                """Say hello to NAME."""
                print(f"hello {name}")

    manager = _manager_with(Plugin(), "hello-plugin")
    app = build_app(manager)
    result = invoke(app, "hello", "--name", "docs")
    assert result.exit_code == 0 and "hello docs" in result.output
    reference = docs_hooks.cli_reference(app)
    assert "## `metalora hello`" in reference and "Say hello to NAME." in reference
    assert "--name" in reference


def test_every_picture_exists_and_its_page_names_the_script_that_draws_it():
    pictures = 0
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for alt, target in re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text):
            pictures += 1
            assert alt.strip(), f"{page.name}: {target} has no alt text"
            assert (DOCS / target).is_file(), f"{page.name}: {target} does not exist"
            assert "benchmarks/docs_figures.py" in text, f"{page.name} does not name its script"
            assert Path(target).stem in (ROOT / "benchmarks" / "docs_figures.py").read_text()
    assert pictures >= 6  # the diagram, the quickstart's three, the benchmarks page's two


def test_katex_is_shipped_from_an_integrity_checked_npm_tarball(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("katex_assets", DOCS / "katex_assets.py")
    katex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(katex)
    monkeypatch.setenv("METALORA_DOCS_CACHE", str(tmp_path))
    (tmp_path / f"katex-{katex.VERSION}.tgz").write_bytes(b"not katex")
    with pytest.raises(RuntimeError, match="SHA-512 differs from the npm registry's"):
        katex.install(tmp_path / "site")
    assert not (tmp_path / "site").exists()
    site = ROOT / "mkdocs.yml"
    config = site.read_text(encoding="utf-8")
    for asset in ("katex.min.js", "contrib/auto-render.min.js", "katex.min.css"):
        assert f"assets/katex/{asset}" in config and asset in katex.SHIPPED
