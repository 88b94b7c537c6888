"""MkDocs hook: KaTeX, taken from its npm package at build time, ships inside the site.

The pages write maths in LaTeX (``$...$`` inline, ``$$...$$`` displayed);
``pymdownx.arithmatex`` keeps it for the browser, where KaTeX renders it
(``javascripts/katex-init.js``). KaTeX's script, stylesheet, auto-render
extension and fonts are copied from the npm package's tarball into
``SITE/assets/katex/``, so the built site renders its maths offline.

The tarball (:data:`VERSION`) is read from ``$METALORA_DOCS_CACHE`` (default
``~/.cache/metalora/docs``); when it is not there yet it is fetched once from
the npm registry and checked against :data:`INTEGRITY`, the registry's own
SHA-512. Without network and without the file, the build stops with one
error saying where to put it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

VERSION = "0.16.22"
INTEGRITY = ("sha512-XCHRdUw4lf3SKBaJe4EvgqIuWwkPSo9XoeO8GjQW94Bp7TWv9hNhzZjZ+OH9yf1UmLygb7DIT5GS"
             "FQiyt16zYg==")
URL = f"https://registry.npmjs.org/katex/-/katex-{VERSION}.tgz"
SHIPPED = ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js", "fonts/")
"""What of the package's ``dist/`` goes into the site (``fonts/``: every font file)."""
TARGET = "assets/katex"


def cache_dir() -> Path:
    """Where the tarball is kept between builds."""
    return Path(os.environ.get("METALORA_DOCS_CACHE", Path.home() / ".cache" / "metalora" /
                               "docs"))


def tarball() -> bytes:
    """The KaTeX npm tarball, from the cache or (once) from the registry, integrity-checked."""
    path = cache_dir() / f"katex-{VERSION}.tgz"
    if path.exists():
        data = path.read_bytes()
    else:
        try:
            with urllib.request.urlopen(URL, timeout=60) as response:
                data = response.read()
        except OSError as exc:
            raise RuntimeError(f"KaTeX {VERSION} could not be fetched from {URL} ({exc}); "
                               f"download it and put it at {path}") from None
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise RuntimeError(f"{path if path.exists() else URL} is not KaTeX {VERSION} (its "
                           "SHA-512 differs from the npm registry's); delete it and build again")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def install(site_dir: Path) -> list[Path]:
    """Copy the shipped KaTeX files into ``site_dir``; return them."""
    written = []
    with tarfile.open(fileobj=io.BytesIO(tarball()), mode="r:gz") as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("package/dist/")
            if member.isfile() and name != member.name and (
                    name in SHIPPED or (name.startswith("fonts/") and "/" not in name[6:])):
                target = site_dir / TARGET / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
                written.append(target)
    return written


def on_post_build(config, **kwargs):
    from mkdocs.exceptions import PluginError

    try:
        install(Path(config.site_dir))
    except RuntimeError as exc:
        raise PluginError(str(exc)) from None
