"""Federated canary clients for client-level DP (Andrew et al., "One-shot Empirical Privacy Estimation for
Federated Learning", ICLR 2024).

A canary client's update is a fixed random unit direction cⱼ of the model's parameter space times the
clipping norm C: already clipped, it enters the aggregate like a real client's update (weight 1 under
``privacy.mode = "client"``, :class:`privmed.federation.audit.CanaryClients`). Each of k canary clients takes
part with probability ½ (the auditor's secret coins, OS entropy); the directions come from a public seed, as
the coordinates of gradient canaries do. After training, the auditor computes cos(Δ, cⱼ) for the final model
delta Δ = w_T − w_0: for canaries that took part it is shifted up, for the others it is ≈ N(0, 1/d). The
one-shot ε estimate fits a Gaussian to each group (:func:`~privmed.audit.bounds.one_shot.one_shot_estimate`);
the one-run test of Steinke, Nasr & Jagielski (NeurIPS 2023) on the same cosines and coins gives a lower
bound with stated confidence.

Threat model: the holder of the final model (black-box for the training trajectory; it needs only w_0 and
w_T) who knows the canaries' directions but not the coins; client-level DP must hide each canary client like
any client.

Noise check (:func:`noise_check`), by the argument of :mod:`privmed.audit.bounds.noise_check`: every round
the mechanism releases the average of the m' clipped replies plus z_t ~ N(0, s_t² I), s_t = σ·C/m' (before
any server step: FedAvgM's learning rate and momentum only post-process it). Let Q be an orthonormal basis
of the left-out canaries' directions (public directions, orthonormalised through the Cholesky factor of their
Gram matrix: Qᵀy = L⁻¹Aᵀy for A = [cⱼ], AᵀA = LLᵀ). Then Qᵀ(release_t − w_t) = Qᵀz_t + Qᵀ(the clipped
average), where Qᵀz_t ~ N(0, s_t² I) with independent coordinates, and the shift (the real clients' updates
and the included canaries, functions of the data, the coins and the earlier noise) is independent of z_t.
Anderson's inequality makes χ² on these k₋·T projections in units of s_t an upper confidence bound on the
ratio of the noise actually added to the noise claimed. The auditor reads what a white-box server holds
(the release it computes under central noise), and only the public directions besides the coins.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privmed.audit.bounds.noise_check import NoiseCheck

PUBLIC_FILE = "canary-clients-public.npz"
SECRET_FILE = "canary-clients-secret.npz"
DELTA_FILE = "canary-clients-delta.npz"
ROUNDS_FILE = "canary-clients-rounds.npz"
#: rows of directions generated at once (memory: CHUNK × d float64)
CHUNK = 64


@dataclass(frozen=True)
class CanaryClients:
    """k canary clients: the public seed of their directions, and the secret coins (``None`` on the server)."""

    k: int
    direction_seed: int
    included: np.ndarray | None = None

    def directions(self, dim: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Unit directions cⱼ in ``dim`` dimensions (rows ``rows``, default all), from the public seed."""
        out = []
        for j in np.arange(self.k) if rows is None else rows:
            v = np.random.default_rng([self.direction_seed, int(j)]).standard_normal(dim)
            out.append(v / np.linalg.norm(v))
        return np.array(out).reshape(-1, dim)


def draw_canary_clients(k: int, *, rng: np.random.Generator | None = None) -> CanaryClients:
    """k canary clients with fresh coins (OS entropy unless ``rng``, tests only)."""
    source = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    return CanaryClients(k=k, direction_seed=int(source.integers(0, 2**63 - 1)), included=source.random(k) < 0.5)


def save_canary_clients(canaries: CanaryClients, work_dir: str | Path) -> None:
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / PUBLIC_FILE, k=np.array([canaries.k]), direction_seed=np.array([canaries.direction_seed]))
    assert canaries.included is not None
    np.savez(folder / SECRET_FILE, included=canaries.included)


def load_canary_clients(work_dir: str | Path, *, secret: bool) -> CanaryClients:
    folder = Path(work_dir)
    with np.load(folder / PUBLIC_FILE) as pub:
        k, seed = int(pub["k"][0]), int(pub["direction_seed"][0])
    if not secret:
        return CanaryClients(k=k, direction_seed=seed)
    with np.load(folder / SECRET_FILE) as sec:
        return CanaryClients(k=k, direction_seed=seed, included=sec["included"].astype(bool))


def save_delta(delta: np.ndarray, work_dir: str | Path) -> None:
    """Keep the model delta w_t − w_0 of the latest round (what the final model's holder can compute)."""
    tmp = Path(work_dir) / f".{DELTA_FILE}"
    with tmp.open("wb") as fh:
        np.savez(fh, delta=delta)
    tmp.replace(Path(work_dir) / DELTA_FILE)


def load_delta(work_dir: str | Path) -> np.ndarray:
    with np.load(Path(work_dir) / DELTA_FILE) as f:
        return f["delta"]


