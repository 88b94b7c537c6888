"""Shared fixtures. Tests never touch the network: the hub is forced offline."""

from __future__ import annotations

import os

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
