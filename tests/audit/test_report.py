"""The audit report: self-contained, the verdict visible, skipped stages said so."""

from __future__ import annotations

import re
from pathlib import Path

from tests.audit.fake_results import fake_results


def test_report_is_self_contained(tmp_path: Path) -> None:
    from privmed.audit.report import write_report

    path = write_report(fake_results(), tmp_path / "report.html")
    page = path.read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<script" not in page
    assert page.count("data:image/png;base64,") >= 5
    assert "skipped: not available in this run" in page
    assert "banner ok" in page and "banner bad" not in page


def test_report_red_banner_on_violation(tmp_path: Path) -> None:
    from privmed.audit.report import render

    page = render(fake_results(violation=True))
    assert "banner bad" in page and "PRIVACY BUG" in page
    assert 'class="violation"' in page


def test_report_says_when_nothing_was_tested() -> None:
    from privmed.audit.report import render

    results = fake_results()
    results["bounds"], results["estimates"] = {}, {}
    page = render(results)
    assert "banner warn" in page and "No empirical test could run" in page


def test_report_shows_attacks_with_their_grids(tmp_path: Path) -> None:
    from privmed.audit.report import write_report
    from tests.audit.fake_results import write_fake_grids

    write_fake_grids(tmp_path)
    page = write_report(fake_results(attacks=True), tmp_path / "report.html").read_text()
    assert 'alt="reconstruction inverting-gradients"' in page and 'alt="reconstruction imprint"' in page
    assert "honest-but-curious" in page and "malicious" in page
    assert "PSNR (dB), inverting-gradients" in page  # the summary table says how the PSNR was obtained


def test_report_without_the_grid_files_has_no_broken_image(tmp_path: Path) -> None:
    from privmed.audit.report import write_report

    page = write_report(fake_results(attacks=True), tmp_path / "report.html").read_text()
    assert "reconstruction inverting-gradients" not in page  # no <img> pointing at nothing
    assert "PSNR (dB), inverting-gradients" in page


def test_summary_table_names_how_each_number_was_obtained() -> None:
    from privmed.audit.report import render

    page = render(fake_results())
    numbers = ("formal ε", "empirical ε (largest lower bound)", "test accuracy", "test macro F1", "test AUC", "FID")
    for number in numbers:
        assert f"<td>{number}</td>" in page
    assert "white-box, confidence 99.00% (1000 canaries)" in page


def test_sweep_report_draws_the_curves_and_links_every_point(tmp_path: Path) -> None:
    from privmed.audit.report import write_sweep_report
    from tests.audit.fake_results import fake_sweep

    page = write_sweep_report(fake_sweep(), tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert page.count('/report.html">report</a>') == 3
    assert "banner ok" in page and not re.search(r"(src|href)=\"(https?:)?//", page)
    bad = write_sweep_report(fake_sweep(violation=True), tmp_path / "bad.html").read_text()
    assert "banner bad" in bad and "privacy.epsilon = 8: white-box, noise check" in bad


def test_report_shows_hfgan_scores_and_samples(tmp_path: Path) -> None:
    from privmed.audit.report import write_report
    from tests.audit.fake_results import write_fake_grids

    write_fake_grids(tmp_path)
    page = write_report(fake_results(hfgan=True), tmp_path / "report.html").read_text()
    assert 'alt="real vs synthetic"' in page and "TSTR accuracy" in page
    assert '<td>FID</td><td class="num">40.000</td>' in page
    skipped = write_report(fake_results(), tmp_path / "plain.html").read_text()
    assert 'alt="real vs synthetic"' not in skipped and "skipped: not available in this run" in skipped
