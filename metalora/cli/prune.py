"""``metalora prune [RUN_DIR]``: a magnitude-pruning sweep (paper Table 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from metalora import api
from metalora.cli.options import keyword, option_help, setting_parameters, with_parameters
from metalora.cli.render import console, err_console, print_prune_results
from metalora.config import (
    all_setting_infos,
    resolve_config,
)
from metalora.errors import MetaloraError, unknown_choice
from metalora.plugins import PluginManager
from metalora.pruning import DEFAULT_RATIOS, SCOPES, parse_ratios
from metalora.runs.setup import RUN_OVERRIDES
from metalora.settings import SettingInfo

PRUNE_HELP = (
    "Magnitude-pruning sweep (paper section 5.2, Table 2). For each learner and seed of a "
    "finished RUN_DIR, merge the global mean into the base weights of an in-memory copy, zero "
    "the fraction --ratio of output neurons (rows) with the smallest L2 norm in each layer in "
    "--scope, and evaluate on the run's test tasks with its own protocol (test-time adaptation "
    "included). Prints accuracy and ECE per ratio (mean ± SE over seeds) and writes "
    "RUN_DIR/prune/<stamp>-<pruner>-<scope>/results.csv/json; the run itself is never modified. "
    "Without RUN_DIR, untrained learners are built from run settings given as options (e.g. "
    "--learner pretrained --tasks demo) in a new run directory under --output-dir.")


def make_prune_command(plugins: PluginManager):
    """The ``prune`` command: its own options plus one option per run setting (as ``run``)."""
    infos = all_setting_infos(plugins)
    own = {"run_dir", "ratio", "scope", "pruner", "baseline", "config"}

    def prune(**kwargs: Any) -> None:
        run_dir: Path | None = kwargs.pop("run_dir")
        ratio: str = kwargs.pop("ratio")
        scope: str = kwargs.pop("scope")
        pruner: str = kwargs.pop("pruner")
        baseline: bool = kwargs.pop("baseline")
        config_path: Path | None = kwargs.pop("config")
        ratios = parse_ratios(ratio)
        if scope not in SCOPES:
            raise unknown_choice("pruning scope", scope, SCOPES)
        plugins.registry("pruner").get(pruner)
        if run_dir is not None:
            if config_path is not None:
                raise MetaloraError("--config builds fresh learners; it cannot be combined "
                                    "with RUN_DIR (the run's recorded settings are used)")
            given = {k: v for k, v in kwargs.items() if v is not None}
            overrides = resolve_config(infos, {}, given).values
            summary = api.prune(run_dir, ratios, pruner=pruner, scope=scope,
                                baseline=baseline, plugins=plugins, console=err_console,
                                **overrides)
        else:
            spec = api.run_spec(config_path, plugins=plugins, **kwargs)
            summary = api.prune(None, ratios, pruner=pruner, scope=scope, baseline=baseline,
                                spec=spec, plugins=plugins, console=err_console)
        print_prune_results(summary, console)

    def help_for(info: SettingInfo) -> str:
        text = option_help(info)
        if info.name in RUN_OVERRIDES:
            text += " With RUN_DIR: " + ("a subset of the run's to prune." if info.name
                                         != "device" else "the device to evaluate on.")
        return text

    params = [
        keyword("run_dir", Path | None, typer.Argument(
            None, metavar="RUN_DIR", show_default=False,
            help="A run directory written by `metalora run` (omit it to prune untrained "
                 "learners built from the settings).")),
        keyword("ratio", str, typer.Option(
            ",".join(f"{r:g}" for r in DEFAULT_RATIOS), "--ratio", "-r",
            rich_help_panel="Pruning",
            help="Fraction(s) of output neurons to prune per layer, each in [0, 1), "
                 "comma-separated for a sweep.")),
        keyword("scope", str, typer.Option(
            "adapted", "--scope", rich_help_panel="Pruning",
            help="Layers to prune: 'adapted' (the learner's adapted layers) or 'all' (every "
                 "linear layer of the transformer blocks; never lm_head or embeddings).")),
        keyword("pruner", str, typer.Option(
            "magnitude", "--pruner", rich_help_panel="Pruning",
            help="Registered pruner (see `metalora plugins`).")),
        keyword("baseline", bool, typer.Option(
            True, "--baseline/--no-baseline", rich_help_panel="Pruning",
            help="Also evaluate the unpruned model (the '0% Pruned' column; for a run it "
                 "reproduces the run's test results).")),
        keyword("config", Path | None, typer.Option(
            None, "--config", "-c", rich_help_panel="Without RUN_DIR",
            help="Without RUN_DIR: TOML or YAML file of run settings (the command line "
                 "overrides it).")),
    ]
    panel = "Without RUN_DIR (settings as in `metalora run`)"
    return with_parameters(prune, params + setting_parameters(
        infos, skip=own, help_for=help_for, panel=lambda _info: panel))
