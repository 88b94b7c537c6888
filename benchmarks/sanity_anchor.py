"""Zero-shot sanity anchor: pretrained SmolLM2 on eight CrossFit tasks, metalora's prompt.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/sanity_anchor.py \\
        [--data-dir DATA] [--model smollm2-135m] [--n 64]

For each of the eight tasks below, every ``<task>_16_*_dev.jsonl`` file of
``--data-dir`` is read in sorted file-name order (plain string sort, so
``anli_16_100`` comes before ``anli_16_13``), the files are concatenated and
the first ``--n`` records (default 64) are scored zero-shot with metalora's
own :class:`~metalora.prompts.PromptEncoder` (the multiple-choice prompt, no
chat template) and :func:`~metalora.scoring.option_probs` (next-token
probability of the label token, renormalised over the example's options).
Prints each task's accuracy and the macro average, next to the accuracy of
always answering the first option (``A``) on the same records, for scale.

Reference: SmolLM2-135M-Instruct scores about 0.39 macro accuracy here; a
number far from that means the prompt or the scoring differs from the reference implementation's.
Examples with more than four options are skipped and counted (none of these
tasks has any).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metalora.models import load_model
from metalora.prompts import PromptEncoder, format_prompt
from metalora.records import MAX_OPTIONS, TaskRecord
from metalora.scoring import option_probs

TASKS: tuple[str, ...] = (
    "superglue-cb",
    "poem_sentiment",
    "tweet_eval-hate",
    "climate_fever",
    "ag_news",
    "medical_questions_pairs",
    "ethos-race",
    "anli",
)
"""The anchor's tasks, in the order they are printed."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

REFERENCE_MACRO = 0.39
"""Expected macro accuracy of SmolLM2-135M-Instruct (approximate)."""

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "crossfit"


def dev_records(data_dir: Path, task: str, n: int) -> tuple[list[TaskRecord], int]:
    """The first ``n`` usable records of the task's 16-shot dev files, concatenated in name order.

    Returns the records and how many records with more than
    :data:`~metalora.records.MAX_OPTIONS` options were skipped on the way.
    """
    files = sorted((data_dir / task).glob(f"{task}_16_*_dev.jsonl"), key=lambda p: p.name)
    if not files:
        raise SystemExit(f"no {task}_16_*_dev.jsonl files in {data_dir / task}")
    records: list[TaskRecord] = []
    skipped = 0
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                obj = json.loads(line)
                if len(obj["options"]) > MAX_OPTIONS:
                    skipped += 1
                    continue
                records.append(TaskRecord(task=task, input=obj["input"], output=obj["output"],
                                          options=tuple(obj["options"])))
                if len(records) == n:
                    return records, skipped
    return records, skipped


@torch.no_grad()
def accuracy(model: torch.nn.Module, encoder: PromptEncoder, records: list[TaskRecord],
             batch_size: int) -> float:
    """Zero-shot accuracy of ``model`` on ``records`` (argmax of the option probabilities)."""
    correct = 0
    for start in range(0, len(records), batch_size):
        batch = encoder.encode(records[start:start + batch_size])
        probs = option_probs(model, batch)
        correct += int((probs.argmax(dim=-1) == batch.targets).sum())
    return correct / len(records)


def main() -> None:
    """Score the eight tasks and print per-task and macro accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="MetaICL-format CrossFit data (default: ../shared/data/crossfit)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="model weights' dtype, as `metalora run --dtype` (default float32)")
    parser.add_argument("--n", type=int, default=64, help="records per task (default 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512,
                        help="prompt length limit in tokens, as `metalora run` (default 512)")
    parser.add_argument("--show-prompt", action="store_true",
                        help="print the first prompt and its tokens, then continue")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    start = time.perf_counter()
    loaded = load_model(args.model, dtype=DTYPES[args.dtype])
    encoder = PromptEncoder(loaded.tokenizer, max_length=args.max_length)
    print(f"model {args.model} ({args.dtype}); label tokens {encoder.label_ids} "
          f"(prefix {encoder.prefix_ids}); data {data_dir}; "
          f"first {args.n} records of <task>_16_*_dev.jsonl per task")
    scores: dict[str, float] = {}
    first: dict[str, float] = {}
    for task in TASKS:
        records, skipped = dev_records(data_dir, task, args.n)
        if args.show_prompt and not scores:
            print("-" * 60 + "\n" + format_prompt(records[0]) + "\n" + "-" * 60)
            print("tokens:", loaded.tokenizer.convert_ids_to_tokens(encoder.prompt_ids(records[0])))
        scores[task] = accuracy(loaded.model, encoder, records, args.batch_size)
        first[task] = sum(r.answer_index == 0 for r in records) / len(records)
        extra = f", skipped {skipped} with >{MAX_OPTIONS} options" if skipped else ""
        print(f"{task:26s} n={len(records):3d}  accuracy {scores[task]:.3f}  "
              f"(always A: {first[task]:.3f}){extra}", flush=True)
    macro = sum(scores.values()) / len(scores)
    print(f"{'macro average':26s}        accuracy {macro:.3f}  "
          f"(always A: {sum(first.values()) / len(first):.3f}; reference ~{REFERENCE_MACRO})")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