def canary_cosines(delta: np.ndarray, canaries: CanaryClients) -> np.ndarray:
    """cos(Δ, cⱼ) of every canary client (directions generated in chunks)."""
    d = np.asarray(delta, dtype=np.float64).ravel()
    norm = max(float(np.linalg.norm(d)), 1e-300)
    out = np.empty(canaries.k)
    for start in range(0, canaries.k, CHUNK):
        rows = np.arange(start, min(start + CHUNK, canaries.k))
        out[rows] = canaries.directions(d.size, rows) @ d / norm
    return out


def audit_canary_clients(
    work_dir: str | Path, *, delta: float, beta: float
) -> tuple[dict, dict, tuple[np.ndarray, np.ndarray]]:
    """The one-shot estimate and the one-run lower bound from the canary clients of a finished run.

    Returns ``(estimate, bound, (cosines, coins))``: the first two as dicts for the results JSON (the bound
    at confidence 1 − ``beta``), the last for the report's histogram (the coins never go in the JSON).
    """
    from privmed.audit.bounds import one_shot_estimate

    canaries = load_canary_clients(work_dir, secret=True)
    assert canaries.included is not None
    cos = canary_cosines(load_delta(work_dir), canaries)
    est = one_shot_estimate(cos, canaries.included, delta=delta, beta=beta)
    statistic = {"statistic": "cosine of the final model delta with each canary client's direction", "k": canaries.k}
    return est.to_dict() | statistic, est.lower_bound.to_dict() | statistic, (cos, canaries.included)


def project(vector: np.ndarray, canaries: CanaryClients) -> np.ndarray:
    """⟨v, cⱼ⟩ for every canary direction cⱼ (generated in chunks)."""
    v = np.asarray(vector, dtype=np.float64).ravel()
    out = np.empty(canaries.k)
    for start in range(0, canaries.k, CHUNK):
        rows = np.arange(start, min(start + CHUNK, canaries.k))
        out[rows] = canaries.directions(v.size, rows) @ v
    return out


def save_round(server_round: int, projections: np.ndarray, *, std: float, work_dir: str | Path) -> None:
    """Add (or replace, on a resumed run) one round's projections and claimed noise std to the rounds file."""
    rounds, proj, stds = load_rounds(work_dir)
    keep = rounds != server_round
    rounds = np.append(rounds[keep], server_round)
    proj = np.vstack([proj[keep].reshape(-1, projections.size), projections[None, :]])
    stds = np.append(stds[keep], std)
    order = np.argsort(rounds)
    tmp = Path(work_dir) / f".{ROUNDS_FILE}"
    with tmp.open("wb") as fh:
        np.savez(fh, rounds=rounds[order], projections=proj[order], std=stds[order])
    tmp.replace(Path(work_dir) / ROUNDS_FILE)


def load_rounds(work_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rounds, projections (rounds × k), claimed std per round)``; empty arrays before the first round."""
    path = Path(work_dir) / ROUNDS_FILE
    if not path.exists():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), np.zeros(0)
    with np.load(path) as f:
        return f["rounds"], f["projections"], f["std"]


def gram(canaries: CanaryClients, dim: int, rows: np.ndarray) -> np.ndarray:
    """Gram matrix ⟨cᵢ, cⱼ⟩ of the directions ``rows`` (chunk by chunk: memory CHUNK × ``dim`` × 2)."""
    blocks = [rows[s : s + CHUNK] for s in range(0, rows.size, CHUNK)]
    out = np.empty((rows.size, rows.size))
    for a, block_a in enumerate(blocks):
        da = canaries.directions(dim, block_a)
        for b in range(a + 1):
            db = da if a == b else canaries.directions(dim, blocks[b])
            g = da @ db.T
            out[a * CHUNK : a * CHUNK + block_a.size, b * CHUNK : b * CHUNK + blocks[b].size] = g
            out[b * CHUNK : b * CHUNK + blocks[b].size, a * CHUNK : a * CHUNK + block_a.size] = g.T
    return out


def orthonormal_coordinates(projections: np.ndarray, gram_matrix: np.ndarray) -> np.ndarray:
    """Coordinates Qᵀy in an orthonormal basis Q of span(A) from the raw projections Aᵀy (rows: rounds)."""
    from scipy.linalg import cholesky, solve_triangular

    lower = cholesky(gram_matrix, lower=True)
    return solve_triangular(lower, np.atleast_2d(projections).T, lower=True).T


def noise_check(work_dir: str | Path, *, beta: float) -> tuple[NoiseCheck, int]:
    """The noise check on the left-out canary clients' directions (module docstring); also returns the rounds.

    Raises
    ------
    PrivacyError
        When no round was recorded (the run's strategy chain had no client-level DP wrapper).
    """
    from privmed.audit.bounds import noise_ratio_upper_bound
    from privmed.errors import PrivacyError

    canaries = load_canary_clients(work_dir, secret=True)
    assert canaries.included is not None
    rounds, proj, std = load_rounds(work_dir)
    if rounds.size == 0:
        raise PrivacyError("canary clients: no round's release was recorded; nothing to check the noise with")
    out = np.flatnonzero(~canaries.included)
    coords = orthonormal_coordinates(proj[:, out], gram(canaries, load_delta(work_dir).size, out))
    return noise_ratio_upper_bound(coords, std[:, None], beta=beta), int(rounds.size)
