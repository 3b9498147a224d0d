"""Shared fixtures: a private Flower home, the real-data folder, small phantom datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Flower must never phone home, check for updates or install packages during tests.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
# spinning OpenMP waits collapse throughput when test processes share the 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REAL_FILES = {"pneumoniamnist": "pneumoniamnist.npz", "breastmnist": "breastmnist.npz"}


@pytest.fixture(autouse=True)
def _private_flwr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.getbasetemp() / "flwr-home"))


def real_data_dir(name: str) -> Path:
    """The folder holding the official ``<name>.npz``, or skip the test saying why."""
    root = os.environ.get("PRIVMED_DATA_DIR")
    if not root:
        pytest.skip(f"PRIVMED_DATA_DIR is not set; put the official {REAL_FILES[name]} there to run this test")
    path = Path(root) / REAL_FILES[name]
    if not path.is_file():
        pytest.skip(f"{path} is absent; download the official MedMNIST file to run this test")
    return Path(root)


@pytest.fixture(scope="session")
def phantom():
    from privmed.data.phantom import make_phantom

    return make_phantom(classes=2, n_train=240, n_val=60, n_test=80, seed=0)


@pytest.fixture(scope="session")
def phantom_rgb4():
    from privmed.data.phantom import make_phantom

    return make_phantom(classes=4, channels=3, n_train=200, n_val=40, n_test=40, seed=1)
