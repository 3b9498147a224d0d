"""Centralised training under DP-SGD (privmed.centralized with privacy.mode = "sample")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from privmed.centralized import Callbacks, train_centralized
from privmed.config import from_dict
from privmed.errors import ConfigError
from privmed.privacy import epsilon_for
from privmed.privacy.randomness import REPLAY_WARNING


def _cfg(**privacy: object):
    return from_dict(
        {
            "data": {"name": "phantom", "options": {"classes": 2, "n_train": 160, "n_val": 60, "n_test": 60}},
            "model": {"name": "cnn", "width": 8},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.1},
            "privacy": {"mode": "sample", "epsilon": 4.0, "delta": 5e-4, "max_grad_norm": 1.0, **privacy},
        }
    )


class _InterruptedError(Exception):
    pass


def test_dp_sgd_spends_the_target_epsilon_and_says_so(tmp_path: Path) -> None:
    result = train_centralized(_cfg(), out_dir=tmp_path)
    dp = result["privacy"]
    assert dp["steps"] == dp["planned_steps"] == 2 * 10  # q = 16 / 160: 10 Poisson batches per epoch
    assert dp["sample_rate"] == pytest.approx(0.1)
    assert 3.8 <= dp["epsilon"] <= 4.0 * 1.01  # calibrated to the target, never above it (1% tolerance)
    # ε from the run's ledger equals ε recomputed from (σ, q, steps, δ) alone
    again = epsilon_for(
        noise_multiplier=dp["noise_multiplier"], sample_rate=dp["sample_rate"], steps=dp["steps"], delta=dp["delta"]
    )
    assert dp["epsilon"] == pytest.approx(again, rel=1e-9)
    eps = [h["epsilon"] for h in result["history"]]
    assert 0 < eps[0] < eps[1] == pytest.approx(dp["epsilon"])


def _weights(path: Path) -> list[torch.Tensor]:
    return list(torch.load(path / "last.pt", map_location="cpu", weights_only=True)["model"].values())


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_released_dp_model_cannot_be_replayed_from_its_config(tmp_path: Path) -> None:
    """The finding of issue 9: re-running a released model's config (seed included, it is in results.json) with
    and without a target record matched the model bit for bit. With fresh noise and batches every run differs;
    only reproducible_noise replays, and then the results say the run is not private against the config."""
    first = train_centralized(_cfg(), out_dir=tmp_path / "a")
    train_centralized(_cfg(), out_dir=tmp_path / "b")
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert first["privacy"]["randomness"]["private_against_config_holders"] is True
    replays = [train_centralized(_cfg(reproducible_noise=True), out_dir=tmp_path / f"r{i}") for i in range(2)]
    assert _same(_weights(tmp_path / "r0"), _weights(tmp_path / "r1"))
    assert replays[0]["privacy"]["randomness"]["warning"] == REPLAY_WARNING


@pytest.mark.parametrize("replay", [False, True])
def test_dp_sgd_resume_keeps_the_ledger_and_draws_new_noise(tmp_path: Path, replay: bool) -> None:
    full = train_centralized(_cfg(reproducible_noise=replay), out_dir=tmp_path / "full")
    seen: list[dict] = []

    def stop_after_first(record: dict, is_best: bool) -> None:
        seen.append(record)
        raise _InterruptedError

    with pytest.raises(_InterruptedError):
        train_centralized(
            _cfg(reproducible_noise=replay), out_dir=tmp_path / "part", callbacks=Callbacks(on_epoch=stop_after_first)
        )
    part = train_centralized(_cfg(reproducible_noise=replay), out_dir=tmp_path / "part", resume=True)
    assert part["history"][0]["train_loss"] == seen[0]["train_loss"]  # epoch 1 is the checkpoint's
    assert part["privacy"] == full["privacy"]  # the ledger continued: same steps, same epsilon
    # fresh noise: the resumed epoch (and the model) differ from the uninterrupted run; a replay repeats it
    assert _same(_weights(tmp_path / "part"), _weights(tmp_path / "full")) is replay


def test_dp_sgd_refuses_more_epochs_on_resume_and_client_level_dp(tmp_path: Path) -> None:
    train_centralized(_cfg(), out_dir=tmp_path)
    more = _cfg()
    more.train.epochs = 3
    with pytest.raises(ConfigError, match="not under DP"):
        train_centralized(more, out_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="no clients here"):
        train_centralized(_cfg(mode="client"), out_dir=tmp_path / "client")
    assert not (tmp_path / "client").exists()


def test_binary_results_report_the_test_metrics_at_the_validation_threshold(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from privmed.data import load_dataset
    from privmed.data.base import to_torch
    from privmed.models import build_model

    cfg = _cfg()
    cfg.privacy.mode = "none"
    result = train_centralized(cfg, out_dir=tmp_path)
    # recompute from the chosen checkpoint, by hand: threshold maximising validation balanced accuracy
    ds = load_dataset("phantom", classes=2, n_train=160, n_val=60, n_test=60)
    model = build_model("cnn", in_channels=ds.info.n_channels, num_classes=2, width=8)
    model.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True)["model"])
    model.eval()

    def probs(split) -> tuple[np.ndarray, np.ndarray]:
        x, y = to_torch(split, ds.info).tensors
        with torch.no_grad():
            return torch.softmax(model(x), 1)[:, 1].numpy(), y.numpy()

    pv, yv = probs(ds.val)
    thr = result["val"]["threshold"]
    bal = lambda p, y, t: np.mean([np.mean((p[y == c] >= t) == c) for c in (0, 1)])  # noqa: E731
    assert bal(pv, yv, thr) >= max(bal(pv, yv, t) for t in np.unique(pv)) - 1e-9
    pt, yt = probs(ds.test)
    assert result["test"]["vt_accuracy"] == pytest.approx(np.mean((pt >= thr) == yt), abs=1e-6)
    assert result["test"]["vt_balanced_accuracy"] == pytest.approx(bal(pt, yt, thr), abs=1e-6)
