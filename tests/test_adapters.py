"""The adapter layer: peft equivalence, trainability, snapshots and removal."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from metalora.adapters import AdapterConfig, attach_adapters
from metalora.errors import MetaloraError
from metalora.target_modules import find_target_linears

TARGETS = ("q_proj", "v_proj", "o_proj")


def _randomise(handle, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in handle.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def test_output_equals_peft_lora_for_the_same_factors(tiny):
    base = tiny.model
    peft_model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), lora_dropout=0.0),
    )
    handle = attach_adapters(base, AdapterConfig(rank=8, alpha=16, target_modules=TARGETS),
                             ["default"])
    _randomise(handle)
    peft_modules = dict(peft_model.named_modules())
    copied = 0
    with torch.no_grad():
        for name, layer in handle.layers.items():
            target = peft_modules[f"base_model.model.{name}"]
            target.lora_A["default"].weight.copy_(layer.pairs["default"].A)
            target.lora_B["default"].weight.copy_(layer.pairs["default"].B)
            copied += 1
    assert copied == 3 * base.config.num_hidden_layers
    ids = torch.randint(5, 200, (2, 17), generator=torch.Generator().manual_seed(1))
    ours = base(input_ids=ids).logits
    theirs = peft_model(input_ids=ids).logits
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # and the adapters really change the output
    handle.set_delta(None)
    assert not torch.allclose(base(input_ids=ids).logits, ours)


def test_only_adapters_are_trainable_and_zero_init_changes_nothing(tiny):
    ids = torch.randint(5, 200, (1, 9), generator=torch.Generator().manual_seed(2))
    before = tiny.model(input_ids=ids).logits
    handle = attach_adapters(tiny.model, AdapterConfig(), ["default", "other"])
    trainable = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert trainable == set(handle.named_parameters())
    assert all(".pairs." in n for n in trainable)
    torch.testing.assert_close(tiny.model(input_ids=ids).logits, before, rtol=0, atol=0)


def test_snapshot_restore_is_exact_and_remove_restores_the_model(tiny):
    original_linear = tiny.model.model.layers[0].self_attn.q_proj
    handle = attach_adapters(tiny.model, AdapterConfig(), ["default"])
    _randomise(handle, seed=3)
    snap = handle.snapshot()
    _randomise(handle, seed=4)
    assert any(not torch.equal(snap[k], v) for k, v in handle.named_parameters().items())
    handle.restore(snap)
    assert all(torch.equal(snap[k], v) for k, v in handle.named_parameters().items())
    handle.remove()
    assert tiny.model.model.layers[0].self_attn.q_proj is original_linear


def test_copy_pair_copies_every_layer(tiny):
    handle = attach_adapters(tiny.model, AdapterConfig(), ["global", "task"])
    _randomise(handle, seed=5)
    handle.copy_pair("global", "task")
    for layer in handle.layers.values():
        assert torch.equal(layer.pairs["global"].A, layer.pairs["task"].A)
        assert torch.equal(layer.pairs["global"].B, layer.pairs["task"].B)


def test_unknown_targets_and_double_attach_are_clear_errors(tiny):
    with pytest.raises(MetaloraError, match="valid choices: .*q_proj"):
        attach_adapters(tiny.model, AdapterConfig(target_modules=("nope",)), ["default"])
    attach_adapters(tiny.model, AdapterConfig(), ["default"])
    with pytest.raises(MetaloraError, match="already carries"):
        attach_adapters(tiny.model, AdapterConfig(), ["default"])


# -- target modules on other architectures ---------------------------------------------------


def _small_models() -> dict[str, nn.Module]:
    from transformers import (
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        PhiConfig,
        PhiForCausalLM,
    )

    small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
             "num_attention_heads": 2}
    torch.manual_seed(0)
    return {
        "opt": OPTForCausalLM(OPTConfig(ffn_dim=32, word_embed_proj_dim=16, **small)),
        "gpt-neox": GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=32, **small)),
        "phi": PhiForCausalLM(PhiConfig(intermediate_size=32, **small)),
    }


@pytest.mark.parametrize(("arch", "expected"), [
    ("opt", {"self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj"}),
    ("gpt-neox", {"attention.query_key_value", "attention.dense"}),
    ("phi", {"self_attn.q_proj", "self_attn.v_proj", "self_attn.dense"}),
])
def test_llama_target_names_map_to_other_architectures(arch: str, expected: set[str]) -> None:
    model = _small_models()[arch].eval()  # no dropout
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    handle = attach_adapters(model, AdapterConfig(), ["lora"])
    adapted = {".".join(name.split(".")[-2:]) for name in handle.layers}
    assert adapted == expected
    assert len(handle.layers) == 2 * len(expected)  # every layer of the 2-layer model
    with torch.no_grad():  # B = 0: the adapted model computes what the base model did
        torch.testing.assert_close(model(input_ids=ids).logits, before)
    handle.remove()


def test_aliases_apply_inside_attention_blocks_only() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.ModuleDict({"q_proj": nn.Linear(4, 4), "dense": nn.Linear(4, 4)})
            self.mlp = nn.ModuleDict({"dense": nn.Linear(4, 4)})

    found = find_target_linears(Block(), ["q_proj", "o_proj"])
    assert list(found) == ["attn.q_proj", "attn.dense"]
    with pytest.raises(MetaloraError, match="no linear layer named 'k_proj'.*valid choices: "
                                            "dense, q_proj"):
        find_target_linears(Block(), ["k_proj"])
