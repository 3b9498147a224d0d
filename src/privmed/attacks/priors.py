"""Where a generative-prior attack's generator comes from: a DCGAN trained on public images, or a leaked G_i.

The generative-prior attack (:mod:`privmed.attacks.prior`) searches images on the range of a conditional
generator ``G(z, y)`` (:class:`privmed.models.dcgan.Generator`). Its ``prior`` setting names a file (recognised
by its contents, :data:`PRIOR_SOURCES`) or a folder (a ``privmed gan`` run):

- ``"checkpoint"``: a file written by :func:`train_prior` (``privmed attack train-prior``): a DCGAN trained
  centrally on **public** images. Threat model: an honest-but-curious server that knows the data
  distribution through public images of the same modality (for BreastMNIST attacked on its training split:
  the test and/or validation split, which no client holds; or another dataset). Jeon et al. 2021 ("Gradient
  Inversion with Generative Image Prior", NeurIPS) and Li et al. 2022 ("Auditing Privacy Defenses in Federated
  Learning via Generative Gradient Leakage", CVPR) assume exactly this prior.
- ``"hfgan-run"``: a ``privmed gan`` run folder; the generator is client ``prior_client``'s G_i from the
  client-side store (``<store>/client-<i>/generator.pt``). Threat model: **a client's generator leaked** (a
  stolen disk, a careless share, a colluding client). The server never receives G_i in HF-GAN; this models
  what an attacker gains if it gets one anyway. G_i only ever saw the federated discriminator, so under DP its
  leak is post-processing of D's (ε, δ) (:mod:`privmed.gan.hfgan`).
- ``"generator-file"``: one stored G_i file itself (``.../client-3/generator.pt``), same threat model.

Every source returns a :class:`Prior`: the generator (eval mode, frozen) and a description that the attack
reports. The architecture is read back from the weights' shapes, so a file needs no separate config.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from privmed.attacks.public import public_images, refuse_training_split
from privmed.errors import ConfigError
from privmed.models.dcgan import BASE_SIDE, GANS, Generator

log = logging.getLogger(__name__)

#: The format name written in every prior checkpoint.
FORMAT = "privmed.generative-prior"
#: The newest checkpoint version this code reads and writes.
VERSION = 1


@dataclass
class Prior:
    """A generator to search images on, and where it came from.

    Attributes
    ----------
    generator
        ``G(z, y) -> images in [-1, 1]``, eval mode, parameters frozen (the attack copies it to fine-tune).
    source
        The :data:`PRIOR_SOURCES` key that loaded it.
    threat
        The threat model this prior stands for (reported beside every result).
    info
        What it was trained on and how (dataset, splits, steps, ...), as stored.
    """

    generator: Generator
    source: str
    threat: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        g = self.generator
        return (g.channels, g.size, g.size)


# -- the architecture from the weights ------------------------------------------------------------------
def generator_from_state(state: Mapping[str, Tensor], *, origin: str) -> Generator:
    """A :class:`Generator` with ``state`` loaded, its shape read from the tensors' shapes.

    Raises
    ------
    ConfigError
        When ``state`` is not the state of a privmed DCGAN generator.
    """
    try:
        num_classes, latent_dim = state["embed.weight"].shape
        norm = "batch" if "project.1.running_mean" in state else "group"  # HF-GAN's G since issue 11: BatchNorm
        top = int(state["net.1.weight"].shape[0])  # the first transposed convolution's input channels
        base = math.isqrt(int(state["project.0.weight"].shape[0]) // top)
        convs = sorted(k for k in state if k.startswith("net.") and k.endswith(".weight") and state[k].ndim == 4)
        channels, width = int(state[convs[-1]].shape[1]), int(state[convs[-1]].shape[0])
    except (KeyError, IndexError, ValueError, TypeError):
        raise ConfigError(
            f"{origin} does not hold a privmed DCGAN generator; give a checkpoint of privmed attack train-prior "
            "or a privmed gan run folder"
        ) from None
    size = base * 2 ** len(convs)
    if BASE_SIDE.get(size) != base:
        raise ConfigError(f"{origin}: a generator of side {size} is not one privmed's DCGAN makes")
    g = Generator(int(latent_dim), int(num_classes), channels=channels, size=size, width=width, norm=norm)
    g.load_state_dict(dict(state))
    return _frozen(g)


def _frozen(g: Generator) -> Generator:
    g.eval()
    for p in g.parameters():
        p.requires_grad_(False)
    return g


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"prior {path} cannot be read ({type(exc).__name__}); give a file torch.save wrote") from None


# -- sources -------------------------------------------------------------------------------------------------
def _is_checkpoint(saved: Any) -> bool:
    return isinstance(saved, dict) and "format" in saved


def _from_checkpoint(saved: dict[str, Any], path: Path) -> Prior:
    if saved.get("format") != FORMAT:
        raise ConfigError(f"prior {path} is a {saved.get('format')!r} file, not a privmed generative-prior checkpoint")
    if int(saved.get("version", 0)) > VERSION:
        raise ConfigError(
            f"prior {path} has format version {saved['version']}; this privmed reads <= {VERSION}: upgrade privmed"
        )
    info = json.loads(str(saved.get("info", "{}")))
    g = generator_from_state(saved["generator"], origin=str(path))
    return Prior(g, "checkpoint", info.get("threat", "public data"), info)


def _is_generator_file(saved: Any) -> bool:
    return isinstance(saved, dict) and "generator" in saved and "status" in saved


def _from_generator_file(saved: dict[str, Any], path: Path) -> Prior:
    g = generator_from_state(saved["generator"], origin=str(path))
    return Prior(g, "generator-file", LEAKED_G, {"file": str(path), "status": saved.get("status", {})})


#: the threat model of a leaked HF-GAN generator
LEAKED_G = "a client's generator leaked (HF-GAN G_i; the server never receives it)"

#: file kind -> (recognises the loaded object, builds the prior); a folder is an HF-GAN run (:func:`_from_run`)
PRIOR_SOURCES: dict[str, tuple[Callable[[Any], bool], Callable[[Any, Path], Prior]]] = {
    "checkpoint": (_is_checkpoint, _from_checkpoint),
    "generator-file": (_is_generator_file, _from_generator_file),
}


def _from_file(path: Path) -> Prior:
    saved = _load(path)
    for recognises, build in PRIOR_SOURCES.values():
        if recognises(saved):
            return build(saved, path)
    raise ConfigError(
        f"prior {path} is neither a checkpoint of privmed attack train-prior nor an HF-GAN generator file; "
        "give one of those or a privmed gan run folder"
    )


def _from_run(path: Path, client: int) -> Prior:
    """Client ``client``'s G_i from the client-side store of the ``privmed gan`` run in ``path``."""
    results = path / "results.json"
    payload = json.loads(results.read_text()) if results.is_file() else {}
    if payload.get("kind") != "hfgan":
        raise ConfigError(f"prior {path} is a folder without an HF-GAN results.json; give a privmed gan run folder")
    stored = Path(payload.get("store") or path / "client-store")
    store = stored if stored.is_dir() else path / "client-store"
    file = store / f"client-{client}" / "generator.pt"
    if not file.is_file():
        have = sorted(p.parent.name.removeprefix("client-") for p in store.glob("client-*/generator.pt"))
        raise ConfigError(
            f"the HF-GAN run {path} has no generator of client {client} in {store}; set prior_client to one of: "
            f"{', '.join(have) or 'none (the store is empty)'}"
        )
    prior = _from_file(file)
    return Prior(prior.generator, "hfgan-run", LEAKED_G, {"run": str(path), "client": client, **prior.info})


