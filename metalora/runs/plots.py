"""Figures of a run: training and validation curves (paper Figure 2), reliability diagrams.

matplotlib is optional (``pip install 'metalora[plots]'``): without it
:func:`write_plots` raises :class:`PlotsUnavailable` and the engine prints a
one-line note. Figures are drawn on matplotlib's Agg canvas directly (no
``pyplot``, no global backend change), so plotting is headless and safe
inside other applications.

Every figure is written twice, as PNG (200 dpi) and as PDF (vector, for a
paper), under ``RUN_DIR/plots/``:

* ``training`` — the training NLL of every learner over its optimisation
  steps (the ``nll`` of each ``log.jsonl`` step, its loss where it logs no
  NLL: ABMLL's loss adds the KL and prior terms, whose scale would hide the
  data term), smoothed by a trailing moving average over a twentieth of the
  steps, mean over seeds with a band of one standard error over seeds.
* ``validation`` — validation accuracy and ECE over epochs, one line per
  learner: at each validated epoch, the mean over seeds of the moving average
  of the (up to) three most recent validations (the paper's sliding window
  over the three most recent epochs; with ``eval_every > 1`` the window
  spans three validations), with a band of one standard error over seeds. A
  learner that does not train (``pretrained``) is validated once and drawn as
  a dashed horizontal line.
* ``reliability`` — every learner's top-label reliability curve on the test
  predictions, pooled over test tasks and seeds (per confidence bin, 15
  equal-width bins as the ECE metric: accuracy against mean confidence), with
  the pooled ECE in the legend, over the number of predictions in each bin.
* ``reliability-<learner>`` — one learner's diagram as bars.

``metalora prune`` adds ``pruning`` to each sweep's directory: test accuracy
and ECE against the pruning ratio, mean over seeds with ± 1 SE bars (paper
Table 2 as a figure).
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from metalora.files import atomic_write_bytes
from metalora.selective import risk_coverage

if TYPE_CHECKING:
    from rich.console import Console

    from metalora.runs.results import RunSummary

ECE_BINS = 15
WINDOW = 3
VALIDATION_FIGURE = "validation.png"
TRAINING_FIGURE = "training.png"
RELIABILITY_FIGURE = "reliability.png"
PRUNING_FIGURE = "pruning.png"
DPI = 200
"""Resolution of the PNG figures (the PDFs are vector graphics)."""


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


# -- data ---------------------------------------------------------------------------------
def moving_average(values: Sequence[float], window: int = WINDOW) -> list[float]:
    """Trailing moving average: each point is the mean of it and up to ``window - 1`` before."""
    out = []
    for i in range(len(values)):
        recent = values[max(0, i - window + 1): i + 1]
        out.append(sum(recent) / len(recent))
    return out


def validation_curve(histories: Sequence[Sequence[Mapping[str, Any]]], metric: str,
                     window: int = WINDOW) -> tuple[list[int], list[float]]:
    """Epochs and the mean over seeds of each seed's moving-averaged ``metric``.

    Only epochs validated in every seed are kept (they are the same epochs
    unless a run was cut short).
    """
    epochs, mean, _ = validation_band(histories, metric, window)
    return epochs, mean


def validation_band(histories: Sequence[Sequence[Mapping[str, Any]]], metric: str,
                    window: int = WINDOW) -> tuple[list[int], list[float], list[float]]:
    """:func:`validation_curve` with the standard error over seeds at each epoch."""
    series = [[(int(r["epoch"]), float(r[metric])) for r in history if metric in r]
              for history in histories]
    return band(series, window)


def band(series: Sequence[Sequence[tuple[int, float]]], window: int
         ) -> tuple[list[int], list[float], list[float]]:
    """x values present in every seed's ``(x, y)`` series, and at each the mean over seeds
    of the moving-averaged y with its standard error over seeds (0 with one seed)."""
    per_seed = []
    for points in series:
        smoothed = moving_average([y for _, y in points], window)
        per_seed.append({x: v for (x, _), v in zip(points, smoothed, strict=True)})
    if not per_seed:
        return [], [], []
    xs = sorted(set.intersection(*(set(s) for s in per_seed)))
    means, errors = [], []
    for x in xs:
        values = torch.tensor([s[x] for s in per_seed], dtype=torch.float64)
        means.append(float(values.mean()))
        errors.append(float(values.std() / len(values) ** 0.5) if len(values) > 1 else 0.0)
    return xs, means, errors


def training_series(log_path: Path) -> dict[str, list[list[tuple[int, float]]]]:
    """Per learner, per seed: ``(global step, NLL)`` of every logged optimisation step (the
    loss where a step logs no ``nll``), read from ``log.jsonl``."""
    per_pair: dict[tuple[str, int], list[tuple[int, float]]] = {}
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("kind") == "step":
                points = per_pair.setdefault((record["learner"], record["seed"]), [])
                step = int(record.get("global_step", len(points) + 1))  # older logs: position
                points.append((step, float(record.get("nll", record["loss"]))))
    out: dict[str, list[list[tuple[int, float]]]] = {}
    for (learner, _), points in per_pair.items():
        out.setdefault(learner, []).append(points)
    return out


def reliability_bins(probs: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-label reliability statistics per equal-width confidence bin.

    Binning follows torchmetrics' ``MulticlassCalibrationError`` (bins closed
    on the right edge), so ``ece`` equals that metric on the same predictions.
    """
    probs = probs.float()
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins).scatter_add_(0, index, correct)
    nonzero = count.clamp_min(1)
    accuracy, mean_conf = acc_sum / nonzero, conf_sum / nonzero
    total = max(int(count.sum()), 1)
    ece = float(((accuracy - mean_conf).abs() * count).sum() / total)
    return {"edges": edges.tolist(), "count": count.long().tolist(),
            "accuracy": accuracy.tolist(), "confidence": mean_conf.tolist(), "ece": ece,
            "n": int(count.sum())}


