"""The HTML report as a reader sees it: rendered by headless Chromium, its figures decoded, its answer on the page.

Needs Debian's ``chromium`` (``.ci/run`` installs it and sets ``ABLATE_REQUIRE_BROWSER=1``, so CI never skips
this); on a machine without it the test is skipped.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest
from mlflow import MlflowClient
from mlflow_records import FakeTrial, Invocation, log_study, new_tracking_uri

from ablate.report import make_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Run after the page has loaded: each image's decoded width and height, written into the DOM for --dump-dom.
PROBE = """<script>
window.addEventListener("load", () => {
  const sizes = [...document.images].map(i => `${i.complete}:${i.naturalWidth}x${i.naturalHeight}`);
  document.body.setAttribute("data-images", sizes.join(" "));
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        if os.environ.get("ABLATE_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium), and ABLATE_REQUIRE_BROWSER is set")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def _render(chromium: str, page, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         *flags, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )


@pytest.mark.slow
def test_report_renders_with_its_figures_and_its_answer(chromium, tmp_path):
    uri = new_tracking_uri(tmp_path)
    trials = [FakeTrial(n=1, shortcut="none", train_error=0.22), FakeTrial(n=5, shortcut="none", train_error=0.26),
              FakeTrial(n=1, train_error=0.22), FakeTrial(n=5, train_error=0.225)]
    log_study(MlflowClient(uri), "seen", [Invocation(trials)], artifact_root=tmp_path / "a", metric="train_error")
    report = make_report("seen", tracking_uri=uri, out_dir=tmp_path / "reports")

    probed = tmp_path / "probed.html"
    probed.write_text(report.html.read_text().replace("</body>", PROBE + "</body>"))
    dom = _render(chromium, probed, "--dump-dom").stdout
    sizes = re.search(r'data-images="([^"]*)"', dom).group(1).split()
    assert len(sizes) == 2  # Fig. 6 curves and Fig. 7 responses
    for size in sizes:
        complete, dims = size.split(":")
        width, height = map(int, dims.split("x"))
        assert complete == "true" and width > 300 and height > 200, size  # decoded, not a broken-image icon
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert "Answer" in text and " ".join(report.answer.split()) in " ".join(text.split())

    shot = tmp_path / "page.png"
    _render(chromium, report.html, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and figures, not a blank page
