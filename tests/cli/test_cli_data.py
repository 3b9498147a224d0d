"""`privmed data ...`: tables on success; on bad input one clear line, exit code 2, no traceback, no file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privmed.cli import main
from privmed.data import medmnist as mm
from tests.conftest import real_data_dir
from tests.data.fake_medmnist import install, tiny_arrays, tiny_record


@pytest.fixture(autouse=True)
def _wide_offline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Wide tables, an empty data folder (except for real-data tests), and no network."""
    monkeypatch.setenv("COLUMNS", "200")
    if request.node.get_closest_marker("realdata") is None:
        monkeypatch.setenv("PRIVMED_DATA_DIR", str(tmp_path / "empty-data-dir"))

    def offline(*args, **kwargs):
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr(mm.pooch, "retrieve", offline)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["data", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_one_line_error(code: int, output: str, *needles: str) -> None:
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("privmed: error: ")
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0]


def write_config(path: Path, data: str) -> Path:
    path.write_text(f"[data]\n{data}\n")
    return path


# --- list / info ---------------------------------------------------------------------------------------------


def test_list(capsys):
    code, out = run(capsys, "list")
    assert code == 0
    for name in ("pathmnist", "pneumoniamnist", "organsmnist", "phantom", "synthetic"):
        assert name in out


