"""Input-space example canaries: fictitious labelled images, scored from the final model only (black-box).

Steinke, Nasr & Jagielski ("Privacy Auditing with One (1) Training Run", NeurIPS 2023, §6: the black-box
setting) and Nasr et al. ("Tight Auditing of Differentially Private Machine Learning", USENIX Security 2023,
input-space canaries) audit DP-SGD with canaries that are ordinary training examples: the auditor makes m
labelled inputs, each is **included with probability ½** (a secret coin), the included ones join the
training set, and the auditor guesses membership from the final model alone. Here a canary is an image of
uniformly random pixels in the dataset's shape and value range (uint8, MedMNIST layout) with a uniformly
random label: nothing of it comes from private data, and as an example the model would never fit without
seeing it, its loss moves only if it was trained on (Jagielski et al., "Auditing Differentially Private
Machine Learning: How Private is Private SGD?", NeurIPS 2020, use such "unlikely" inputs too).

Canary j is held by client ``j mod n``. An included canary is appended to its holder's training set *inside
the DP training wrapper* (:func:`privmed.federation.audit.audited`): DP-SGD Poisson-samples and clips it like
every real example, so the formal ε covers it. The holder's expected batch stays ``q · n_i`` of its public
partition size (the server's q = B / N), so the aggregate is exactly the federation's DP-SGD step with one
more example per included canary, and nothing the server sees (reply weights, metrics) depends on the coins.

Secrecy: the images, labels and holders are public (``example-canaries-public.npz``: the model holder knows
the canaries, as in the papers); the coins come from OS entropy (:mod:`secrets`) into
``example-canaries-secret.npz`` beside the gradient canaries' secret file, read only by the auditor and the
holders' training wrapper; never derived from the config, never sent or logged.

Score (higher = more likely included): the canary's loss under the initial model minus its loss under the
final model, centred per label (the mean over the canaries of the same label is subtracted: the training's
common drift on noise images moves every canary of a label alike, and that mean is a function of the model,
not of any coin, so the bound stays valid). Threat model: anyone who receives the trained model (another
hospital, a model hub) and knows the canaries and w_0 (public: seeded by ``train.seed``), but not the coins
nor anything of the training run in between.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from privmed.data import DatasetInfo, Split
from privmed.errors import ConfigError

log = logging.getLogger(__name__)

PUBLIC_FILE = "example-canaries-public.npz"
SECRET_FILE = "example-canaries-secret.npz"
#: What the black-box rows assume about the adversary (the report's bounds table shows it).
THREAT = "final model only: anyone who receives the trained model (and w_0), not the server's per-round view"


@dataclass(frozen=True)
class ExampleCanaries:
    """m example canaries: images, labels and holders (public), coins (secret, ``None`` in the public view)."""

    images: np.ndarray
    labels: np.ndarray
    holder: np.ndarray
    included: np.ndarray | None = None

    @property
    def m(self) -> int:
        return int(self.images.shape[0])

    def split(self, indices: np.ndarray) -> Split:
        """The canaries at ``indices`` as a training split."""
        return Split(self.images[indices].copy(), self.labels[indices].copy())

    def included_at(self, partition_id: int) -> np.ndarray:
        """Indices of the included canaries this client holds (needs the coins)."""
        assert self.included is not None, "the coins are in the secret file only"
        return np.flatnonzero((self.holder == partition_id) & self.included)


def draw_example_canaries(
    like: Split, info: DatasetInfo, *, m: int, num_clients: int, rng: np.random.Generator | None = None
) -> ExampleCanaries:
    """m random-pixel images with random labels, holders round-robin, fresh coins (OS entropy unless ``rng``).

    ``like`` gives only the layout (shape of one image, dtypes): no pixel or label of it is used.

    Raises
    ------
    ConfigError
        When the data are not images (a random table row has no fixed "range" to draw from), m < 2, or m
        exceeds half the training examples (the canaries would swamp the real data).
    """
    if info.modality != "image":
        raise ConfigError(
            f"audit.example_canaries = {m}: example canaries are random images; {info.name} holds "
            f"{info.modality} data; set audit.example_canaries = 0"
        )
    if m < 2 or m > len(like) // 2:
        raise ConfigError(
            f"audit.example_canaries = {m}: choose 2..{len(like) // 2} (at most half the {len(like)} training "
            "examples), or 0 to switch them off"
        )
    source = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    images = source.integers(0, 256, size=(m, *like.images.shape[1:])).astype(like.images.dtype)
    if info.multilabel:
        labels = (source.random((m, info.n_labels)) < 0.5).astype(like.labels.dtype)
    else:
        labels = source.integers(0, info.n_labels, size=(m, 1)).astype(like.labels.dtype)
    return ExampleCanaries(
        images=images,
        labels=labels,
        holder=(np.arange(m) % num_clients).astype(np.int64),
        included=source.random(m) < 0.5,
    )


def save_example_canaries(canaries: ExampleCanaries, work_dir: str | Path) -> None:
    """Write the public half (images, labels, holders) and the secret half (coins) to ``work_dir``."""
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / PUBLIC_FILE, images=canaries.images, labels=canaries.labels, holder=canaries.holder)
    assert canaries.included is not None
    np.savez(folder / SECRET_FILE, included=canaries.included)


def has_example_canaries(work_dir: str | Path) -> bool:
    return (Path(work_dir) / PUBLIC_FILE).is_file()


def load_example_canaries(work_dir: str | Path, *, secret: bool) -> ExampleCanaries:
    """The canaries of ``work_dir``; the coins only when ``secret`` (the auditor, a holder's training)."""
    folder = Path(work_dir)
    with np.load(folder / PUBLIC_FILE) as pub:
        public = ExampleCanaries(images=pub["images"], labels=pub["labels"], holder=pub["holder"])
    if not secret:
        return public
    with np.load(folder / SECRET_FILE) as sec:
        return ExampleCanaries(public.images, public.labels, public.holder, included=sec["included"].astype(bool))


def with_canaries(split: Split, canaries: ExampleCanaries, partition_id: int) -> Split:
    """``split`` followed by the included canaries that ``partition_id`` holds (``split`` itself if none)."""
    mine = canaries.included_at(partition_id)
    if mine.size == 0:
        return split
    extra = canaries.split(mine)
    return Split(np.concatenate([split.images, extra.images]), np.concatenate([split.labels, extra.labels]))


# -- scores from the final model ---------------------------------------------------------------------
def per_example_losses(model: torch.nn.Module, canaries: ExampleCanaries, info: DatasetInfo) -> np.ndarray:
    """The training loss of every canary under ``model`` (summed over labels for multi-label tasks)."""
    from privmed.data import to_torch
    from privmed.train import make_loss

    data = to_torch(canaries.split(np.arange(canaries.m)), info)
    loss_fn = make_loss(info)
    loss_fn.reduction = "none"
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, canaries.m, 512):
            x, y = data.tensors[0][start : start + 512], data.tensors[1][start : start + 512]
            loss = loss_fn(model(x), y)
            out.append(loss.reshape(loss.shape[0], -1).sum(dim=1).double().numpy())
    return np.concatenate(out)


