"""The built site as a reader sees it, in a real browser (headless Chromium).

Skipped where Chromium is not installed, except in CI (``CI=true``), where
``.ci/run`` installs Debian's ``chromium`` and a missing one is an error; the
docs extra brings ``playwright``, which drives that system browser, so no
browser is downloaded. On every key page:
the maths is rendered (no raw TeX left), every image loads, nothing needs
horizontal scrolling at 1280 px (the page, a code block, a formula), and no
name in a table is broken across lines.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSER = os.environ.get("METALORA_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
PAGES = ("", "quickstart/", "concepts/", "cli/", "learners/", "writing-a-plugin/",
         "benchmarks/")
WIDTH = 1280

if BROWSER is None and os.environ.get("CI") == "true":  # CI installs it: never skip there
    raise RuntimeError("tests/test_docs_browser.py: no Chromium in CI (.ci/run installs it)")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs Chromium: apt-get install "
                                                        "chromium")

CHECKS = """() => {
  const wide = (e) => e.scrollWidth > e.clientWidth + 1;
  const text = (e) => e.textContent.trim().slice(0, 80);
  return {
    maths: document.querySelectorAll(".arithmatex .katex").length,
    raw_tex: [...document.querySelectorAll(".arithmatex")]
      .filter((e) => !e.querySelector(".katex")).map(text),
    katex_errors: [...document.querySelectorAll(".katex-error")].map(text),
    broken_images: [...document.images]
      .filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.src),
    page_width: document.documentElement.scrollWidth,
    wide_code: [...document.querySelectorAll("pre > code")].filter(wide).map(text),
    wide_maths: [...document.querySelectorAll(".katex-display")].filter(wide).map(text),
    split_names: [...document.querySelectorAll("td code, th code")]
      .filter((e) => e.getClientRects().length > 1).map(text),
  };
}"""


@pytest.fixture(scope="module")
def site(built_docs) -> str:
    pytest.importorskip("playwright")
    assert built_docs.returncode == 0, built_docs.stderr[-4000:]
    out = built_docs.site
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=BROWSER,
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.mark.parametrize("page_path", PAGES)
def test_the_page_renders_whole_at_1280_px(site, browser, page_path):
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400
            else None)
    page.on("requestfailed", lambda r: failed.append(f"failed {r.url}"))
    page.goto(site + page_path, wait_until="networkidle")
    page.wait_for_timeout(200)  # KaTeX renders on the page's document$ event
    found = page.evaluate(CHECKS)
    page.close()
    assert failed == []
    assert found["raw_tex"] == [] and found["katex_errors"] == []
    assert found["broken_images"] == []
    assert found["page_width"] <= WIDTH
    assert found["wide_code"] == [] and found["wide_maths"] == []
    assert found["split_names"] == []
    if page_path == "concepts/":
        assert found["maths"] > 20  # the maths is there, and rendered