def test_list_gives_whole_names_on_stdout_when_piped(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS")  # as in `privmed data list | less`: no terminal, no width hint
    assert main(["data", "list"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    names = [line.split("│")[1].strip() for line in captured.out.splitlines() if line.startswith("│")]
    assert names == [*mm.INFO, "phantom", "folder"]
    assert "…" not in captured.out


def test_info(capsys):
    code, out = run(capsys, "info", "pneumoniamnist")
    assert code == 0
    assert "28209eda62fecd6e6a2d98b1501bb15f" in out and "pneumonia" in out and "4,708" in out


def test_info_phantom_is_marked_synthetic(capsys):
    code, out = run(capsys, "info", "phantom")
    assert code == 0 and "phantom (synthetic)" in out


def test_info_unknown_name(capsys):
    code, out = run(capsys, "info", "nosuchmnist")
    assert_one_line_error(code, out, "unknown MedMNIST dataset 'nosuchmnist'", "pneumoniamnist")


# --- download / verify -----------------------------------------------------------------------------------------


def test_verify_ok(capsys, monkeypatch, tmp_path):
    record, _ = install(monkeypatch, tmp_path)
    assert main(["data", "verify", record.name, "--root", str(tmp_path)]) == 0
    captured = capsys.readouterr()  # the result is for scripts: on stdout, and nothing else
    assert "OK" in captured.out and record.md5[28] in captured.out and captured.err == ""


def test_verify_md5_mismatch(capsys, monkeypatch, tmp_path):
    record, path = install(monkeypatch, tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    code, out = run(capsys, "verify", record.name, "--root", str(tmp_path))
    assert_one_line_error(code, out, "MD5", "privmed data download tinymnist")


def test_verify_missing_file(capsys, monkeypatch, tmp_path):
    record = tiny_record()
    monkeypatch.setitem(mm.INFO, record.name, record)
    code, out = run(capsys, "verify", record.name, "--root", str(tmp_path), "--size", "64")
    assert_one_line_error(code, out, "tinymnist_64.npz is not in", str(tmp_path))


def test_download_offline(capsys, monkeypatch, tmp_path):
    record = tiny_record()
    monkeypatch.setitem(mm.INFO, record.name, record)
    code, out = run(capsys, "download", record.name, "--root", str(tmp_path))
    progress, _, error = out.partition("\n")
    assert progress.startswith("downloading ") and record.url(28) in progress
    assert_one_line_error(code, error, "could not download tinymnist.npz", record.url(28), str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_download_checks_md5(capsys, monkeypatch, tmp_path):
    record, path = install(monkeypatch, tmp_path)
    content = path.read_bytes()
    path.unlink()

    def fake_retrieve(url, known_hash, fname, path):
        (Path(path) / fname).write_bytes(content)
        return str(Path(path) / fname)

    monkeypatch.setattr(mm.pooch, "retrieve", fake_retrieve)
    code, out = run(capsys, "download", record.name, "--root", str(tmp_path))
    assert code == 0 and "OK" in out


def test_bad_size_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "verify", "pneumoniamnist", "--size", "32"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- partition --------------------------------------------------------------------------------------------------


def test_partition_prints_and_plots(capsys, tmp_path):
    out_png = tmp_path / "hist.png"
    code, out = run(capsys, "partition", "smoke", "--set", "data.num_clients=4", "--plot", str(out_png))
    assert code == 0
    assert "phantom (synthetic)" in out and "dirichlet" in out and "1200" in out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["hist.png"]


def test_partition_pathological_via_overrides(capsys):
    code, out = run(
        capsys,
        "partition",
        "smoke",
        "--set",
        "data.partitioner=pathological",
        "--set",
        "data.partition_options={classes_per_client = 1}",
    )
    assert code == 0 and "pathological(classes_per_client=1)" in out


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["data.partition_options={alpha = 0}"], ["alpha must be a number > 0"]),
        (["data.partition_options={alpha = -0.5}"], ["alpha must be a number > 0"]),
        (
            ["data.num_clients=2000", "data.min_examples=1"],
            ["cannot split 1200 examples across 2000 clients", "fewer clients"],
        ),
        (["data.name=nosuch"], ["unknown dataset 'nosuch'"]),
        (["data.partitioner=bogus"], ["unknown partitioner 'bogus'"]),
        (["data.partition_options={beta = 1}"], ["no option(s) ['beta']"]),
        (["data.min_examples=500"], ["lower min_examples"]),
        (["data.nosuchkey=1"], ["unknown key 'nosuchkey'"]),
    ],
)
def test_partition_bad_input(capsys, tmp_path, overrides, needles):
    out_png = tmp_path / "hist.png"
    argv = ["partition", "smoke", "--plot", str(out_png)]
    for item in overrides:
        argv += ["--set", item]
    code, out = run(capsys, *argv)
    assert_one_line_error(code, out, *needles)
    assert list(tmp_path.iterdir()) == []


def test_partition_bad_plot_target(capsys, tmp_path):
    code, out = run(capsys, "partition", "smoke", "--plot", str(tmp_path / "hist.xyz"))
    assert_one_line_error(code, out, "unknown image type 'xyz'")
    code, out = run(capsys, "partition", "smoke", "--plot", str(tmp_path / "no" / "such" / "hist.png"))
    assert_one_line_error(code, out, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_partition_missing_config(capsys, tmp_path):
    code, out = run(capsys, "partition", str(tmp_path / "nope.toml"))
    assert_one_line_error(code, out, "not found")


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("missing", ["pneumoniamnist.npz is not in", "download is off", "zenodo.org"]),
        ("corrupt", ["corrupt or truncated"]),
        ("truncated", ["corrupt or truncated"]),
        ("keys", ["lacks the key(s) ['test_images']"]),
        ("shape", ["train_images has shape (4708, 27, 27)"]),
        ("nan", ["NaN or infinite pixels"]),
        ("range", ["outside 0..255"]),
        ("labels", ["must lie in [0, 1]"]),
    ],
)
def test_partition_bad_npz(capsys, tmp_path, damage, needles):
    """A MedMNIST config pointing at a broken file: one line naming the problem, exit 2, no plot."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    record = mm.INFO["pneumoniamnist"]
    arrays = tiny_arrays(record)  # official split sizes (small 28 px arrays, ~4.6 MB in total)
    if damage == "keys":
        del arrays["test_images"]
    elif damage == "shape":
        arrays["train_images"] = np.zeros((4708, 27, 27), np.uint8)
    elif damage == "nan":
        arrays["val_images"] = np.full((524, 28, 28), np.nan, np.float32)
    elif damage == "range":
        arrays["val_images"] = np.full((524, 28, 28), 256.0, np.float32)
    elif damage == "labels":
        arrays["test_labels"] = np.full((624, 1), 2, np.uint8)
    path = data_dir / "pneumoniamnist.npz"
    if damage != "missing":
        np.savez(path, **arrays)
    if damage == "corrupt":
        path.write_bytes(b"PK\x03\x04" + bytes(1000))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100_000])
    config = write_config(
        tmp_path / "run.toml",
        f'name = "pneumoniamnist"\noptions = {{ root = "{data_dir}", download = false }}\nnum_clients = 3',
    )
    out_png = tmp_path / "out.png"
    code, out = run(capsys, "partition", str(config), "--plot", str(out_png))
    assert_one_line_error(code, out, *needles)
    assert not out_png.exists()


@pytest.mark.realdata
def test_partition_real_pneumoniamnist(capsys, tmp_path):
    root = real_data_dir("pneumoniamnist")
    config = write_config(
        tmp_path / "real.toml",
        f'name = "pneumoniamnist"\noptions = {{ root = "{root}", download = false }}\n'
        'partitioner = "dirichlet"\npartition_options = { alpha = 0.5 }\nnum_clients = 4\nmin_examples = 20',
    )
    code, out = run(capsys, "partition", str(config))
    assert code == 0 and "4708" in out and "1214" in out and "3494" in out
    code, out = run(capsys, "verify", "pneumoniamnist", "--root", str(root))
    assert code == 0 and "28209eda62fecd6e6a2d98b1501bb15f" in out
