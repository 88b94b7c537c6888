"""Prompt format and option scoring (SPEC section 5)."""

from __future__ import annotations

import torch

from metalora.adapters import AdapterConfig, attach_adapters
from metalora.batching import PromptEncoder, format_prompt
from metalora.records import TaskRecord
from metalora.scoring import answer_loss, option_probs, option_probs_full_logits

RECORDS = [
    TaskRecord("t", "Is the sky blue?", "yes", ("yes", "no")),
    TaskRecord("t", "Pick the animal.", "cat", ("stone", "cat", "cloud", "spoon")),
    TaskRecord("t", "Which is larger?", "9", ("2", "9", "5")),
]


def test_prompt_is_exactly_the_spec_format():
    assert format_prompt(RECORDS[0]) == (
        "Return the label of the correct answer for the question below.\n\n"
        "Question: Is the sky blue?\nChoices:\nA) yes\nB) no\nAnswer:"
    )


def test_label_token_scoring_equals_the_full_logits_reference(tiny):
    handle = attach_adapters(tiny.model, AdapterConfig(), ["default"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    batch = PromptEncoder(tiny.tokenizer).encode(RECORDS)  # right-padded, different lengths
    assert len(set(batch.last_index.tolist())) == 3
    fast = option_probs(tiny.model, batch)
    reference = option_probs_full_logits(tiny.model, batch)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fast.sum(-1), torch.ones(3))
    assert fast[0, 2:].eq(0).all() and fast[2, 3].eq(0)


def test_answer_loss_is_the_cross_entropy_of_the_label_token(tiny):
    batch = PromptEncoder(tiny.tokenizer).encode(RECORDS)
    logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    last = logits[torch.arange(3), batch.last_index]
    expected = torch.nn.functional.cross_entropy(last, batch.answer_ids)
    torch.testing.assert_close(answer_loss(tiny.model, batch, over="vocab"), expected)
    probs = option_probs_full_logits(tiny.model, batch)
    expected_opt = -probs[torch.arange(3), batch.targets].log().mean()
    torch.testing.assert_close(answer_loss(tiny.model, batch, over="options"), expected_opt)


def test_a_multi_token_label_prefix_is_appended_and_long_questions_are_truncated(tiny):
    encoder = PromptEncoder(tiny.tokenizer, max_length=150)
    assert encoder.prefix_ids  # the byte-level tokenizer splits " A" into " " + "A"
    long = TaskRecord("t", "word " * 200, "no", ("yes", "no"))
    ids = encoder.prompt_ids(long)
    assert len(ids) == 150
    assert ids[-len(encoder.prefix_ids):] == encoder.prefix_ids
    tail = tiny.tokenizer.decode(ids)
    assert tail.endswith("A) yes\nB) no\nAnswer: ")
    assert tail.startswith("Return the label")
