"""Prompt format and option scoring."""

from __future__ import annotations

import torch

from metalora.adapters import AdapterConfig, attach_adapters
from metalora.prompts import PromptEncoder, format_prompt
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


def test_one_example_cut_from_a_padded_batch_scores_as_in_the_batch(tiny):
    batch = PromptEncoder(tiny.tokenizer).encode(RECORDS)
    with torch.no_grad():
        together = option_probs(tiny.model, batch)
        for i in range(len(batch)):
            alone = batch.example(i)
            assert alone.input_ids.shape == (1, int(batch.last_index[i]) + 1)
            assert alone.records == (RECORDS[i],)
            torch.testing.assert_close(option_probs(tiny.model, alone)[0], together[i],
                                       rtol=1e-5, atol=1e-6)


def test_answer_loss_is_the_cross_entropy_of_the_label_token(tiny):
    batch = PromptEncoder(tiny.tokenizer).encode(RECORDS)
    logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    last = logits[torch.arange(3), batch.last_index]
    expected = torch.nn.functional.cross_entropy(last, batch.answer_ids)
    torch.testing.assert_close(answer_loss(tiny.model, batch, over="vocab"), expected)
    probs = option_probs_full_logits(tiny.model, batch)
    expected_opt = -probs[torch.arange(3), batch.targets].log().mean()
    torch.testing.assert_close(answer_loss(tiny.model, batch, over="options"), expected_opt)


def _byte_tokenizer():
    """A byte-level tokenizer without merges: " A" is two tokens, " " and "A"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<pad>": 0}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")


def test_a_multi_token_label_prefix_is_appended_to_every_prompt():
    tokenizer = _byte_tokenizer()
    encoder = PromptEncoder(tokenizer)
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    assert encoder.prefix_ids == space
    assert encoder.label_ids == [tokenizer.convert_tokens_to_ids(c) for c in "ABCD"]
    ids = encoder.prompt_ids(RECORDS[0])
    assert tokenizer.decode(ids).endswith("B) no\nAnswer: ")


def test_long_questions_are_truncated_keeping_the_instruction_and_choices(tiny):
    encoder = PromptEncoder(tiny.tokenizer, max_length=40)
    short = encoder.prompt_ids(TaskRecord("t", "word", "no", ("yes", "no")))
    long = encoder.prompt_ids(TaskRecord("t", "word " * 200, "no", ("yes", "no")))
    assert len(long) == 40
    tail = tiny.tokenizer("\nChoices:\nA) yes\nB) no\nAnswer:", add_special_tokens=False)
    tail_ids = tail["input_ids"]
    assert long[-len(tail_ids):] == short[-len(tail_ids):] == tail_ids
    head_ids = tiny.tokenizer(format_prompt(TaskRecord("t", "", "no", ("yes", "no"))).split(
        "Question:")[0])["input_ids"]
    assert long[: len(head_ids)] == short[: len(head_ids)] == head_ids
