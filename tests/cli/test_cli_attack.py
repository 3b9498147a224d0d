"""`privmed attack`: make-case -> attack -> metrics and grid; tune resumes; bad input exits 2 writing nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privmed.attacks.record import UpdateRecord
from privmed.cli import main


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    rc = main(["attack", "make-case", "--model", "mlp", "--dataset", "phantom", "--out", str(folder / "case.npz")])
    assert rc == 0
    return folder / "case.npz"


def test_make_case_then_attack_writes_metrics_and_a_grid(case, tmp_path):
    assert (case.parent / "case.truth.npz").is_file()
    out = tmp_path / "out"
    assert main(["attack", str(case), "--attack", "analytic", "--out", str(out)]) == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["threat"] == "honest-but-curious" and payload["metrics"]["psnr"]["min"] > 80
    assert payload["metrics"]["above_floor"] == 1 and payload["metrics"]["label_accuracy"] == 1.0
    assert (out / "grid.png").stat().st_size > 0 and (out / "reconstruction.npz").is_file()


def test_the_default_attack_follows_the_modality(case, tmp_path):
    out = tmp_path / "out"
    assert main(["attack", str(case), "--set", "iterations=5", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["attack"] == "inverting-gradients"


def _broken(case, tmp_path, name: str, **changes) -> str:
    record = UpdateRecord.load(case)
    meta, arrays = record.meta(), {}
    for key in record.keys:
        arrays[f"global/{key}"] = record.global_weights[key]
        arrays[f"update/{key}"] = record.update[key]
    for key, value in changes.items():
        if key.startswith(("global/", "update/")):
            arrays[key] = value
        else:
            meta[key] = value
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("name", "argv_extra", "message"),
    [
        ("nan", {"update/fc2.bias": np.array([np.nan, 0.0], np.float32)}, "NaN"),
        ("newer", {"version": 99}, "newer"),
        ("shapes", {"model": {"name": "mlp", "kwargs": {"in_channels": 1, "num_classes": 3}}}, "expects shape"),
    ],
)
def test_bad_records_exit_2_and_write_nothing(case, tmp_path, capsys, name, argv_extra, message):
    path = _broken(case, tmp_path, name, **argv_extra)
    out = tmp_path / "out"
    assert main(["attack", path, "--attack", "analytic", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_lying_batch_size_unknown_attack_and_regularizer_exit_2(tmp_path, capsys):
    case2 = tmp_path / "b2.npz"
    main(["attack", "make-case", "--model", "mlp", "--dataset", "phantom", "--batch-size", "2", "--out", str(case2)])
    record = UpdateRecord.load(case2)
    record.replace(training={**record.training, "batch_size": 1, "num_examples": 1}).save(tmp_path / "lie.npz")
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "lie.npz"), "--attack", "analytic"], "batch size 1"),
        ([str(case2), "--attack", "nope"], "unknown attack"),
        ([str(case2), "--set", "regularizers={nope=1}"], "unknown regularizer"),
        ([str(case2), "--set", "colour=3"], "no setting"),
    ]
    for argv, message in cases:
        assert main(["attack", *argv, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()


def test_tune_stores_the_study_and_resumes(case, tmp_path):
    study = tmp_path / "study.db"
    argv = ["attack", "tune", str(case), "--attack", "inverting-gradients", "--trials", "2", "--study", str(study)]
    argv += ["--set", "iterations=3", "--out", str(tmp_path / "best.json")]
    assert main(argv) == 0
    assert main(argv) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["trials"] == 4 and best["objective"] == "psnr" and set(best["best_settings"]) >= {"lr", "tv"}


def test_a_table_case_is_attacked_and_scored_through_the_same_command(tmp_path, capsys):
    case = tmp_path / "table.npz"
    argv = ["attack", "make-case", "--model", "tabular-mlp", "--dataset", "breast-cancer-table", "--out", str(case)]
    assert main(argv) == 0
    out = tmp_path / "tab"
    assert main(["attack", str(case), "--set", "iterations=400", "--set", "lr=0.1", "--out", str(out)]) == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["attack"] == "tabular-gm"
    assert payload["metrics"]["similarity"] > 0.99  # batch 1 on an MLP: the gradient pins the row down
    assert len(payload["metrics"]["per_feature_error"]) == 30


def test_tabular_make_case_refuses_image_only_options(tmp_path, capsys):
    argv = ["attack", "make-case", "--model", "tabular-mlp", "--dataset", "breast-cancer-table", "--local-steps", "3"]
    assert main([*argv, "--out", str(tmp_path / "c.npz")]) == 2
    assert "one FedSGD gradient" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_tune_on_a_series_record_minimises_fmse_and_resumes(tmp_path):
    case = tmp_path / "icu.npz"
    argv = ["attack", "make-case", "--model", "tabular-mlp", "--dataset", "icu-synthetic", "--out", str(case)]
    assert main(argv) == 0  # the MLP flattens the 48 x 76 series (steps from the data)
    study = tmp_path / "st.db"
    base = ["attack", "tune", str(case), "--attack", "tabular-gm", "--study", str(study), "--set", "iterations=30"]
    assert main([*base, "--trials", "1", "--out", str(tmp_path / "a.json")]) == 0
    assert main([*base, "--trials", "1", "--out", str(tmp_path / "b.json")]) == 0
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert first["objective"] == "fmse" and first["direction"] == "minimize"
    assert (first["trials"], second["trials"]) == (1, 2)  # the study resumed
