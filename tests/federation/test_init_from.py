"""``model.init_from``: a federated run starts from another run's weights (a warm start), checked before any
client starts; a real run's first global model is the loaded one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from privmed.attacks.record import UpdateRecord
from privmed.cli import main
from privmed.config import Config, from_dict
from privmed.errors import ConfigError
from privmed.federation import checkpoint, task
from privmed.federation.init_from import load_init_weights
from privmed.federation.run import run_federated
from privmed.federation.server_app import build_strategy

#: 3 phantom clients, 2 rounds: a few seconds per round on 2 shared cores
SMALL = {
    "data": {"name": "phantom", "options": {"classes": 2, "n_train": 240, "n_val": 60, "n_test": 60},
             "partitioner": "iid", "num_clients": 3, "min_examples": 20},
    "train": {"batch_size": 32, "lr": 0.05},
    "federation": {"rounds": 2, "min_fit_clients": 2, "local_epochs": 1},
}  # fmt: skip


def small_cfg(**model: object) -> Config:
    cfg = from_dict(SMALL, source="test")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))


def fake_run(folder: Path, cfg: Config, *, scale: float = 1.0) -> list[np.ndarray]:
    """A run folder holding one complete checkpoint of ``cfg``'s model (weights of a fresh model times ``scale``)."""
    info = task.load_federated_data(cfg)[0].info
    weights = [w * scale if w.dtype.kind == "f" else w for w in task.initial_weights(cfg, info)]
    strategy = build_strategy(cfg, initial_weights=weights)
    checkpoint.save_checkpoint(folder, 3, weights, strategy, {"config": {"model.name": cfg.model.name}})
    return weights


def test_initial_weights_come_from_a_run_folder_or_a_weights_file(tmp_path: Path) -> None:
    saved = fake_run(tmp_path / "run", small_cfg(), scale=0.5)
    info = task.load_federated_data(small_cfg())[0].info
    fresh = task.initial_weights(small_cfg(), info)
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "round-0003" / "weights.npz"):
        loaded = task.initial_weights(small_cfg(init_from=str(source)), info)
        assert all(np.array_equal(a, b) for a, b in zip(loaded, saved, strict=True))
        assert not all(np.array_equal(a, b) for a, b in zip(loaded, fresh, strict=True))
    assert "round 3 of" in load_init_weights(str(tmp_path / "run"))[1]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no complete checkpoint"),
        ("other-width", "the configured model's has"),
        ("not-npz", "is not a readable weights file"),
    ],
)
def test_a_source_that_does_not_fit_is_refused(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-npz").write_text("hello")
    fake_run(tmp_path / "other-width", small_cfg(width=8))
    info = task.load_federated_data(small_cfg())[0].info
    with pytest.raises(ConfigError, match=message):
        task.initial_weights(small_cfg(init_from=str(tmp_path / source)), info)


def test_cli_mismatched_model_exits_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_run(tmp_path / "wide", small_cfg(width=8))
    config = tmp_path / "small.toml"
    config.write_text(
        '[data]\nname = "phantom"\noptions = { classes = 2, n_train = 240, n_val = 60, n_test = 60 }\n'
        'partitioner = "iid"\nnum_clients = 3\nmin_examples = 20\n[federation]\nrounds = 1\nmin_fit_clients = 2\n'
    )
    code = main(["federate", str(config), "--out", str(tmp_path / "out"), "--init-from", str(tmp_path / "wide")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "model.init_from" in err and "same [model]" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_a_real_run_starts_from_the_loaded_weights(tmp_path: Path) -> None:
    first = run_federated(small_cfg(), out_dir=tmp_path / "first")
    assert first["status"] == "complete"
    final = checkpoint.load_latest(tmp_path / "first")
    assert final is not None and final.server_round == 2
    cfg = small_cfg(init_from=str(tmp_path / "first"))
    cfg = dataclasses.replace(cfg, federation=dataclasses.replace(cfg.federation, rounds=1, record="1"))
    second = run_federated(cfg, out_dir=tmp_path / "second")
    assert second["status"] == "complete"
    records = sorted((tmp_path / "second" / "records").glob("round-001-client-*.npz"))
    assert len(records) == 3
    fresh = task.initial_weights(small_cfg(), task.load_federated_data(cfg)[0].info)
    for path in records:  # what the server sent in round 1: the first run's final global model, not a fresh one
        sent = list(UpdateRecord.load(path).global_weights.values())
        assert all(np.array_equal(a, b) for a, b in zip(sent, final.weights, strict=True))
        assert not all(np.array_equal(a, b) for a, b in zip(sent, fresh, strict=True))
    # and the initial evaluation is the first run's last round's model
    assert second["initial"]["val"]["loss"] == pytest.approx(first["final"]["val"]["loss"], rel=1e-5)


def test_a_state_dict_file_loads_by_name_and_leaves_the_rest_fresh(tmp_path: Path) -> None:
    """HF-GAN's discriminator.pt starts the ``dcgan-d`` classifier by name: D's trunk and class projection."""
    import torch

    from privmed.models.dcgan import build_gan

    info = task.load_federated_data(small_cfg())[0].info
    _, d = build_gan(channels=info.n_channels, size=info.size, num_classes=info.n_labels, d_head="flatten")
    torch.save(d.state_dict(), tmp_path / "discriminator.pt")
    cfg = small_cfg(name="dcgan-d")
    fresh = task.initial_weights(cfg, info)
    loaded = task.initial_weights(small_cfg(name="dcgan-d", init_from=str(tmp_path / "discriminator.pt")), info)
    names = list(task.new_model(cfg, info).state_dict())
    for name, a, b in zip(names, loaded, fresh, strict=True):
        if name.startswith("features.") or name == "embed.weight":
            assert np.array_equal(a, d.state_dict()[name].numpy()), name
        else:
            assert np.array_equal(a, b), name  # the head's bias (D has none) is the fresh model's
    with pytest.raises(ConfigError, match="by name and shape"):  # privmed's cnn shares no layer with D
        task.initial_weights(small_cfg(init_from=str(tmp_path / "discriminator.pt")), info)
    (tmp_path / "bad.pt").write_text("not torch")
    with pytest.raises(ConfigError, match="not a readable torch state_dict"):
        task.initial_weights(small_cfg(name="dcgan-d", init_from=str(tmp_path / "bad.pt")), info)
