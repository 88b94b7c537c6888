"""``metalora adapt RUN_DIR``: a trained run applied to your own few-shot task."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from metalora import api
from metalora.cli.options import parse_set_values, run_dir_argument, set_option
from metalora.cli.render import console, err_console
from metalora.files import require_writable_directory
from metalora.plugins import PluginManager
from metalora.runs.adaptation import Adaptation

ADAPT_HELP = ("Adapt a finished run's tested adapters to your own task on a few labelled "
              "support records (--support), then predict each query record (--query; "
              "'output' optional): the chosen option, every option's probability and, for a "
              "learner that averages weight samples, their spread. Metrics over the labelled "
              "queries. JSON lines with --out. The run is only read.")


def make_adapt_command(plugins: PluginManager):
    """The ``adapt`` command."""

    def adapt(
        run_dir: Path = run_dir_argument(),
        support: Path = typer.Option(..., "--support", metavar="FILE", show_default=False,
                                     help="Labelled support records (MetaICL jsonl)."),
        query: Path = typer.Option(..., "--query", metavar="FILE", show_default=False,
                                   help="Query records (MetaICL jsonl; 'output' optional)."),
        learner: str | None = typer.Option(
            None, "--learner", help="One of the run's learners (default: its first trained "
                                    "one)."),
        seed: int | None = typer.Option(None, "--seed", help="One of the run's seeds "
                                        "(default: its first); also seeds the adaptation."),
        out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                        help="Write the predictions here as JSON lines."),
        device: str | None = typer.Option(None, "--device", help="Device to adapt on."),
        save_adapter: Path | None = typer.Option(
            None, "--save-adapter", metavar="DIR",
            help="Also write the task-adapted adapter to DIR (new or empty) in PEFT format, "
                 "loadable with PeftModel.from_pretrained on the run's base model (for "
                 "ABMLL its mean, with the variance pair beside it)."),
        set_values: list[str] | None = set_option(
            "Change an evaluation-time setting (repeatable), e.g. eval_samples=8."),
    ) -> None:
        if out is not None:
            require_writable_directory(out.resolve().parent, "--out directory")
        result = api.adapt(run_dir, support, query, learner=learner, seed=seed,
                           settings=parse_set_values(set_values), device=device,
                           save_adapter=save_adapter, plugins=plugins)
        console.print(predictions_table(result))
        if result.metrics:
            console.print(f"over the {result.labelled} labelled query records: " + ", ".join(
                f"{name} {value:.4g}" for name, value in result.metrics.items()))
        if out is not None:
            result.write_jsonl(out)
            err_console.print(f"predictions written to {out}")
        if save_adapter is not None:
            err_console.print(f"adapted adapter written to {save_adapter}: "
                              f"{', '.join(result.saved)}; load with "
                              f"PeftModel.from_pretrained(base_model, {str(save_adapter)!r})",
                              soft_wrap=True, highlight=False)

    return adapt


def predictions_table(result: Adaptation) -> Table:
    """One row per query record: the chosen option, its probability, and the options'."""
    what = (f"adapted on {result.support} support records" if result.adapted else
            f"not adapted: its adapters did not change on the {result.support} support records "
            "(a learner that does not adapt, or adapt_steps 0)")
    title = (f"{result.learner} seed {result.seed}, {what}"
             + (f", {result.samples} weight samples" if result.samples > 1 else ""))
    table = Table(title=title)
    for column in ("#", "input", "chosen", "p", "options (probability)"):
        table.add_column(column, overflow="fold")
    if any(p.label is not None for p in result.predictions):
        table.add_column("label", overflow="fold")
    for p in result.predictions:
        best = p.options.index(p.chosen)
        shown = "  ".join(
            f"{o} {v:.3f}" + (f"±{p.spread[i]:.3f}" if p.spread is not None else "")
            for i, (o, v) in enumerate(zip(p.options, p.probs, strict=True)))
        row = [str(p.index), p.input, p.chosen, f"{p.probs[best]:.3f}", shown]
        if p.label is not None:
            row.append(p.label + ("" if p.label == p.chosen else " ✗"))
        table.add_row(*row)
    return table