# -- figures ------------------------------------------------------------------------------
def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1,
            **grid: Any) -> tuple[Any, Any]:
    """A headless figure and its axes: one row of ``ncols``, or one column of ``nrows``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotsUnavailable("matplotlib is not installed") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **grid)
    return fig, axes[0] if nrows == 1 else axes[:, 0]


def _save(fig: Any, path: Path) -> Path:
    """Write ``path`` (PNG, :data:`DPI`) and the same figure as PDF beside it."""
    for target, form in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=form, dpi=DPI)
        atomic_write_bytes(target, buffer.getvalue())
    return path


LEGEND_LINE_INCHES = 0.2
"""The height one entry of a legend below the axes takes (``fontsize="small"`` at 10 pt)."""


def _series_style(index: int) -> dict[str, str]:
    """Colour and line style of the ``index``-th series: the ten default colours, then the
    same colours dashed, dotted and dash-dotted, so that up to 40 series stay apart."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}


def _legend_below(fig: Any) -> None:
    """One legend under the axes, one entry a line, with room made for it by the layout:
    inside the axes, long source names made matplotlib's layout give up and squeeze the
    axes to a sliver."""
    fig.legend(loc="outside lower center", fontsize="small", frameon=False)


def _band(ax: Any, xs: Sequence[int], means: Sequence[float], errors: Sequence[float],
          style: Mapping[str, str], label: str, marker: str | None = None) -> None:
    """A mean line in ``style`` (:func:`_series_style`) with its ± error band."""
    ax.plot(xs, means, **style, marker=marker, markersize=3, label=label)
    if any(errors):
        ax.fill_between(xs, [m - e for m, e in zip(means, errors, strict=True)],
                        [m + e for m, e in zip(means, errors, strict=True)],
                        color=style["color"], alpha=0.2, linewidth=0)


