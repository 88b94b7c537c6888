"""The first use of smollm2-135m: one conversion of the GGUF file, said once, no bars.

The real GGUF file is 100 MB in a package tests do not install; a tiny GGUF
file written the same way takes its place.
"""

from __future__ import annotations

import pytest
import torch

import metalora.models.smollm2 as smollm2
from metalora.models import load_model
from tests.gguf_fixture import write_tiny_gguf

BARS = ("de-quantizing", "Loading weights", "Writing model shards", "it/s]")


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / smollm2.GGUF_FILE)
    monkeypatch.setattr(smollm2, "gguf_path", lambda: path)
    monkeypatch.setenv(smollm2.CACHE_ENV, str(tmp_path / "cache"))
    return path


def test_the_first_load_converts_once_and_says_where(tiny_gguf, tmp_path, capsys):
    notes: list[str] = []
    first = load_model("smollm2-135m", notify=notes.append)
    cached = smollm2.cached_checkpoint()
    assert cached == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert len(notes) == 2
    assert "converting" in notes[0] and str(cached) in notes[0]
    assert f"about {smollm2.APPROX_CACHE_MIB} MiB" in notes[0]
    size_mib = smollm2.directory_size(cached) / 2**20
    assert f"{size_mib:.0f} MiB in {cached}" in notes[1]

    second = load_model("smollm2-135m", notify=notes.append)
    assert len(notes) == 2  # nothing to say the second time
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(first.model(input_ids=ids).logits, second.model(input_ids=ids).logits)
    err = capsys.readouterr().err
    assert not any(bar in err for bar in BARS), err
