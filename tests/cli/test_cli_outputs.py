"""Output folders: every problem with --out is refused before any work, with one line and exit 2, nothing written;
--overwrite replaces a run and nothing else."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from privmed.cli import main

SMALL = "data.options={classes = 2, n_train = 160, n_val = 60, n_test = 60}"
#: A folder nobody can create anything in, root included (Linux: /proc takes no new entries).
UNWRITABLE = Path("/proc/privmed-test-out")


def _snapshot(root: Path) -> dict[str, float | None]:
    """Every entry under ``root``, with its files' modification times (a folder's own time may change: the
    check tries to create, and removes, a temporary folder to know it can write there)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.stat().st_mtime_ns for p in root.rglob("*")}


def _one_line(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("privmed: error:") and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def spots(tmp_path: Path) -> dict[str, Path]:
    """A file, a folder holding a stranger's file, and an empty folder."""
    (tmp_path / "a-file.txt").write_text("not a folder\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("someone's notes\n")
    (tmp_path / "empty").mkdir()
    return {"file": tmp_path / "a-file.txt", "full": tmp_path / "full", "empty": tmp_path / "empty"}


@pytest.mark.parametrize("command", ["train", "federate"])
@pytest.mark.parametrize(
    ("where", "flags", "words"),
    [
        ("file", [], ("a-file.txt is a file, not a folder",)),
        ("file/sub", [], ("a-file.txt is a file, not a folder",)),
        ("full", [], ("already holds files (notes.txt)", "--resume", "--overwrite")),
        ("unwritable", [], ("cannot write in /proc",)),
    ],
)
def test_bad_out_is_refused_before_any_work(
    tmp_path: Path,
    spots: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    command: str,
    where: str,
    flags: list[str],
    words: tuple[str, ...],
) -> None:
    if where == "unwritable" and not (sys.platform.startswith("linux") and Path("/proc").is_dir()):
        pytest.skip("needs Linux's /proc as a folder no one can write in")
    out = UNWRITABLE if where == "unwritable" else tmp_path / where.replace("file", "a-file.txt", 1)
    before = _snapshot(tmp_path)
    assert main([command, "smoke", "--out", str(out), *flags]) == 2
    _one_line(capsys, *words)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["train", "federate"])
def test_resume_and_overwrite_together_are_refused(
    spots: dict[str, Path], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "smoke", "--out", str(spots["full"]), "--resume", "--overwrite"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_an_empty_folder_is_fine_and_overwrite_replaces_only_the_run(
    spots: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = spots["empty"]
    assert main(["train", "smoke", "--out", str(out), "--set", SMALL, "--set", "train.epochs=1"]) == 0
    (out / "notes.txt").write_text("mine\n")
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(["train", "smoke", "--out", str(out), "--set", SMALL, "--set", "train.epochs=2"]) == 2
    _one_line(capsys, "already holds files")
    stale = out / "predictions" / "phantom_test_[AUC]0.000_[ACC]0.000@epoch9.csv"
    stale.write_text("0,0.5,0.5\n")
    assert main(["train", "smoke", "--out", str(out), "--set", SMALL, "--set", "train.epochs=2", "--overwrite"]) == 0
    second = json.loads((out / "results.json").read_text())
    assert len(first["history"]) == 1 and len(second["history"]) == 2
    assert (out / "notes.txt").read_text() == "mine\n"  # not privmed's: left alone
    assert not stale.exists()  # the earlier run's predictions went with it


def test_overwrite_with_bad_input_deletes_nothing(spots: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = spots["empty"]
    assert main(["train", "smoke", "--out", str(out), "--set", SMALL, "--set", "train.epochs=1"]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "smoke", "--out", str(out), "--set", "data.name='nosuchmnist'", "--overwrite"]) == 2
    _one_line(capsys, "nosuchmnist")
    assert main(["federate", "smoke", "--out", str(out), "--set", "data.num_clients=5000", "--overwrite"]) == 2
    _one_line(capsys, "more clients than examples")
    assert _snapshot(out) == before


def test_out_folder_without_write_permission_for_a_normal_user(tmp_path: Path, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write in any folder; the /proc case covers an unwritable folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["train", "smoke", "--out", str(locked / "run")]) == 2
        _one_line(capsys, "cannot write in")
    finally:
        locked.chmod(0o700)
