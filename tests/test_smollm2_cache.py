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


CONVERT = """
import sys, time
import metalora.models.smollm2 as smollm2
from pathlib import Path
smollm2.gguf_path = lambda: Path(sys.argv[1])
build = smollm2.build_cache
def slow_build(source, target):  # long enough for the other process to ask meanwhile
    time.sleep(2)
    build(source, target)
smollm2.build_cache = slow_build
from metalora.models import load_model
load_model("smollm2-135m", notify=lambda text: print(text, flush=True))
print("loaded", flush=True)
"""


def test_two_processes_at_once_convert_once_into_one_valid_cache(tiny_gguf, tmp_path):
    """torchrun's ranks, or two runs started together, on an empty cache: one converts under
    the lock, the other waits and loads its result; nothing half-made is left behind."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    stale = cache / "models" / f"{smollm2.STAGING_PREFIX}killed"  # a killed conversion's
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    env = dict(os.environ, **{smollm2.CACHE_ENV: str(cache)})
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(tiny_gguf)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("loaded" in out for out in outputs)
    joined = "".join(outputs)
    assert joined.count("First use of smollm2-135m") == 1, outputs  # exactly one conversion
    assert joined.count("Waiting for another process") == 1
    models = cache / "models"
    assert smollm2.is_complete(models / "smollm2-135m-instruct")
    assert sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) == [
        "smollm2-135m-instruct"]  # no staging folder left, the killed one's removed too
