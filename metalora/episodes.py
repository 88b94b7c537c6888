"""Batches and support/query splits, drawn the same way for every suite and learner.

* Training tasks: batches of ``batch_size`` records drawn from all of a
  task's rows with the learner's seeded RNG.
* Evaluated tasks: a seeded split (per task name, the same for every run seed and
  learner, so every learner and seed is scored on the same queries; independent of
  the order tasks are visited in) into a support set of ``support_batches x
  batch_size`` records (10 by default) and a query set, the rest, optionally
  capped.
* Query batches group prompts of similar length (sorted by token count
  within the task), so little of a batch is padding; :attr:`Episode.query_order`
  maps the scored examples back to the query set's order, in which every
  result is reported. Support batches keep their seeded order: which examples
  share an adaptation step is part of the protocol.
* In-context demonstrations (``in_context = k``): the first ``k`` support records,
  in their seeded order, are placed before every query's prompt (with their
  answers), so the model sees the support set in its prompt as well as, or
  instead of, adapting on it. :attr:`Episode.demonstrations` records how many
  each query really got after truncation to ``max_length``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metalora.errors import MetaloraError
from metalora.prompts import Batch, PromptEncoder
from metalora.records import Task, TaskRecord


@dataclass
class Episode:
    """One evaluated task: support batches to adapt on, query batches to score."""

    task: str
    support: list[Batch]
    query: list[Batch]
    query_order: list[int] | None = None
    """For the examples of ``query`` in batch order, their positions in the query set
    (``None``: batch order is the query set's order)."""
    demonstrations: list[int] | None = None
    """In-context demonstrations in each query's prompt, in query-set order (``None``: no
    demonstrations were asked for)."""

    @property
    def query_size(self) -> int:
        return sum(len(b) for b in self.query)

    def query_records(self) -> list[TaskRecord]:
        """The query records in the query set's order (what every result is reported in)."""
        scored = [r for batch in self.query for r in batch.records]
        if self.query_order is None:
            return scored
        ordered: list[TaskRecord] = list(scored)
        for position, record in zip(self.query_order, scored, strict=True):
            ordered[position] = record
        return ordered

    def in_query_order(self, rows: Tensor) -> Tensor:
        """Rows given in batch order (one per query example), put in the query set's order."""
        if self.query_order is None:
            return rows
        ordered = torch.empty_like(rows)
        ordered[torch.tensor(self.query_order, dtype=torch.long)] = rows
        return ordered


class EpisodeSampler:
    """Draws training batches and evaluation episodes."""

    def __init__(self, encoder: PromptEncoder, batch_size: int = 2, support_batches: int = 5,
                 query_cap: int | None = None, eval_batch_size: int = 8, seed: int = 0,
                 device: str = "cpu", group_query_by_length: bool = True,
                 in_context: int = 0) -> None:
        if batch_size < 1:
            raise MetaloraError(f"batch_size must be at least 1, got {batch_size}")
        self.encoder = encoder
        self.batch_size = batch_size
        self.support_batches = support_batches
        self.query_cap = query_cap
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.device = device
        self.group_query_by_length = group_query_by_length
        self.in_context = in_context

    def encode(self, records: Sequence[TaskRecord],
               sequences: Sequence[list[int]] | None = None) -> Batch:
        """Encode records (or their already computed prompt ids) onto the run's device."""
        return self.encoder.encode(records, sequences).to(self.device)

    def train_batch(self, task: Task, rng: random.Random) -> Batch:
        """A batch drawn without replacement from all of ``task``'s rows."""
        if not task.records:
            raise MetaloraError(f"task '{task.name}' has no records")
        k = min(self.batch_size, len(task.records))
        return self.encode(rng.sample(task.records, k))

    def shuffled_batches(self, records: Sequence[TaskRecord], rng: random.Random) -> list[Batch]:
        """All ``records`` once, shuffled with ``rng``, in batches of ``batch_size``."""
        order = list(records)
        rng.shuffle(order)
        return [self.encode(order[i: i + self.batch_size])
                for i in range(0, len(order), self.batch_size)]

    def query_ids(self, queries: Sequence[TaskRecord], support: Sequence[TaskRecord]
                  ) -> tuple[list[list[int]], list[int] | None]:
        """The queries' prompt ids, after the first ``in_context`` support records as
        demonstrations, and how many demonstrations each holds (``None`` when none were
        asked for: the plain prompts)."""
        if self.in_context == 0:
            return [self.encoder.prompt_ids(r) for r in queries], None
        demos = list(support)[: self.in_context]
        pairs = [self.encoder.prompt_ids_after(r, demos) for r in queries]
        return [ids for ids, _ in pairs], [given for _, given in pairs]

    def episode(self, task: Task) -> Episode:
        """The seeded support/query split of an evaluated task."""
        n_support = self.support_batches * self.batch_size
        if len(task.records) <= n_support:
            raise MetaloraError(
                f"task '{task.name}' has {len(task.records)} records; evaluation needs more than "
                f"the {n_support} support examples"
            )
        shuffled = list(task.records)
        random.Random(f"{self.seed}:{task.name}").shuffle(shuffled)
        support_records = shuffled[:n_support]
        query_records = shuffled[n_support:]
        if self.query_cap is not None:
            query_records = query_records[: self.query_cap]
        support = [self.encode(support_records[i: i + self.batch_size])
                   for i in range(0, n_support, self.batch_size)]
        ids, demonstrations = self.query_ids(query_records, support_records)
        order: list[int] | None = None
        if self.group_query_by_length:
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            query_records = [query_records[i] for i in order]
            ids = [ids[i] for i in order]
        size = self.eval_batch_size
        query = [self.encode(query_records[i: i + size], ids[i: i + size])
                 for i in range(0, len(query_records), size)]
        return Episode(task=task.name, support=support, query=query, query_order=order,
                       demonstrations=demonstrations)
