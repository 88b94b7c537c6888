"""Shared fixtures. Tests never touch the network: the hub is forced offline."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from metalora.config import ResolvedConfig, all_setting_infos, resolve_config  # noqa: E402
from metalora.models import LoadedModel, load_model  # noqa: E402
from metalora.plugins import PluginManager  # noqa: E402

# The tiny model is far faster on one thread, and a second one only competes
# with whatever else runs on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def plugins() -> PluginManager:
    """A plugin manager with every installed entry point loaded."""
    return PluginManager()


@pytest.fixture
def tiny() -> LoadedModel:
    """A fresh tiny model (identical weights every time)."""
    return load_model("tiny")


def make_config(plugins: PluginManager, **values) -> ResolvedConfig:
    """A resolved config from keyword settings, as the CLI would build it."""
    return resolve_config(all_setting_infos(plugins), {}, values)


@pytest.fixture
def build_learner(plugins: PluginManager) -> Iterator:
    """``build_learner(name, **settings)``: a learner on the tiny model and the demo suite,
    with its suite and engine; its adapters are removed afterwards."""
    from metalora.runs.engine import Engine

    made = []

    def _build(name: str, **values):
        engine = Engine(make_config(plugins, learner=[name], model="tiny", device="cpu",
                                    tasks="demo", **values), plugins)
        suite = engine.load_suite()
        learner = engine.build_learner(name, 0)
        made.append(learner)
        return learner, suite, engine

    yield _build
    for learner in made:
        learner.adapters.remove()


def train_adapt_predict(learner, suite, engine, train_tasks: int = 2):
    """One epoch on the first ``train_tasks`` training tasks, adaptation to the first test
    task; the adapters after adaptation and the first query batch's probabilities."""
    for _ in learner.train_epoch(suite.train[:train_tasks], epoch=1):
        pass
    episode = engine.episodes.episode(suite.test[0])
    learner.adapt(episode.support)
    with torch.no_grad():
        return learner.adapters.snapshot(), learner.predict_proba(episode.query[0])


class BuiltDocs:
    """The documentation site built once per test session (``mkdocs build --strict``)."""

    def __init__(self, site, returncode: int, stderr: str) -> None:
        self.site, self.returncode, self.stderr = site, returncode, stderr


@pytest.fixture(scope="session")
def built_docs(tmp_path_factory) -> BuiltDocs:
    """The site, built once for every test that reads it (``tests/test_docs*.py``)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(root / "mkdocs.yml"), "-d", str(site)], cwd=site.parent,
                          env=env, capture_output=True, text=True, timeout=600)
    return BuiltDocs(site, done.returncode, done.stderr)


FINISHED_TINY_RUN = dict(
    model="tiny", tasks="demo", device="cpu", learner=["pretrained", "lora", "abmll"],
    seeds=[0, 1], epochs=2, lr=1e-2, inner_lr=1e-2, outer_lr=1e-2, query_cap=8,
    max_train_tasks=3, max_eval_tasks=2, plots=False, tensorboard=False, run_name="r")
"""The run :func:`finished_tiny_run` trains."""


@pytest.fixture(scope="session")
def finished_tiny_run(plugins, tmp_path_factory):
    """One finished tiny run shared by the tests that only read a run directory: pretrained,
    lora and abmll, seeds 0 and 1, two epochs (its :class:`RunSummary`)."""
    from rich.console import Console

    import metalora.api as ml

    out = tmp_path_factory.mktemp("finished")
    spec = ml.run_spec(plugins=plugins, output_dir=str(out), **FINISHED_TINY_RUN)
    return ml.train(spec, plugins=plugins, console=Console(quiet=True))
