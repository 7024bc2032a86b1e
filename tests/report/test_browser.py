"""report.html as a reader sees it: opened in headless Chromium at 800 and 1280 px wide, the page never scrolls
sideways, no image is wider than the page, and no link of report.html or report.md points at a missing file.

Needs a Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it). Where none is found the test is
skipped and says so, unless ``DYNAMICS_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where it fails."""
from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dynamics import report

from .layout import record_sweep

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTHS = (800, 1280)

#: written into a copy of the page: after load, the page's and each image's measurements as JSON in the DOM
#: (in a script element of its own type, which takes no room on the page it measures)
MEASURE = """<script>
window.addEventListener("load", function () {
  var d = document.documentElement, out = {scrollWidth: d.scrollWidth, clientWidth: d.clientWidth, images: []};
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i], r = img.getBoundingClientRect();
    out.images.push({alt: img.alt, natural: img.naturalWidth, left: r.left, right: r.right, width: r.width});
  }
  var s = document.createElement("script"); s.type = "application/json"; s.id = "measured";
  s.textContent = JSON.stringify(out); document.body.appendChild(s);
});
</script>"""


def _browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _measure(browser: str, page: Path, width: int, profile: Path) -> dict:
    """The page's measurements at ``width`` px, read back from the DOM Chromium dumps after load."""
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},1000",
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<script type="application/json" id="measured">(.*?)</script>', done.stdout, re.S)
    assert found, f"{browser} wrote no measurements (exit {done.returncode}): {done.stderr[-1500:]}"
    return json.loads(found.group(1))


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.targets += [v for k, v in attrs if k in ("href", "src") and v]


def _local(target: str) -> bool:
    return not re.match(r"^(data|https?|mailto):|^#", target)


def broken_links(folder: Path) -> list[str]:
    """Local links and sources of report.html and report.md that name no file beside them."""
    parser = _Links()
    parser.feed((folder / "report.html").read_text(encoding="utf-8"))
    md = re.findall(r"\]\(([^)\s]+)\)", (folder / "report.md").read_text(encoding="utf-8"))
    return [t for t in parser.targets + md if _local(t) and not (folder / t.split("#")[0]).exists()]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A report of three conditions with long names (the comparisons table is the widest thing on the page)."""
    tmp = tmp_path_factory.mktemp("browser")
    runs = record_sweep(tmp / "runs", 3, 2)
    report.report(runs, tmp / "rep", progress=False)
    return tmp / "rep"


def test_report_links_name_files_that_exist(written):
    assert broken_links(written) == []
    pngs = sorted((written / "figures").glob("*.png"))
    assert len(pngs) == 6
    for png in pngs:  # a vector PDF beside each PNG, its text as embedded TrueType fonts (pdf.fonttype 42)
        pdf = png.with_suffix(".pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf, png.name


@pytest.fixture(scope="module")
def browser() -> str:
    """The Chromium to open the page in; the test is skipped (before any report is built) where there is none."""
    found = _browser()
    if found is None:
        why = (f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}): install Debian's chromium "
               "(apt-get install chromium) to run this test; .ci/run does")
        if os.environ.get("DYNAMICS_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.mark.parametrize("width", WIDTHS)
def test_report_fits_the_browser_window(browser, written, width, tmp_path):
    page = tmp_path / "measure.html"
    page.write_text((written / "report.html").read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"),
                    encoding="utf-8")
    m = _measure(browser, page, width, tmp_path / "profile")
    assert m["clientWidth"] <= width and m["images"], m
    assert m["scrollWidth"] <= m["clientWidth"], f"at {width} px the page scrolls sideways: {m['scrollWidth']} px wide"
    for img in m["images"]:
        assert img["natural"] > 0, f"{img['alt']}: the image does not decode"
        inside = img["left"] >= 0 and img["right"] <= m["clientWidth"] + 0.5
        assert inside, f"{img['alt']} is wider than the page: {img}"
