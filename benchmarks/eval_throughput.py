"""Evaluation throughput: query batches in source order versus grouped by prompt length.

Usage::

    python benchmarks/eval_throughput.py [--data-dir DIR] [--max-tasks 15] [--query-cap 100]
                                         [--eval-batch-size 8] [--repeats 1] [--threads 2]

Builds the cls-45 test tasks' episodes (the k-shot files of the CrossFit
data, ``--data-dir``; by default ``shared/data/crossfit`` in the
repository's parent folder) with
SmolLM2-135M's tokenizer twice: in source order and grouped by length within
each task (metalora's default). It counts the token positions each way
computes (real tokens plus padding), scores every query with the frozen
model both ways (alternating, ``--repeats`` times, medians), checks that
every option probability agrees within 1e-5, and ends with ``speed-up: X``
(source-order time / grouped time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from metalora.episodes import Episode, EpisodeSampler
from metalora.interfaces import DataOptions
from metalora.models import load_model
from metalora.plugins import get_plugin_manager
from metalora.prompts import PromptEncoder
from metalora.scoring import option_probs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "crossfit"


def score(model, episodes: list[Episode]) -> list[torch.Tensor]:
    """Every query example's option probabilities, in query-set order, per task."""
    with torch.no_grad():
        return [episode.in_query_order(torch.cat([option_probs(model, b) for b in episode.query]))
                for episode in episodes]


def timed(model, episodes: list[Episode]) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    probs = score(model, episodes)
    return time.perf_counter() - start, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tasks", type=int, default=15)
    parser.add_argument("--query-cap", type=int, default=100)
    parser.add_argument("--eval-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    suite = get_plugin_manager().registry("suite").get("cls45").load(
        DataOptions(data_dir=args.data_dir, seed=0))
    tasks = suite.test[: args.max_tasks]
    loaded = load_model(args.model)
    encoder = PromptEncoder(loaded.tokenizer)
    ways = {}
    for name, grouped in (("source order", False), ("grouped by length", True)):
        sampler = EpisodeSampler(encoder, eval_batch_size=args.eval_batch_size,
                                 query_cap=args.query_cap, group_query_by_length=grouped)
        ways[name] = [sampler.episode(t) for t in tasks]
    queries = sum(e.query_size for e in ways["source order"])
    real = sum(int(b.attention_mask.sum()) for e in ways["source order"] for b in e.query)
    print(f"{len(tasks)} cls-45 test tasks, {queries} query prompts, {real:,} real tokens, "
          f"batches of {args.eval_batch_size}, {args.threads} thread(s)")
    for name, episodes in ways.items():
        positions = sum(b.input_ids.numel() for e in episodes for b in e.query)
        print(f"  {name:<18} {positions:>9,} token positions ({positions / real:.3f}x real)")

    times: dict[str, list[float]] = {name: [] for name in ways}
    results: dict[str, list[torch.Tensor]] = {}
    for _ in range(args.repeats):
        for name, episodes in ways.items():
            seconds, results[name] = timed(loaded.model, episodes)
            times[name].append(seconds)
    worst = max(float((a - b).abs().max()) for a, b in
                zip(results["source order"], results["grouped by length"], strict=True))
    print(f"largest probability difference: {worst:.2e} (must be <= 1e-5)")
    for name, values in times.items():
        print(f"  {name:<18} {statistics.median(values):8.1f} s (median of {len(values)})")
    speed_up = statistics.median(times["source order"]) / statistics.median(
        times["grouped by length"])
    print(f"speed-up: {speed_up:.2f}")
    if worst > 1e-5:
        raise SystemExit("probabilities differ by more than 1e-5")


if __name__ == "__main__":
    main()
