"""The ``[gan]`` table of an HF-GAN config, beside privmed's usual tables.

An HF-GAN config is a privmed config (``[data]``, ``[model]`` for the classifier, ``[train]``,
``[federation]``, ``[privacy]``, ``[secagg]``) plus one ``[gan]`` table, read here so that the federated
classifier's config (and the Flower app config that mirrors it) stays as it is. ``[privacy]`` decides how D's
gradient on real images is protected (:data:`privmed.gan.hfgan.D_GRADIENT_WRAPPERS`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import Any

from privmed.config import Config, _coerce, apply_overrides, from_dict, resolve_path
from privmed.errors import ConfigError


@dataclass
class GanConfig:
    """HF-GAN settings (defaults: the paper's Adam 2e-4, β1 0.5, batch 64, C = 1.0 in ``[privacy]``)."""

    #: GAN rounds; every round is one server step of D (one aggregated, noised gradient)
    rounds: int = 200
    #: D:G step ratio (Bie et al., "Private GANs, revisited", TMLR 2023: many D steps per G step): the clients
    #: train G_i in every ``d_steps_per_g_step``-th round only
    d_steps_per_g_step: int = 5
    #: local G steps each time G_i trains
    g_steps: int = 1
    #: expected real images of one D step over the whole federation (Poisson q = batch_size / N)
    batch_size: int = 64
    #: a client needs at least this many real images (-1: its share of one batch, ceil(batch_size / num_clients));
    #: 0 lets any client take part (under the common Poisson rate a small client simply adds fewer real images to
    #: each D step; the DP guarantee is unaffected)
    min_client_images: int = -1
    #: images of G_i per client in one D step (their gradients are averaged with the real term's weights, so the
    #: federation's D step sees about ``num_clients * fake_batch`` fakes; Bie et al. 2023 pair every real image
    #: with one fake, i.e. ``fake_batch`` ≈ ``batch_size / num_clients``)
    fake_batch: int = 64
    #: images of G_i in one G step
    g_batch: int = 64
    latent_dim: int = 64
    g_width: int = 32
    d_width: int = 32
    #: G's normalisation (:data:`privmed.models.dcgan.G_NORMS`): "batch" (DCGAN's BatchNorm; G is never private)
    #: or "group" (the first version's; with it G collapsed to about one image per class, hfgan_tstr.md)
    g_norm: str = "batch"
    #: D's head (:data:`privmed.models.dcgan.D_HEADS`): "flatten" (every position of D's last feature map, class
    #: embedding starting at 0) or "mean" (the first version's spatial mean)
    d_head: str = "flatten"
    #: decay of the exponential moving average of G_i's weights that each client keeps and releases (evaluation,
    #: augmentation; Yazıcı et al., ICLR 2019): post-processing on the client, no privacy cost; 0: G_i itself
    g_ema: float = 0.99
    #: weight of the auxiliary-classifier loss (Odena et al., ICML 2017): D also learns the class of every real
    #: image (inside the clipped, noised real-image gradient) and G also minimises D's class loss on its images,
    #: so G_i is pushed to draw its label; 0: a plain projection D (Miyato & Koyama, ICLR 2018)
    aux_weight: float = 0.0
    #: DiffAugment policy (:mod:`privmed.gan.diffaugment`, Zhao et al., NeurIPS 2020): comma-separated names of
    #: differentiable transformations applied to every image D sees, real and G_i's, in D's and G_i's steps
    #: ("color,translation,cutout" is the paper's for small sets); "" is none. Per-example preprocessing of a real
    #: image before its gradient is clipped: D's DP guarantee is unchanged
    diffaugment: str = ""
    lr_d: float = 2e-4
    lr_g: float = 2e-4
    beta1: float = 0.5
    #: refuse a calibrated noise multiplier above this (the ε is too small to train D)
    max_noise_multiplier: float = 20.0
    #: synthetic images each client adds per real image to its training set (0: no augmentation)
    augment_ratio: float = 1.0
    #: draw the synthetic labels so that real + synthetic is class-balanced on each client (against label skew)
    class_balance: bool = True
    #: what an augmented client trains on (:data:`privmed.gan.augment.AUGMENT_MODES`): "add" (its real images plus
    #: images of G_i) or "synthetic-only" (images of G_i alone at uniform labels, class_balance = false: the
    #: phase 1 of a synthetic warm start, whose updates may leave the client un-noised at no cost beyond ε_D)
    augment_mode: str = "add"
    #: "synthetic-only": images of G_i per client whatever the client's size (0: ``round(augment_ratio · n)``).
    #: Equal counts give every client the same FedAvg weight and the same local steps, so phase 1 approaches
    #: training on the pool of all G_i: one G_i alone teaches far less than the pool
    #: (bench/results/hfgan-same-epsilon-pool.md). A public constant, like the ratio.
    synthetic_per_client: int = 0
    #: synthetic images per class for FID / IS / TSTR and the sample grids (TSTR wants at least as many images
    #: as the real training split holds: 2,000+ per class for PneumoniaMNIST's 4,708)
    eval_samples: int = 2500
    #: every this many rounds each client also keeps a copy of G_i (0: none), for FID per round in the curves
    snapshot_every: int = 0
    #: epochs of the domain classifier (FID / IS features, label agreement)
    eval_epochs: int = 5
    #: most epochs of the TSTR and TRTR classifiers (each kept at its best epoch on a held-out tenth of its own
    #: training images: Bie et al., TMLR 2023)
    tstr_epochs: int = 10
    #: classifier seeds of TSTR and TRTR (train.seed, train.seed + 1, ...): the ratio is of their means, since one
    #: seed's accuracy moves by several points (hfgan_tstr.md)
    tstr_seeds: int = 1
    #: the client-side store of the generators ("" = ``<out>/client-store``); in a deployment each client's
    #: own disk: the server never reads it
    store: str = ""
    #: also train the federated classifier with the synthetic images (privmed gan CONFIG --classifier)
    classifier: bool = False
    #: start that classifier from this run's D (``model.init_from = <out>/discriminator.pt``: by name, D's trunk and
    #: its class projection as the head); needs ``model.name = "dcgan-d"`` at ``gan.d_width``. D's weights are DP
    #: outputs (ε_D), so this adds no privacy cost (bench/results/hfgan-dclf.md)
    classifier_from_d: bool = False


def split_gan_table(raw: dict[str, Any], *, source: str) -> tuple[dict[str, Any], GanConfig]:
    """Take ``[gan]`` out of a parsed TOML document; refuse unknown keys and wrong types."""
    table = raw.pop("gan", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[gan] must be a table in {source}")
    gan = GanConfig()
    valid = {f.name for f in dataclasses.fields(gan)}
    for key, value in table.items():
        if key not in valid:
            raise ConfigError(f"unknown key {key!r} in [gan] of {source}; valid keys: {', '.join(sorted(valid))}")
        setattr(gan, key, _coerce("gan", key, value, getattr(gan, key)))
    check_names(gan, source=source)
    return raw, gan


def check_names(gan: GanConfig, *, source: str) -> None:
    """Refuse a ``g_norm`` / ``d_head`` / ``augment_mode`` / ``diffaugment`` that names no registered choice (one
    message naming the valid ones), and a BatchNorm G asked to train on batches of one image (its batch statistics
    need two or more)."""
    from privmed.gan.augment import AUGMENT_MODES
    from privmed.gan.diffaugment import parse_policy
    from privmed.models.dcgan import D_HEADS, G_NORMS

    for key, choices in (("g_norm", G_NORMS), ("d_head", D_HEADS), ("augment_mode", AUGMENT_MODES)):
        value = getattr(gan, key)
        if value not in choices:
            raise ConfigError(
                f"[gan] {key} = {value!r} in {source} is not known; choose one of {', '.join(sorted(choices))}"
            )
    check_augment_mode(gan, source=source)
    try:
        parse_policy(gan.diffaugment)
    except ValueError as exc:
        raise ConfigError(f"[gan] diffaugment = {gan.diffaugment!r} in {source}: {exc}") from None
    if gan.g_norm == "batch" and min(gan.g_batch, gan.fake_batch) < 2:
        raise ConfigError(
            f"[gan] g_norm = 'batch' in {source} needs g_batch and fake_batch >= 2 (got {gan.g_batch}, "
            f"{gan.fake_batch}): BatchNorm normalises over the batch; raise them or set g_norm = 'group'"
        )


def check_augment_mode(gan: GanConfig, *, source: str) -> None:
    """Refuse ``class_balance`` with ``augment_mode = "synthetic-only"``, and ``synthetic_per_client`` below 0 or
    outside that mode (why: in the messages)."""
    if gan.synthetic_per_client < 0 or (gan.synthetic_per_client and gan.augment_mode != "synthetic-only"):
        raise ConfigError(
            f"[gan] synthetic_per_client = {gan.synthetic_per_client} in {source}: it must be 0 or a positive count, "
            "and it applies to augment_mode = 'synthetic-only' only (in 'add' mode the count follows each client's "
            "size, augment_ratio · n, to keep its real-to-synthetic ratio); set it to 0 or change augment_mode"
        )
    if gan.augment_mode == "synthetic-only" and gan.class_balance:
        raise ConfigError(
            f"[gan] augment_mode = 'synthetic-only' in {source} draws uniform labels, and class_balance would draw "
            "them from the client's label histogram, which its un-noised updates would then reveal; set "
            "gan.class_balance = false"
        )


def load_gan_config(name_or_path: str, *, overrides: list[str] | None = None) -> tuple[Config, GanConfig]:
    """Load an HF-GAN config (file or preset) with ``section.key=value`` overrides, ``gan.*`` included."""
    path = resolve_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the line it names") from None
    apply_overrides(raw, overrides or [], example="gan.rounds=50")
    raw, gan = split_gan_table(raw, source=str(path))
    return from_dict(raw, source=str(path)), gan