def load_prior(spec: str | Path, *, client: int = 0) -> Prior:
    """The generator named by ``spec`` (a file or folder; see the module doc).

    Raises
    ------
    ConfigError
        When ``spec`` is empty, missing, or no source recognises it.
    """
    if not str(spec):
        raise ConfigError(
            "the generative-prior attack needs --set prior=PATH: a checkpoint of privmed attack train-prior or a "
            "privmed gan run folder"
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"prior {path} does not exist; train one with privmed attack train-prior --out {path}")
    return _from_run(path, client) if path.is_dir() else _from_file(path)


def check_prior_fits(
    prior: Prior, *, input_shape: tuple[int, ...], num_classes: int, origin: str, dataset: str = ""
) -> None:
    """Refuse a prior whose images or classes differ from the record's, or a train-prior checkpoint trained on
    the training split of the record's own ``dataset`` (the attacked clients' images: not public knowledge; a
    leaked HF-GAN G_i is its own threat model and is not refused). One message naming the fix."""
    splits = prior.info.get("splits", []) if prior.source == "checkpoint" else []
    if dataset and str(prior.info.get("dataset", "")).lower() == dataset.lower():
        refuse_training_split(f"{origin} ({dataset}:{'+'.join(splits)})", splits)
    shape = tuple(int(s) for s in input_shape)
    g = prior.generator
    if shape != prior.image_shape or num_classes != g.num_classes:
        raise ConfigError(
            f"prior {origin} makes {'x'.join(map(str, prior.image_shape))} images of {g.num_classes} classes, the "
            f"record holds {'x'.join(map(str, shape))} images of {num_classes} classes; train a prior on public "
            "images like the record's: privmed attack train-prior --dataset NAME --split test --out FILE"
        )