def loss_scores(initial_losses: np.ndarray, final_losses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Loss decrease (initial − final) of each canary, minus the mean decrease of the canaries of its label.

    The label key is the label row (a class index, or a multi-label pattern); the centring uses the model's
    outputs on public canaries only, never the coins.
    """
    drop = np.asarray(initial_losses, dtype=np.float64) - np.asarray(final_losses, dtype=np.float64)
    keys = np.unique(labels.reshape(labels.shape[0], -1), axis=0, return_inverse=True)[1].reshape(-1)
    means = np.bincount(keys, weights=drop) / np.bincount(keys)
    return drop - means[keys]


def dirac_final_scores(
    delta_at_canaries: np.ndarray, round_signs: Sequence[np.ndarray], round_weights: Sequence[float], *, clip: float
) -> np.ndarray:
    """Final-weights score of the Dirac canaries: −(w_T − w_0)[coordinate] · b_j / C.

    ``b_j = Σ_t a_t · sign_{t,j}`` is the canary's net direction in the final model: its sign in round t
    (:meth:`privmed.audit.canaries.CanarySet.signs_at`) times the weight ``a_t`` round t's step keeps in w_T
    (1 for FedAvg; Σ_{k ≤ T−t} β^k under server momentum β). A canary pushes its coordinate by −sign·C per
    step (gradient descent), hence the minus. With the antithetic sign flips of the white-box audit b_j nearly
    cancels (exactly under plain FedAvg with an even number of rounds): the final model then hardly carries
    the canaries, which is why this score is much weaker than the per-round view.
    """
    b = sum(a * np.asarray(s, dtype=np.float64) for a, s in zip(round_weights, round_signs, strict=True))
    norm = float(np.max(np.abs(b))) if np.size(b) else 0.0
    return -np.asarray(delta_at_canaries, dtype=np.float64) * np.asarray(b) / (clip * (norm or 1.0))


def auc(scores: np.ndarray, included: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating included from left-out canaries (ties count ½)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_in, n_out = int(included.sum()), int((~included).sum())
    if n_in == 0 or n_out == 0:
        return float("nan")
    return float((ranks[included].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))
