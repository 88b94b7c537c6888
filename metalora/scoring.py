"""Option scoring and the answer loss, from the last position only.

Only the hidden state at each prompt's last position is projected, and for
option probabilities only the output-projection rows of the label tokens are
used: ``h @ W[label_ids].T`` instead of the ``T x V`` logits a full forward
pass computes. ``benchmarks/scoring_speed.py`` measures the difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalora.prompts import Batch

NEG_INF = float("-inf")


def last_hidden(model: nn.Module, batch: Batch) -> Tensor:
    """``(B, H)`` final hidden state at each prompt's last token."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    out = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, batch.last_index]


def _project(model: nn.Module, hidden: Tensor, rows: Tensor | None) -> Tensor:
    """Logits of ``hidden`` for the vocabulary ``rows`` (all rows if None)."""
    head = model.get_output_embeddings()
    weight = head.weight
    bias = getattr(head, "bias", None)
    if rows is None:
        logits = F.linear(hidden.to(weight.dtype), weight, bias)
    else:
        logits = torch.einsum("bh,boh->bo", hidden.to(weight.dtype), weight[rows])
        if bias is not None:
            logits = logits + bias[rows]
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def option_logits(model: nn.Module, batch: Batch) -> Tensor:
    """``(B, O)`` label-token logits, ``-inf`` where an example has no such option."""
    logits = _project(model, last_hidden(model, batch), batch.option_ids)
    return logits.masked_fill(~batch.option_mask, NEG_INF)


def option_probs(model: nn.Module, batch: Batch) -> Tensor:
    """``(B, O)`` label probabilities renormalised over each example's options."""
    return torch.softmax(option_logits(model, batch), dim=-1)


def answer_loss(model: nn.Module, batch: Batch, over: str = "vocab") -> Tensor:
    """Mean cross-entropy of the correct label token.

    ``over="vocab"`` is the language model's own next-token loss (softmax over
    the whole vocabulary at the last position); ``over="options"`` normalises
    over the example's options only.
    """
    hidden = last_hidden(model, batch)
    if over == "vocab":
        return F.cross_entropy(_project(model, hidden, None), batch.answer_ids)
    if over == "options":
        logits = _project(model, hidden, batch.option_ids).masked_fill(~batch.option_mask, NEG_INF)
        return F.cross_entropy(logits, batch.targets)
    raise ValueError(f"unknown loss normalisation {over!r}; valid choices: options, vocab")


def option_probs_full_logits(model: nn.Module, batch: Batch) -> Tensor:
    """Reference: the same probabilities through the model's full ``(B, T, V)`` logits."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   use_cache=False).logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, batch.last_index].float()
    picked = last.gather(1, batch.option_ids).masked_fill(~batch.option_mask, NEG_INF)
    return torch.softmax(picked, dim=-1)
