"""Prompt formatting and tokenisation into :class:`Batch` tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from metalora.errors import MetaloraError
from metalora.records import MAX_OPTIONS, TaskRecord

LABELS = "ABCD"
"""Option labels, in order."""

INSTRUCTION = "Return the label of the correct answer for the question below."

DEMONSTRATION_SEPARATOR = "\n\n"
"""Between in-context demonstrations, and between the last one and the query's prompt."""


def format_prompt(record: TaskRecord) -> str:
    """The multiple-choice prompt, ending with ``Answer:`` (the label is the next token)."""
    if len(record.options) > MAX_OPTIONS:
        raise MetaloraError(
            f"record of task '{record.task}' has {len(record.options)} options; "
            f"at most {MAX_OPTIONS} are supported"
        )
    choices = "\n".join(f"{LABELS[i]}) {option}" for i, option in enumerate(record.options))
    return f"{INSTRUCTION}\n\nQuestion: {record.input}\nChoices:\n{choices}\nAnswer:"


@dataclass
class Batch:
    """Tokenised prompts of a few records, right-padded.

    ``option_ids[b, o]`` is the token id of label ``LABELS[o]``; ``option_mask``
    marks the options an example really has; ``targets`` is the correct option.
    """

    input_ids: Tensor
    attention_mask: Tensor
    last_index: Tensor
    option_ids: Tensor
    option_mask: Tensor
    targets: Tensor
    records: tuple[TaskRecord, ...]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def answer_ids(self) -> Tensor:
        """Token id of each example's correct label."""
        return self.option_ids.gather(1, self.targets[:, None]).squeeze(1)

    def example(self, index: int) -> Batch:
        """Example ``index`` alone, as a batch of one, cut after its last prompt token
        (the batch is right-padded, so the causal model's outputs there are unchanged)."""
        end = int(self.last_index[index]) + 1
        row = slice(index, index + 1)
        return replace(
            self,
            input_ids=self.input_ids[row, :end],
            attention_mask=self.attention_mask[row, :end],
            last_index=self.last_index[row],
            option_ids=self.option_ids[row],
            option_mask=self.option_mask[row],
            targets=self.targets[row],
            records=self.records[row],
        )

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with its tensors on ``device``."""
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            last_index=self.last_index.to(device),
            option_ids=self.option_ids.to(device),
            option_mask=self.option_mask.to(device),
            targets=self.targets.to(device),
        )


class PromptEncoder:
    """Turns records into :class:`Batch` es for one tokenizer.

    The label token of option ``L`` is the token that follows ``Answer:`` when
    the text continues with ``" L"``. If the tokenizer splits ``" A"`` into
    several tokens with a common prefix (e.g. a byte-level tokenizer without
    merges gives ``[" ", "A"]``), the prefix is appended to every prompt and
    the last token is the label token; labels that stay multi-token after
    that are an error.
    """

    def __init__(self, tokenizer, max_length: int = 512) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = _pad_id(tokenizer)
        encoded = [tokenizer(f" {label}", add_special_tokens=False)["input_ids"]
                   for label in LABELS]
        prefix = _common_prefix(encoded)
        rest = [ids[len(prefix):] for ids in encoded]
        if any(len(r) != 1 for r in rest) or len({r[0] for r in rest}) != len(LABELS):
            raise MetaloraError(
                f"this tokenizer does not give one distinct token per label {list(LABELS)}: "
                f"{encoded}"
            )
        self.prefix_ids: list[int] = prefix
        self.label_ids: list[int] = [r[0] for r in rest]

    def prompt_ids(self, record: TaskRecord) -> list[int]:
        """Token ids of the prompt (and label prefix), truncating the question if needed."""
        ids = self._encode(format_prompt(record), special=True)
        if len(ids) + len(self.prefix_ids) > self.max_length:
            ids = self._truncated(record)
        return ids + self.prefix_ids

    def prompt_ids_after(self, record: TaskRecord,
                         demonstrations: Sequence[TaskRecord]) -> tuple[list[int], int]:
        """Token ids of ``record``'s prompt after in-context demonstrations, and how many
        demonstrations it holds.

        Each demonstration is its own prompt followed by its answer's label
        (``... Answer: B``), in the format of every prompt; they are joined by
        :data:`DEMONSTRATION_SEPARATOR` before the query's prompt. When the whole does
        not fit ``max_length``, demonstrations are dropped from the front, one at a
        time; when none fits, the query's prompt stands alone (truncated as usual).
        """
        texts = [f"{format_prompt(d)} {LABELS[d.answer_index]}" for d in demonstrations]
        query = format_prompt(record)
        for start in range(len(texts)):
            ids = self._encode(DEMONSTRATION_SEPARATOR.join([*texts[start:], query]),
                               special=True)
            if len(ids) + len(self.prefix_ids) <= self.max_length:
                return ids + self.prefix_ids, len(texts) - start
        return self.prompt_ids(record), 0

    def _encode(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _truncated(self, record: TaskRecord) -> list[int]:
        """Cut the end of the question so that the whole prompt fits ``max_length``."""
        marker = "\x00"
        head, tail = format_prompt(replace(record, input=marker)).split(marker)
        head_ids = self._encode(head, special=True)
        tail_ids = self._encode(tail, special=False)
        budget = self.max_length - len(head_ids) - len(tail_ids) - len(self.prefix_ids)
        if budget < 1:
            raise MetaloraError(
                f"max_length {self.max_length} is too short for the prompt of task "
                f"'{record.task}' ({len(head_ids) + len(tail_ids)} tokens without the question)"
            )
        body_ids = self._encode(record.input, special=False)[:budget]
        return head_ids + body_ids + tail_ids

    def encode(self, records: Sequence[TaskRecord],
               sequences: Sequence[list[int]] | None = None) -> Batch:
        """Tokenise, right-pad and collect label ids and targets.

        ``sequences``, if given, are the records' :meth:`prompt_ids` already computed.
        """
        if not records:
            raise MetaloraError("cannot encode an empty batch")
        if sequences is None:
            sequences = [self.prompt_ids(r) for r in records]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(records), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(records), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        option_mask = torch.zeros((len(records), MAX_OPTIONS), dtype=torch.bool)
        for row, record in enumerate(records):
            option_mask[row, : len(record.options)] = True
        option_ids = torch.tensor(self.label_ids, dtype=torch.long).expand(len(records), -1)
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            last_index=torch.tensor([len(s) - 1 for s in sequences], dtype=torch.long),
            option_ids=option_ids.clone(),
            option_mask=option_mask,
            targets=torch.tensor([r.answer_index for r in records], dtype=torch.long),
            records=tuple(records),
        )


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    prefix: list[int] = []
    for column in zip(*sequences, strict=False):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return prefix
