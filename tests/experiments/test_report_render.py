"""The HTML report renders in a real browser (headless Chromium, Debian's `chromium` package).

Slow and optional: skipped where Chromium is not installed. Run with `make test-slow`; the
screenshot is kept at `$MOEBIF_SCREENSHOT` (default: the test's tmp folder) for a human to look at.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from moebif.experiments.runner import reproduce

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    out = tmp_path / "res"
    reproduce(["theory", "fig07"], out=out, quick=True, show_progress=False)
    shot = Path(os.environ.get("MOEBIF_SCREENSHOT", tmp_path / "report.png"))
    # flags of a sandboxed machine with no network: no background connections, no GPU
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}",
        "--window-size=1200,1800",
        f"--screenshot={shot}",
        (out / "report.html").as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 50_000  # a rendered page with figures, not a blank one
    # the DOM as Chromium parsed it: the claims table and both embedded figures are there
    dom = subprocess.run(
        cmd[:-2] + ["--dump-dom", (out / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "claims hold" in dom and dom.count("data:image/png;base64,") == 2
    assert 'class="fail"' not in dom
