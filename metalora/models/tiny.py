"""The ``tiny`` model: a random-initialised Llama and a byte-level tokenizer, built in code."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
TINY_SEED = 1234


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with one token per byte (no merges): any text, no download."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for char in byte_chars:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>",
    )


def tiny_config(vocab_size: int, attn_implementation: str | None = None) -> LlamaConfig:
    """A 2-layer, 64-wide Llama configuration."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


def build_tiny(
    attn_implementation: str | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The tiny model (same weights every time: seeded without touching the global RNG)."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(tiny_config(len(tokenizer), attn_implementation))
    return model, tokenizer
