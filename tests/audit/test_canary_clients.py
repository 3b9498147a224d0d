"""Federated canary clients (Andrew et al. 2024): public directions, secret coins, cosines of the final delta."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from privmed.audit import canary_clients as cc


def test_directions_are_public_unit_vectors_and_coins_stay_secret(tmp_path: Path) -> None:
    canaries = cc.draw_canary_clients(100, rng=np.random.default_rng(0))
    cc.save_canary_clients(canaries, tmp_path)
    public = cc.load_canary_clients(tmp_path, secret=False)
    assert public.included is None and "included" not in np.load(tmp_path / cc.PUBLIC_FILE).files
    d = public.directions(500, np.array([3, 70]))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    np.testing.assert_array_equal(d, canaries.directions(500)[[3, 70]])  # same directions from the seed
    secret = cc.load_canary_clients(tmp_path, secret=True)
    assert np.array_equal(secret.included, canaries.included) and 25 < secret.included.sum() < 75


def test_cosines_single_out_the_canaries_that_took_part() -> None:
    rng = np.random.default_rng(1)
    canaries = cc.draw_canary_clients(200, rng=rng)
    dim = 5000
    delta = rng.normal(0, 0.05, dim) + canaries.directions(dim)[canaries.included].sum(axis=0)
    cos = cc.canary_cosines(delta, canaries)
    assert cos[canaries.included].min() > cos[~canaries.included].max()
    assert abs(np.mean(cos[~canaries.included])) < 3 / np.sqrt(dim)


def test_orthonormal_coordinates_of_noise_are_independent_with_the_noise_std() -> None:
    """In few dimensions the raw directions are far from orthogonal; their orthonormalised coordinates are
    not: pure noise N(0, s² I) gives coordinates with covariance s² I."""
    rng = np.random.default_rng(2)
    canaries = cc.draw_canary_clients(20, rng=rng)
    rows, dim, s = np.arange(20), 40, 0.3
    a = canaries.directions(dim, rows)
    assert np.abs(a @ a.T - np.eye(20)).max() > 0.3  # strongly correlated raw projections
    z = rng.normal(0, s, (20_000, dim))
    coords = cc.orthonormal_coordinates(z @ a.T, cc.gram(canaries, dim, rows))
    np.testing.assert_allclose(np.cov(coords.T) / s**2, np.eye(20), atol=0.06)


def _planted_rounds(tmp_path: Path, *, factor: float, rounds: int = 4, dim: int = 3000) -> None:
    """A client-level run's records, simulated: each round the release minus the model sent is the average of
    3 real clipped updates (C = 1) and C·cⱼ for every included canary, plus the noise z ~ N(0, (factor·s)²),
    s = σC/m' the claimed std (σ = 2)."""
    rng = np.random.default_rng(3)
    canaries = cc.draw_canary_clients(80, rng=rng)
    cc.save_canary_clients(canaries, tmp_path)
    cc.save_delta(np.zeros(dim), tmp_path)
    m = 3 + int(canaries.included.sum())
    std = 2.0 * 1.0 / m
    planted = canaries.directions(dim)[canaries.included].sum(axis=0) / m
    for t in range(1, rounds + 1):
        real = rng.normal(0, 1, (3, dim))
        real = (real / np.linalg.norm(real, axis=1, keepdims=True)).sum(axis=0) / m
        release = real + planted + rng.normal(0, factor * std, dim)
        cc.save_round(t, cc.project(release, canaries), std=std, work_dir=tmp_path)


def test_noise_check_passes_the_claimed_noise_and_catches_a_tenth(tmp_path: Path) -> None:
    _planted_rounds(tmp_path / "ok", factor=1.0)
    check, rounds = cc.noise_check(tmp_path / "ok", beta=1e-6)
    assert rounds == 4 and check.ratio_ub >= 1.0 and check.n == 4 * int((~np.load(
        tmp_path / "ok" / cc.SECRET_FILE)["included"]).sum())  # fmt: skip
    _planted_rounds(tmp_path / "tenth", factor=0.1)
    broken, _ = cc.noise_check(tmp_path / "tenth", beta=1e-6)
    assert broken.ratio_ub < 0.5 and broken.p_value < 1e-12


def test_a_resumed_round_replaces_its_record(tmp_path: Path) -> None:
    for t, value in ((1, 1.0), (2, 2.0), (2, 3.0)):
        cc.save_round(t, np.full(5, value), std=0.1 * t, work_dir=tmp_path)
    rounds, proj, std = cc.load_rounds(tmp_path)
    assert rounds.tolist() == [1, 2] and proj[:, 0].tolist() == [1.0, 3.0] and std.tolist() == [0.1, 0.2]


SMALL_CLIENT_DP = [
    "--set", "data.options={ classes = 2, channels = 1, n_train = 600, n_val = 100, n_test = 100 }",
    "--set", "data.num_clients=3",
    "--set", 'privacy.mode="client"',
    "--set", 'privacy.client_noise="central"',
    "--set", "secagg.enabled=false",
    "--set", "federation.rounds=3",
    "--set", "audit.canary_clients=200",
    "--set", "audit.canaries=50",
    "--set", "audit.beta=1e-6",  # a correct run must pass: see test_audit_e2e.SMALL
    "--set", "audit.attacks=''",  # the quickstart's attack stages are tested elsewhere
]  # fmt: skip


@pytest.mark.slow
def test_canary_clients_on_a_real_client_level_dp_run(tmp_path: Path) -> None:
    """A real Flower run with client-level DP (central noise): the canary clients enter the noised average
    (their cosines stand out: the one-shot estimate is well above 0) and the lower bound stays below the claim."""
    from privmed.cli import main

    out = tmp_path / "run"
    code = main(["audit", "--quickstart", *SMALL_CLIENT_DP, "--set", "privacy.epsilon=8.0", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["stages"]["canary-clients"]["status"] == "done"
    assert results["stages"]["white-box"]["status"] == "skipped"
    assert "included" not in json.dumps(results["bounds"])
    assert code == 0 and results["bounds"]["canary clients"]["epsilon_lb"] <= results["formal_epsilon"]
    assert results["estimates"]["canary clients"]["epsilon_estimate"] > 1.0
    check = results["bounds"]["canary clients, noise check"]
    assert check["ratio_ub"] >= 1.0 and check["epsilon_lb"] == 0.0 and check["n"] >= 3 * 50


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["off", "tenth"])
def test_broken_client_level_noise_is_caught(tmp_path: Path, mode: str) -> None:
    """audit.break_noise in client-level DP: the noise check on the canary clients' directions catches it."""
    from privmed.cli import main

    out = tmp_path / mode
    args = ["--set", "privacy.epsilon=8.0", "--set", "federation.rounds=2", "--set", f'audit.break_noise="{mode}"']
    code = main(["audit", "--quickstart", *SMALL_CLIENT_DP, *args, "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert code == 3
    assert "canary clients, noise check" in results["verdict"]["violations"]
    assert results["bounds"]["canary clients, noise check"]["ratio_ub"] < 0.5  # the real updates shift it above 0
