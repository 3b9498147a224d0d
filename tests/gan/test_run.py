"""HF-GAN's checks before Ray starts: a class missing from some clients is reported per client, not refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from privmed.errors import ConfigError, DataError
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import discriminator_config
from privmed.gan.run import check_hfgan


def test_class_absent_from_a_client_is_reported_per_client(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    overrides = ["data.partition_options={ alpha = 0.01 }", "data.min_examples=1", "gan.min_client_images=0"]
    cfg, gan = load_gan_config("gan-smoke", overrides=overrides)
    caplog.set_level(logging.WARNING)
    checks = check_hfgan(discriminator_config(cfg, gan), gan, tmp_path / "out")
    counts = np.array(checks["label_histogram"])
    lacking = [pid for pid, row in enumerate(counts) if (row == 0).any()]
    assert lacking and sorted(int(p) for p in checks["classes_absent"]) == lacking
    for pid in lacking:
        assert any(f"client {pid} holds no image of class" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out").exists()  # a check writes nothing


def test_client_smaller_than_its_batch_share_is_refused(tmp_path: Path) -> None:
    cfg, gan = load_gan_config("gan-smoke", overrides=["gan.min_client_images=1000"])
    with pytest.raises(DataError, match=r"fewer than one batch.*gan\.min_client_images = 0"):
        check_hfgan(discriminator_config(cfg, gan), gan, tmp_path / "out")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gan.aux_weight=-1.0", r"gan\.aux_weight must be >= 0"),
        ("gan.tstr_epochs=0", r"gan\.tstr_epochs must be >= 1"),
        ("gan.tstr_seeds=0", r"gan\.tstr_seeds must be >= 1"),
    ],
)
def test_negative_aux_weight_and_no_tstr_epochs_or_seeds_are_refused(
    tmp_path: Path, override: str, message: str
) -> None:
    cfg, gan = load_gan_config("gan-smoke", overrides=[override])
    with pytest.raises(ConfigError, match=message):
        check_hfgan(discriminator_config(cfg, gan), gan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
