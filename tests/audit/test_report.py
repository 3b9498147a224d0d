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
