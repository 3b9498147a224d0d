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
