"""The ``tiny`` model: a random-initialised Llama and a hashed word tokenizer, built in code.

The tokenizer needs no download and no vocabulary file: it splits text into
words and punctuation marks and maps each to one of :data:`TINY_VOCAB` ids by
a stable hash (CRC-32). One token per word keeps prompts short (fast tests)
and lets a 2-layer model pick up word-level cues within a few hundred steps.
"""

from __future__ import annotations

import re
import zlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizer

SPECIAL_TOKENS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
TINY_VOCAB = 2048
TINY_SEED = 1234
_WORD = re.compile(r"\w+|[^\w\s]")


class HashedWordTokenizer(PreTrainedTokenizer):
    """Words and punctuation, each hashed to a fixed id; decoding gives ``<id>`` placeholders."""

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, size: int = TINY_VOCAB, **kwargs) -> None:
        self._size = size
        super().__init__(pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                         unk_token="<unk>", **kwargs)

    @property
    def vocab_size(self) -> int:
        return self._size

    def get_vocab(self) -> dict[str, int]:
        return dict(SPECIAL_TOKENS)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return _WORD.findall(text)

    def _convert_token_to_id(self, token: str) -> int:
        if token in SPECIAL_TOKENS:
            return SPECIAL_TOKENS[token]
        return len(SPECIAL_TOKENS) + zlib.crc32(token.encode()) % (self._size - len(SPECIAL_TOKENS))

    def _convert_id_to_token(self, index: int) -> str:
        for token, special in SPECIAL_TOKENS.items():
            if special == index:
                return token
        return f"<{index}>"

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple:
        return ()


def tiny_config(vocab_size: int = TINY_VOCAB,
                attn_implementation: str | None = None) -> LlamaConfig:
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
) -> tuple[LlamaForCausalLM, HashedWordTokenizer]:
    """The tiny model (same weights every time: seeded without touching the global RNG)."""
    tokenizer = HashedWordTokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(tiny_config(tokenizer.vocab_size, attn_implementation))
    return model, tokenizer
