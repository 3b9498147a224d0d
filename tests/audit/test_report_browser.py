"""The audit report renders in headless Chromium: every image loads, no script error, a screenshot is taken."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.audit.fake_results import fake_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: Appended to the report for the test only: marks every image's load state and any error in the DOM.
PROBE = """
<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)));
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const div = document.createElement('div');
  div.id = 'probe';
  div.textContent = JSON.stringify({images: imgs.length, loaded: ok, errors: window.__errors});
  document.body.appendChild(div);
});
</script>
"""


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _probe(page: str, tmp_path: Path) -> dict:
    """Open ``page`` in headless Chromium; the probe's counts of images (all, loaded) and script errors."""
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], tmp_path)
    match = re.search(r'<div id="probe">(.*?)</div>', dom.stdout)
    assert match, f"the probe did not run; chromium said: {dom.stderr[-2000:]}"
    shot = tmp_path / "report.png"
    _chromium(["--window-size=1200,2400", f"--screenshot={shot}", probed.as_uri()], tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    return json.loads(match.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
@pytest.mark.parametrize("violation", [False, True])
def test_report_renders_in_chromium(tmp_path: Path, violation: bool) -> None:
    from privmed.audit.report import render
    from tests.audit.fake_results import write_fake_grids

    write_fake_grids(tmp_path)
    page = render(fake_results(violation=violation, attacks=True, hfgan=True), base=tmp_path)
    probe = _probe(page, tmp_path)
    assert probe["images"] >= 8  # the plots, both attacks' true | reconstructed grids, real vs synthetic
    assert probe["loaded"] == probe["images"], probe
    assert probe["errors"] == []
    assert ("banner bad" in page) == violation


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_sweep_report_renders_in_chromium(tmp_path: Path) -> None:
    from privmed.audit.report import render_sweep
    from tests.audit.fake_results import fake_sweep

    probe = _probe(render_sweep(fake_sweep()), tmp_path)
    assert probe["images"] == 3
    assert probe["loaded"] == probe["images"], probe
    assert probe["errors"] == []