def plot_training(series: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path,
                  title: str = "") -> Path | None:
    """Training curves of every learner (see the module docstring); ``None`` if no steps."""
    if not any(any(seeds) for seeds in series.values()):
        return None
    fig, axes = _figure(6.0, 3.8)
    ax = axes[0]
    for index, (name, seeds) in enumerate(series.items()):
        steps = max((len(points) for points in seeds), default=0)
        if not steps:
            continue
        xs, means, errors = band(seeds, max(1, steps // 20))
        _band(ax, xs, means, errors, _series_style(index), name)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("training NLL (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle(title or "Training NLL (mean over seeds, band: ± 1 SE)", fontsize="medium")
    return _save(fig, path)


def plot_validation(histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], path: Path,
                    metrics: Sequence[tuple[str, str]] = (("accuracy", "Accuracy"),
                                                          ("ece", "ECE")),
                    title: str = "") -> Path | None:
    """Validation curves of every learner (see the module docstring); ``None`` if no data."""
    if not any(any(h for h in seeds) for seeds in histories.values()):
        return None
    fig, axes = _figure(5.0 * len(metrics), 3.8, ncols=len(metrics))
    from matplotlib.ticker import MaxNLocator
    curves = {name: {m: validation_band(seeds, m) for m, _ in metrics}
              for name, seeds in histories.items()}
    last = max((max(c[m][0], default=0) for c in curves.values() for m, _ in metrics),
               default=0)
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for index, (name, curve) in enumerate(curves.items()):
            epochs, values, errors = curve[metric]
            if not epochs:
                continue
            style = _series_style(index)
            if len(epochs) == 1 and epochs[0] == 0:
                ax.axhline(values[0], color=style["color"], linestyle="--", label=name)
            else:
                _band(ax, epochs, values, errors, style, name,
                      marker="o" if len(epochs) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {label}")
        ax.set_xlim(0, max(last, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title or f"Validation over epochs (moving average of the last {WINDOW}; "
                          "band: ± 1 SE over seeds)", fontsize="medium")
    return _save(fig, path)


def plot_reliability(probs: Tensor, targets: Tensor, path: Path, title: str) -> Path:
    """A reliability diagram of pooled test predictions."""
    stats = reliability_bins(probs, targets)
    fig, axes = _figure(4.2, 4.2)
    ax = axes[0]
    edges = stats["edges"]
    width = edges[1] - edges[0]
    lefts = edges[:-1]
    filled = [c > 0 for c in stats["count"]]
    ax.bar([x for x, f in zip(lefts, filled, strict=True) if f],
           [a for a, f in zip(stats["accuracy"], filled, strict=True) if f],
           width=width, align="edge", edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar([x for x, f in zip(lefts, filled, strict=True) if f],
           [c - a for c, a, f in zip(stats["confidence"], stats["accuracy"], filled,
                                      strict=True) if f],
           bottom=[a for a, f in zip(stats["accuracy"], filled, strict=True) if f],
           width=width, align="edge", color="red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top option)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{title}\nECE (pooled) = {stats['ece']:.3f}, n = {stats['n']}",
                 fontsize="medium")
    return _save(fig, path)


def plot_reliability_combined(pooled: Mapping[str, tuple[Tensor, Tensor]], path: Path,
                              title: str) -> Path | None:
    """Every learner's reliability curve over the per-bin counts (see the module)."""
    if not pooled:
        return None
    fig, (top, bottom) = _figure(5.0, 5.2 + LEGEND_LINE_INCHES * len(pooled), nrows=2,
                                 sharex=True, height_ratios=(3, 1))
    width = 1 / ECE_BINS
    for index, (name, (probs, targets)) in enumerate(pooled.items()):
        stats = reliability_bins(probs, targets)
        style = _series_style(index)
        kept = [i for i, c in enumerate(stats["count"]) if c > 0]
        top.plot([stats["confidence"][i] for i in kept], [stats["accuracy"][i] for i in kept],
                 **style, marker="o", markersize=3,
                 label=f"{name} (ECE {stats['ece']:.3f}, n = {stats['n']})")
        shift = (index - (len(pooled) - 1) / 2) * width / max(len(pooled), 1)
        bottom.bar([stats["edges"][i] + width / 2 + shift for i in range(ECE_BINS)],
                   stats["count"], width=width / max(len(pooled), 1), color=style["color"])
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    _legend_below(fig)
    top.grid(alpha=0.3)
    bottom.set_xlabel("confidence (top option), 15 bins")
    bottom.set_ylabel("predictions")
    fig.suptitle(title, fontsize="medium")
    return _save(fig, path)


def plot_risk_coverage(pooled: Mapping[str, tuple[Tensor, Tensor]], path: Path,
                       title: str) -> Path | None:
    """Every source's risk-coverage curve, with its area (AURC) in the legend."""
    if not pooled:
        return None
    fig, axes = _figure(5.0, 3.4 + LEGEND_LINE_INCHES * len(pooled))
    ax = axes[0]
    for index, (name, (probs, targets)) in enumerate(pooled.items()):
        coverage, risk = risk_coverage(probs, targets)
        ax.plot(coverage.tolist(), risk.tolist(), **_series_style(index),
                label=f"{name} (AURC {float(risk.mean()):.3f})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("coverage (most confident fraction answered)")
    ax.set_ylabel("error rate on the answered")
    ax.grid(alpha=0.3)
    _legend_below(fig)
    fig.suptitle(title, fontsize="medium")
    return _save(fig, path)


def plot_pruning(curves: Mapping[str, Mapping[float, Mapping[str, tuple[float, float]]]],
                 path: Path, title: str,
                 metrics: Sequence[tuple[str, str]] = (("accuracy", "Accuracy"),
                                                       ("ece", "ECE"))) -> Path:
    """Test metrics against the pruning ratio, one line per learner with ± 1 SE bars over
    seeds; ``curves``: learner -> ratio -> metric -> (mean, SE)."""
    fig, axes = _figure(5.0 * len(metrics), 3.6, ncols=len(metrics))
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for index, (learner, by_ratio) in enumerate(curves.items()):
            ratios = sorted(by_ratio)
            ax.errorbar([100 * r for r in ratios], [by_ratio[r][metric][0] for r in ratios],
                        yerr=[by_ratio[r][metric][1] for r in ratios],
                        **_series_style(index), marker="o", markersize=3, capsize=3, label=learner)
        ax.set_xlabel("output neurons pruned per layer (%)")
        ax.set_ylabel(f"test {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return _save(fig, path)


def write_plots(histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
                predictions: Mapping[str, Sequence[tuple[Tensor, Tensor]]], out_dir: Path,
                suite: str = "",
                training: Mapping[str, Sequence[Sequence[tuple[int, float]]]] | None = None,
                ) -> list[Path]:
    """Write the figures of the module into ``out_dir``; return the PNG paths (each has its
    PDF beside it).

    ``histories``: learner -> one validation history per seed.
    ``predictions``: learner -> ``(probs, targets)`` per seed and test task.
    ``training``: learner -> ``(global step, NLL)`` per seed (:func:`training_series`).
    Raises :class:`PlotsUnavailable` without matplotlib.
    """
    if not matplotlib_available():
        raise PlotsUnavailable("matplotlib is not installed")
    on = f" on '{suite}'" if suite else ""
    figures = [
        plot_training(training or {}, out_dir / TRAINING_FIGURE,
                      title=f"Training NLL{on} (mean over seeds, band: ± 1 SE)"),
        plot_validation(histories, out_dir / VALIDATION_FIGURE,
                        title=f"Validation{on} (moving average of the last {WINDOW}, mean over "
                              "seeds, band: ± 1 SE)"),
    ]
    pooled = {}
    for learner, parts in predictions.items():
        if not parts:
            continue
        width = max(p.shape[-1] for p, _ in parts)
        probs = torch.cat([torch.nn.functional.pad(p.float(), (0, width - p.shape[-1]))
                           for p, _ in parts])
        pooled[learner] = (probs, torch.cat([t for _, t in parts]))
        figures.append(plot_reliability(*pooled[learner], out_dir / f"reliability-{learner}.png",
                                        title=f"{learner}{on} (test)"))
    figures.append(plot_reliability_combined(pooled, out_dir / RELIABILITY_FIGURE,
                                             title=f"Reliability{on} (test, pooled over tasks "
                                                   "and seeds)"))
    return [f for f in figures if f is not None]


def plot_run(summary: RunSummary, console: Console) -> list[Path]:
    """The figures of a run, into ``RUN_DIR/plots``; a note on ``console`` instead when
    matplotlib is missing or a figure fails (a figure never costs a run its results)."""
    from metalora.runs.rundir import LOG_FILE, PLOTS_DIR

    histories = {n: [r.history for r in seeds] for n, seeds in summary.results.items()}
    predictions = {n: [(t.probs, t.targets) for r in seeds for t in r.test.tasks]
                   for n, seeds in summary.results.items()}
    try:
        return write_plots(histories, predictions, summary.run_dir / PLOTS_DIR,
                           suite=summary.suite,
                           training=training_series(summary.run_dir / LOG_FILE))
    except PlotsUnavailable:
        console.print("[dim]matplotlib is not installed: plots skipped "
                      "(pip install 'metalora\\[plots]')[/dim]")
    except Exception as exc:  # a figure must never cost a finished run its results
        console.print(f"[yellow]Warning:[/yellow] plots skipped: {type(exc).__name__}: {exc}")
    return []