# -- training one on public images -----------------------------------------------------------------------------
@dataclass
class PriorTraining:
    """How :func:`train_prior` trains the DCGAN (Radford et al. 2016's Adam 2e-4, β1 0.5; non-saturating loss)."""

    steps: int = 2000
    batch_size: int = 64
    latent_dim: int = 64
    g_width: int = 32
    d_width: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0


def train_dcgan(x: Tensor, y: Tensor, num_classes: int, settings: PriorTraining) -> tuple[Generator, list[float]]:
    """A conditional DCGAN trained on ``(x, y)`` (plain GAN training, no privacy: the images are public)."""
    torch.manual_seed(settings.seed)
    g, d = GANS["dcgan"](
        channels=int(x.shape[1]),
        size=int(x.shape[-1]),
        num_classes=num_classes,
        latent_dim=settings.latent_dim,
        g_width=settings.g_width,
        d_width=settings.d_width,
    )
    opt_g = torch.optim.Adam(g.parameters(), lr=settings.lr, betas=(settings.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=settings.lr, betas=(settings.beta1, 0.999))
    gen = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    for _ in range(settings.steps):
        idx = torch.randint(0, len(x), (min(settings.batch_size, len(x)),), generator=gen)
        losses.append(_gan_step(g, d, opt_g, opt_d, x[idx], y[idx], gen))
    return _frozen(g), losses


def _gan_step(
    g: Generator,
    d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    xb: Tensor,
    yb: Tensor,
    gen: torch.Generator,
) -> float:
    """One D step (real vs fake) and one non-saturating G step; returns G's loss."""
    z = torch.randn(len(xb), g.latent_dim, generator=gen)
    fake = g(z, yb)
    real_logits, fake_logits = d(xb, yb), d(fake.detach(), yb)
    loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + (
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    )
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    logits = d(fake, yb)
    loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return float(loss_g.detach())


def save_prior(g: Generator, out: str | Path, info: Mapping[str, Any]) -> Path:
    """Write a prior checkpoint (format, version, G's weights, ``info`` as JSON) atomically; returns its path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, "generator": g.state_dict(), "info": json.dumps(info)}, tmp)
    tmp.replace(path)
    return path


def train_prior(
    dataset: str, splits: list[str], out: str | Path, *, settings: PriorTraining | None = None, size: int = 28
) -> dict[str, Any]:
    """Train a DCGAN on public ``splits`` of ``dataset`` and write its checkpoint to ``out``; returns its info.

    The checkpoint (``torch.save``, loadable with ``weights_only=True``) holds the format, version, the
    generator's weights and a JSON ``info`` (dataset, splits, images, settings, threat model, seconds).
    """
    settings = settings or PriorTraining()
    if settings.steps < 1 or settings.batch_size < 1:
        raise ConfigError("train-prior needs --steps >= 1 and --batch-size >= 1")
    x, y, info = public_images(dataset, splits, size=size)
    started = time.perf_counter()
    g, losses = train_dcgan(x, y, info.n_labels, settings)
    meta = {
        "threat": f"public data: a DCGAN trained on {info.name} {'+'.join(splits)} (no attacked client holds them)",
        "dataset": info.name,
        "synthetic": bool(info.synthetic),
        "splits": splits,
        "images": len(x),
        "image_shape": [int(s) for s in x.shape[1:]],
        "num_classes": info.n_labels,
        "settings": settings.__dict__,
        "seconds": time.perf_counter() - started,
        "last_g_loss": losses[-1],
    }
    path = save_prior(g, out, meta)
    log.info("prior: %d steps on %d images in %.1f s -> %s", settings.steps, len(x), meta["seconds"], path)
    return meta
