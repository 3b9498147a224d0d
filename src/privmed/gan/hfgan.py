"""HF-GAN: a federated discriminator trained from DP-noised client gradients; generators that never leave.

The protocol of "Hybrid Federated Learning with Generative Adversarial Networks for Enhanced Data
Augmentation and Privacy Preservation in Medical Imaging" (``shared/papers/hf-gan.md``, Sec. 3), each round:

1. The server holds the conditional discriminator D and sends its weights to the sampled clients.
2. Each client trains its own conditional generator G_i against D (:func:`train_generator`, ``g_steps`` local
   steps, in every ``d_steps_per_g_step``-th round: Bie et al., "Private GANs, revisited", TMLR 2023, take
   many D steps per G step). G_i lives in the client-side :class:`GeneratorStore` and never leaves it.
3. The client computes D's loss gradient on real local images (:func:`real_gradient`: a Poisson sample at the
   federation's rate q; under DP clipped per real example and noised by privmed's distributed-noise
   machinery, :func:`privmed.federation.dp_distributed.distributed_dp_wrapper`) plus the gradient on images of
   G_i (:func:`fake_gradient`), and uploads only that sum. Its number of real images n_i is the reply's weight
   only inside SecAgg+'s masked vector; in the clear a DP client shows weight 1
   (:func:`privmed.federation.dp.clear_weight_mod`, as the classifiers' DP clients do).
4. The server averages the uploads weighted by the public partition sizes (the same n_i, computed from the
   config; under SecAgg+ the unmasked aggregate is already that mean) and steps D with Adam (lr 2e-4, β1 0.5;
   :class:`HFGANStrategy`). Adam on a noised gradient is post-processing.

Privacy (``[privacy] mode``, chosen by name in :data:`D_GRADIENT_WRAPPERS`, never by a branch in the code):

- ``"distributed"``: DP-FedSGD on D with the noise split across clients under SecAgg+, exactly as
  ``privacy.mode = "distributed"`` for classifiers (the same client wrapper and the same server ledger,
  :class:`~privmed.federation.dp_distributed.DistributedDP`): every D step is one sampled Gaussian step
  (σ, q) on the union of the clients' real images.
- ``"sample"``: the same step without SecAgg+: every client adds the full noise σ·C itself, so each upload
  alone is a sampled Gaussian mechanism on that client's images (:class:`PerClientNoiseDP`).
- ``"none"``: the same Poisson sample, no clipping, no noise.

**ε of D is the ε of the synthetic images.** G_i's updates are functions of D's weights (DP outputs) and of
fresh randomness only; G_i's labels are drawn uniformly over the classes (not from the client's label
histogram), so the fake term of every upload and every synthetic image is post-processing of D's DP
training (Dwork & Roth 2014, Prop. 2.1). The ledger's ε is reported as the ε of the synthetic images.
The images a client releases (evaluation, augmentation) come from an exponential moving average of G_i's
weights (``gan.g_ema``, :meth:`GeneratorStore.update_ema`), kept in the client's store beside G_i: a function of
G_i's iterates, so post-processing too.

Threat model: an honest-but-curious server (and anyone holding D or the results) sees D's weights and, per
round, the noised D gradients (only their SecAgg+ sum under ``"distributed"``); it never sees G_i, real
images, the real-image loss, or the clients' label histograms. Not covered: a server that colludes with
clients (their noise shares come off: σ·C·√((k−c)/m) remain), a malicious server that sends a crafted D
(DP still bounds what one real image changes in an upload), the partition sizes (public metadata by
assumption, as for the classifiers: the server computes them from the config; no client sends its count), and
timing side channels (when a reply arrives). Noise and Poisson sampling come from fresh OS entropy
(``secrets``), never from the config's seeds, and are never sent or logged; G_i's initialisation and latent
draws are seeded (they touch no private data).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from privmed.config import Config
from privmed.data import DatasetInfo, Split
from privmed.data.base import to_torch
from privmed.errors import ConfigError, PrivacyError
from privmed.federation import task
from privmed.federation.dp import ServerLedgerDP
from privmed.federation.dp_distributed import KEY_NOISE_SHARE, KEY_SAMPLE_RATE, DistributedDP, distributed_dp_wrapper
from privmed.federation.sampling import sampled_clients
from privmed.gan.config import GanConfig
from privmed.gan.diffaugment import diff_augment
from privmed.models.dcgan import Discriminator, Generator, build_gan
from privmed.privacy import make_private
from privmed.privacy.dpsgd import poisson_loader
from privmed.privacy.randomness import dp_randomness

log = logging.getLogger(__name__)

#: Fit-config key: whether G_i trains this round (the D:G step ratio).
KEY_TRAIN_G = "gan_train_g"
#: Client metric: 1 when this client's G has been stopped (its loss turned NaN / inf).
METRIC_G_STOPPED = "g_stopped"


# -- models ----------------------------------------------------------------------------------------
def new_gan(cfg: Config, gan: GanConfig, info: DatasetInfo) -> tuple[Generator, Discriminator]:
    """The (G, D) pair for the dataset's images and classes."""
    return build_gan(
        channels=info.n_channels,
        size=cfg.data.size,
        num_classes=info.n_labels,
        latent_dim=gan.latent_dim,
        g_width=gan.g_width,
        d_width=gan.d_width,
        aux_classifier=gan.aux_weight > 0,
        g_norm=gan.g_norm,
        d_head=gan.d_head,
    )


def new_discriminator(cfg: Config, gan: GanConfig, info: DatasetInfo) -> Discriminator:
    """D alone (a client builds it every round to load the server's weights into; no G is built)."""
    return Discriminator(
        info.n_labels,
        channels=info.n_channels,
        size=cfg.data.size,
        width=gan.d_width,
        aux_classifier=gan.aux_weight > 0,
        head=gan.d_head,
    )


def initial_discriminator(cfg: Config, gan: GanConfig, info: DatasetInfo) -> Discriminator:
    """D's starting weights, deterministic in ``train.seed``."""
    torch.manual_seed(cfg.train.seed)
    return new_gan(cfg, gan, info)[1]


def weights_of(module: nn.Module) -> list[np.ndarray]:
    """The module's parameters (not buffers) as arrays, in order."""
    return [p.detach().cpu().numpy().copy() for p in module.parameters()]


def load_weights(module: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Set the module's parameters from ``arrays`` (as :func:`weights_of` returns them)."""
    params = list(module.parameters())
    if len(params) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for {len(params)} parameters")
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            p.copy_(torch.as_tensor(a, dtype=p.dtype))


def adam(params: Any, gan: GanConfig, lr: float) -> torch.optim.Adam:
    """The paper's Adam (β1 = ``gan.beta1``, β2 = 0.999)."""
    return torch.optim.Adam(params, lr=lr, betas=(gan.beta1, 0.999))


def fresh_generator() -> torch.Generator:
    """A torch generator seeded from the OS's entropy (``secrets``): for DP noise and Poisson sampling."""
    return torch.Generator().manual_seed(secrets.randbits(63))


# -- the client-side store of G_i ------------------------------------------------------------------
#: ``path -> (file stamp, (G_i, its Adam, status))``: what this process last loaded or saved (:meth:`load_cached`)
_LOADED: dict[str, tuple[tuple[int, int] | None, tuple[Any, Any, dict[str, Any]]]] = {}


def _stamp(path: Path) -> tuple[int, int] | None:
    """The file's (modification time in ns, size), or ``None`` when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class GeneratorStore:
    """Where each client keeps its generator between rounds and after the run: its own disk, never the server.

    ``<root>/client-<partition>/generator.pt`` holds G_i's weights, its Adam state and a small status record
    (``stopped``, ``reason``, ``g_updates``). In the simulation all clients' folders sit on one machine; the
    server app never opens them.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, partition_id: int) -> Path:
        return self.root / f"client-{partition_id}" / "generator.pt"

    def load(
        self, partition_id: int, cfg: Config, gan: GanConfig, info: DatasetInfo
    ) -> tuple[Generator, torch.optim.Adam, dict[str, Any]]:
        """G_i, its optimizer and its status; a fresh G_i (seeded by ``train.seed`` and the partition) at first."""
        torch.manual_seed(task.round_seed(cfg.train.seed, 0, partition_id))
        g = new_gan(cfg, gan, info)[0]
        opt = adam(g.parameters(), gan, gan.lr_g)
        status: dict[str, Any] = {"stopped": False, "reason": "", "g_updates": 0}
        path = self.path(partition_id)
        if path.is_file():
            saved = torch.load(path, weights_only=False)
            g.load_state_dict(saved["generator"])
            opt.load_state_dict(saved["optimizer"])
            status = saved["status"]
        return g, opt, status

    def load_cached(
        self, partition_id: int, cfg: Config, gan: GanConfig, info: DatasetInfo
    ) -> tuple[Generator, torch.optim.Adam, dict[str, Any]]:
        """:meth:`load`, kept in this process's memory while the file is unchanged (a client process serves many
        rounds; reading G_i and its Adam state from disk every round cost a sixth of a round's compute)."""
        path = self.path(partition_id)
        stamp = _stamp(path)
        hit = _LOADED.get(str(path))
        if hit is not None and hit[0] == stamp and stamp is not None:
            return hit[1]
        loaded = self.load(partition_id, cfg, gan, info)
        _LOADED[str(path)] = (stamp, loaded)
        return loaded

    def snapshot_path(self, partition_id: int, server_round: int) -> Path:
        return self.path(partition_id).with_name(f"generator-r{server_round}.pt")

    def snapshot(self, partition_id: int, g: Generator, server_round: int) -> None:
        """Keep a copy of G_i's weights as they are after ``server_round`` (FID per round)."""
        torch.save(g.state_dict(), self.snapshot_path(partition_id, server_round))

    def load_snapshot(
        self, partition_id: int, server_round: int, cfg: Config, gan: GanConfig, info: DatasetInfo
    ) -> Generator:
        """G_i's weights as :meth:`snapshot` kept them after ``server_round``, in eval mode."""
        g = new_gan(cfg, gan, info)[0]
        g.load_state_dict(torch.load(self.snapshot_path(partition_id, server_round)))
        return g.eval()

    def snapshot_rounds(self, partition_id: int) -> list[int]:
        names = self.path(partition_id).parent.glob("generator-r*.pt")
        return sorted(int(p.stem.removeprefix("generator-r")) for p in names)

    def save(self, partition_id: int, g: Generator, opt: torch.optim.Optimizer, status: dict[str, Any]) -> None:
        path = self.path(partition_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"generator": g.state_dict(), "optimizer": opt.state_dict(), "status": status}, tmp)
        tmp.replace(path)
        _LOADED[str(path)] = (_stamp(path), (g, opt, status))

    def ema_path(self, partition_id: int) -> Path:
        return self.path(partition_id).with_name("generator-ema.pt")

    def update_ema(self, partition_id: int, g: Generator, decay: float) -> None:
        """Move the exponential moving average of G_i's weights towards ``g`` (Yazıcı et al., "The Unusual
        Effectiveness of Averaging in GAN Training", ICLR 2019); buffers (BatchNorm's running statistics) are
        copied. It starts at G_i after its first update. Post-processing of G_i on the client: no privacy cost."""
        path = self.ema_path(partition_id)
        state = {k: v.detach().clone() for k, v in g.state_dict().items()}
        if path.is_file():
            ema = torch.load(path)
            for name, _ in g.named_parameters():
                state[name] = ema[name].lerp_(state[name], 1.0 - decay)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def released(self, partition_id: int, cfg: Config, gan: GanConfig, info: DatasetInfo) -> Generator:
        """The generator whose images leave training (evaluation, augmentation), in eval mode: the EMA of G_i's
        weights when ``gan.g_ema`` > 0 and one was kept, else G_i."""
        g = self.load(partition_id, cfg, gan, info)[0]
        if gan.g_ema > 0 and self.ema_path(partition_id).is_file():
            g.load_state_dict(torch.load(self.ema_path(partition_id)))
        return g.eval()

    def generators(self, cfg: Config, gan: GanConfig, info: DatasetInfo) -> dict[int, Generator]:
        """Every stored G_i as :meth:`released` gives it (evaluation after the run, by whoever holds the stores)."""
        found = {}
        for pid in range(cfg.data.num_clients):
            if self.path(pid).is_file():
                found[pid] = self.released(pid, cfg, gan, info)
        return found


# -- plain torch: one G update, one D gradient -----------------------------------------------------
def uniform_labels(n: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """``n`` labels drawn uniformly over the classes (independent of any client's data)."""
    return torch.randint(0, num_classes, (n,), generator=generator)


def d_loss(d: nn.Module, x: Tensor, y: Tensor, *, real: bool, aux_weight: float = 0.0) -> Tensor:
    """D's loss per image: BCE against "real" / "fake", plus (``aux_weight`` > 0, real images only) ``aux_weight``
    times the cross-entropy of D's auxiliary class head (AC-GAN, Odena et al., ICML 2017). The class head learns
    from real images only, so what it tells G is what real images of a class look like."""
    logits, classes = d(x, y, with_classes=True)
    loss = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)), reduction="none")
    if real and aux_weight > 0 and classes is not None:
        loss = loss + aux_weight * F.cross_entropy(classes, y, reduction="none")
    return loss


def g_loss(d: nn.Module, x: Tensor, y: Tensor, *, aux_weight: float = 0.0) -> Tensor:
    """G's mean loss: non-saturating ``-log D(G(z, y), y)`` plus ``aux_weight`` times D's class loss on G's images."""
    logits, classes = d(x, y, with_classes=True)
    loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    if aux_weight > 0 and classes is not None:
        loss = loss + aux_weight * F.cross_entropy(classes, y)
    return loss


def train_generator(
    g: Generator,
    opt: torch.optim.Optimizer,
    d: nn.Module,
    *,
    steps: int,
    batch: int,
    generator: torch.Generator,
    aux_weight: float = 0.0,
    augment: str = "",
) -> float:
    """``steps`` non-saturating G steps against a frozen D (:func:`g_loss`); returns the last loss. ``augment``: a
    DiffAugment policy applied to G's images before D sees them (:mod:`privmed.gan.diffaugment`).

    ``d`` must be a plain module whose layers carry no Opacus hooks (not a grad-sample wrapper, nor the module
    inside one: Opacus hooks the layers themselves), so G's steps run none of D's per-sample hooks; the client
    wraps a separate copy of D for the real-image gradient. D's parameters are frozen for the duration.
    """
    flags = [p.requires_grad for p in d.parameters()]
    for p in d.parameters():
        p.requires_grad_(False)
    loss = torch.tensor(float("nan"))
    try:
        for _ in range(steps):
            y = uniform_labels(batch, g.num_classes, generator)
            z = torch.randn(batch, g.latent_dim, generator=generator)
            loss = g_loss(d, diff_augment(g(z, y), augment, generator=generator), y, aux_weight=aux_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p, flag in zip(d.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return float(loss.detach())


def _step_gradient(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor) -> list[Tensor]:
    """The gradient the optimizer applies: one step of SGD with lr 1 from w, read back as ``w - w'``.

    Works the same for a plain optimizer and for Opacus' DP optimizer (which clips, noises and scales inside
    ``step``), so the caller never needs to know whether it trains privately.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        grads = [b - p.detach() for b, p in zip(before, params, strict=True)]
        for p, b in zip(params, before, strict=True):
            p.copy_(b)
    return grads


def real_gradient(local: task.LocalTraining, *, aux_weight: float = 0.0, augment: str = "") -> list[Tensor]:
    """D's loss gradient on one (Poisson) batch of real images, as the (possibly wrapped) optimizer makes it.

    The loss is the mean BCE of D against "real" over the batch (a sum divided by the batch size, so an empty
    Poisson batch gives a zero gradient, plus the DP noise under a DP wrapper). ``augment``: a DiffAugment policy
    applied to each real image before its gradient is taken (and clipped): per-example preprocessing.
    """
    x, y = next(iter(local.loader))
    x = diff_augment(x, augment)
    loss = d_loss(local.model, x, y, real=True, aux_weight=aux_weight).sum() / max(1, len(x))
    return _step_gradient(local.model, local.optimizer, loss)


def fake_gradient(
    d: nn.Module,
    g: Generator,
    *,
    batch: int,
    generator: torch.Generator,
    max_norm: float | None = None,
    augment: str = "",
) -> list[Tensor]:
    """D's loss gradient on ``batch`` images of G_i (labelled "fake"); touches no real data.

    ``max_norm``: clip every fake image's gradient to this L2 norm before averaging, as the real images' are
    under DP (Bie et al. 2023 clip real and fake alike), so neither term dominates D's step by scale alone.
    ``augment``: the DiffAugment policy of the real term, applied to G_i's images too.
    """
    y = uniform_labels(batch, g.num_classes, generator)
    with torch.no_grad():
        x = diff_augment(g(torch.randn(batch, g.latent_dim, generator=generator), y), augment, generator=generator)
    params = {k: p.detach() for k, p in d.named_parameters()}

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logit = torch.func.functional_call(d, p, (xi.unsqueeze(0), yi.unsqueeze(0)))
        return F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit))

    per_example = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    grads = [per_example[k] for k in params]
    if max_norm is not None:
        norms = torch.sqrt(sum(gr.flatten(1).pow(2).sum(1) for gr in grads))
        factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        grads = [gr * factor.view(-1, *([1] * (gr.ndim - 1))) for gr in grads]
    return [gr.mean(0) for gr in grads]


# -- privacy of D's real-image gradient, by wrapping -----------------------------------------------
def discriminator_config(cfg: Config, gan: GanConfig) -> Config:
    """The run as privmed's DP machinery sees D's training: ``gan.rounds`` one-step rounds at batch ``gan.batch_size``.

    ``train.batch_size`` becomes the expected real batch of one D step over the federation (q = B / N) and
    ``federation.rounds`` the number of D steps, so :class:`~privmed.federation.dp_distributed.DistributedDP`
    calibrates σ for exactly D's schedule.
    """
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, batch_size=gan.batch_size, augment=False, augment_multiplicity=1),
        federation=dataclasses.replace(
            cfg.federation, rounds=gan.rounds, local_epochs=1, strategy="fedavg", proximal_mu=0.0
        ),
    )


def _poisson_only(local: task.LocalTraining, cfg: Config, partition_id: int) -> task.LocalTraining:
    """``privacy.mode = "none"``: the same Poisson batch at rate q, no clipping and no noise."""
    rate = float(local.instructions[KEY_SAMPLE_RATE])
    loader = poisson_loader(local.loader, sample_rate=rate, steps=1)
    return dataclasses.replace(local, loader=loader)


def _distributed(local: task.LocalTraining, cfg: Config, partition_id: int) -> task.LocalTraining:
    """``"distributed"``: privmed's :func:`~privmed.federation.dp_distributed.distributed_dp_wrapper` as is (its
    noise and sampling come from :func:`privmed.privacy.randomness.dp_randomness`: fresh OS entropy by default)."""
    return distributed_dp_wrapper(local, cfg, partition_id)


def _per_client_noise(local: task.LocalTraining, cfg: Config, partition_id: int) -> task.LocalTraining:
    """``"sample"``: the distributed step with the full noise σ·C on this client's sum (no SecAgg+ needed)."""
    model, optimizer, loader = make_private(
        local.model,
        local.optimizer,
        local.loader,
        noise_multiplier=float(local.instructions[KEY_NOISE_SHARE]),
        max_grad_norm=cfg.privacy.max_grad_norm,
        sample_rate=float(local.instructions[KEY_SAMPLE_RATE]),
        steps=1,
        grad_sample_mode=cfg.privacy.grad_sample_mode,
        randomness=dp_randomness(
            cfg.privacy,
            seed=cfg.train.seed,
            key=("hfgan-sample", int(local.instructions.get("server_round", 0)), partition_id),
        ),
    )
    return dataclasses.replace(local, model=model, optimizer=optimizer, loader=loader)


#: ``privacy.mode`` -> the per-example clipping norm of the fake images' gradients (``None``: no clipping).
FAKE_CLIPPING: dict[str, Callable[[Config], float | None]] = {
    "none": lambda cfg: None,
    "distributed": lambda cfg: cfg.privacy.max_grad_norm,
    "sample": lambda cfg: cfg.privacy.max_grad_norm,
}

#: ``privacy.mode`` -> how a client's real-image gradient of D is wrapped.
D_GRADIENT_WRAPPERS: dict[str, Callable[[task.LocalTraining, Config, int], task.LocalTraining]] = {
    "none": _poisson_only,
    "distributed": _distributed,
    "sample": _per_client_noise,
}


# -- the client ------------------------------------------------------------------------------------
class HFGANClientLogic:
    """One client's round: train G_i (when asked), then D's gradient on real images + G_i's images.

    Parameters
    ----------
    cfg, gan
        The run's config (``cfg`` as :func:`discriminator_config` returns it) and ``[gan]``.
    partition_id
        This client's partition.
    info, split
        Its dataset info and real training images.
    store
        Its generator store.
    force_nan
        Fault injection for tests: make this client's G loss NaN.
    """

    def __init__(
        self,
        cfg: Config,
        gan: GanConfig,
        partition_id: int,
        info: DatasetInfo,
        split: Split,
        store: GeneratorStore,
        *,
        force_nan: bool = False,
    ) -> None:
        self.cfg, self.gan, self.partition_id = cfg, gan, partition_id
        self.info, self.split, self.store = info, split, store
        self.force_nan = force_nan

    def fit(
        self, weights: Sequence[np.ndarray], config: Mapping[str, Any]
    ) -> tuple[list[np.ndarray], dict[str, float]]:
        started = time.perf_counter()
        server_round = int(config["server_round"])
        g, g_opt, status = self.store.load_cached(self.partition_id, self.cfg, self.gan, self.info)
        d = new_discriminator(self.cfg, self.gan, self.info)
        load_weights(d, weights)
        latent = torch.Generator().manual_seed(task.round_seed(self.cfg.train.seed, server_round, self.partition_id))
        metrics: dict[str, float] = {}
        if bool(config.get(KEY_TRAIN_G, True)) and not status["stopped"]:
            metrics.update(self._train_g(g, g_opt, d, status, latent))
            self.store.save(self.partition_id, g, g_opt, status)
            if self.gan.g_ema > 0 and not status["stopped"]:
                self.store.update_ema(self.partition_id, g, self.gan.g_ema)
        elif not self.store.path(self.partition_id).is_file():
            self.store.save(self.partition_id, g, g_opt, status)
        if self.gan.snapshot_every and server_round % self.gan.snapshot_every == 0:
            self.store.snapshot(self.partition_id, g, server_round)
        clip = FAKE_CLIPPING[self.cfg.privacy.mode](self.cfg)
        fake = fake_gradient(
            d, g, batch=self.gan.fake_batch, generator=latent, max_norm=clip, augment=self.gan.diffaugment
        )
        real = self._real(d, config)
        upload = [(r + f).numpy() for r, f in zip(real, fake, strict=True)]
        metrics.update({METRIC_G_STOPPED: float(status["stopped"]), "fit_seconds": time.perf_counter() - started})
        return upload, metrics

    def _train_g(
        self, g: Generator, opt: torch.optim.Optimizer, d: nn.Module, status: dict[str, Any], latent: torch.Generator
    ) -> dict[str, float]:
        saved_g = {k: v.clone() for k, v in g.state_dict().items()}
        saved_opt = opt.state_dict()
        loss = train_generator(
            g,
            opt,
            d,
            steps=self.gan.g_steps,
            batch=self.gan.g_batch,
            generator=latent,
            aux_weight=self.gan.aux_weight,
            augment=self.gan.diffaugment,
        )
        if self.force_nan:
            loss = float("nan")
        finite = math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in g.parameters())
        if not finite:  # keep the last finite G_i, stop training it, and say so; the round goes on
            g.load_state_dict(saved_g)
            opt.load_state_dict(saved_opt)
            status.update(stopped=True, reason=f"generator loss {loss} is not finite", stopped_at=status["g_updates"])
            log.warning(
                "client %d: generator loss turned %s after %d G updates; its G is stopped (kept at its last finite "
                "weights) and the run continues",
                self.partition_id,
                loss,
                status["g_updates"],
            )
            return {"g_loss": float("nan")}
        status["g_updates"] += 1
        return {"g_loss": loss}

    def _real(self, d: Discriminator, config: Mapping[str, Any]) -> list[Tensor]:
        """D's real-image gradient on a copy of D: Opacus registers its per-sample hooks on the copy's layers, so
        the plain D that G trains against (and the fake term) never runs them, whatever the order."""
        private_d = copy.deepcopy(d)
        loader = DataLoader(to_torch(self.split, self.info), batch_size=1, generator=fresh_generator())
        optimizer = torch.optim.SGD(private_d.parameters(), lr=1.0)
        local = task.LocalTraining(private_d, optimizer, loader, {}, instructions=dict(config))
        wrapped = D_GRADIENT_WRAPPERS[self.cfg.privacy.mode](local, self.cfg, self.partition_id)
        return real_gradient(wrapped, aux_weight=self.gan.aux_weight, augment=self.gan.diffaugment)


# -- the server ------------------------------------------------------------------------------------
class HFGANStrategy(Strategy):
    """The server: holds D, sends it, averages the uploaded gradients by client size and steps D with Adam.

    Parameters
    ----------
    cfg
        The run's config as :func:`discriminator_config` returns it.
    gan
        ``[gan]``.
    info
        The dataset's info (D's input shape and classes).
    partition_sizes
        Real training images per client; their sum N gives the Poisson rate q = ``gan.batch_size`` / N.
    on_step
        Called after every D step with ``(round, D before, aggregated gradient, D after)`` (audits, tests).
    """

    def __init__(
        self,
        cfg: Config,
        gan: GanConfig,
        info: DatasetInfo,
        *,
        partition_sizes: Sequence[int],
        on_step: Callable[[int, list[np.ndarray], list[np.ndarray], list[np.ndarray]], None] | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.gan = cfg, gan
        self.d = initial_discriminator(cfg, gan, info)
        self.optimizer = adam(self.d.parameters(), gan, gan.lr_d)
        self.sample_rate = gan.batch_size / float(sum(partition_sizes))
        self.m = sampled_clients(cfg)
        self.on_step = on_step
        self.stopped: dict[int, int] = {}
        #: the partition sizes, public metadata by assumption (every process computes them from the config)
        self.public_sizes = {pid: int(n) for pid, n in enumerate(partition_sizes)}

    def public_weight(self, res: FitRes) -> int:
        """A reply's weight: its client's public partition size, never the count it shows in the clear (1 under
        DP, :func:`~privmed.federation.dp.clear_weight_mod`). Under SecAgg+ every reply carries the same unmasked
        aggregate (whose weights rode inside the masked vectors), so these weights do not change it."""
        if "partition_id" not in res.metrics:
            raise PrivacyError("an HF-GAN reply carries no partition_id; run the clients with privmed's HF-GAN app")
        return self.public_sizes[int(res.metrics["partition_id"])]

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(weights_of(self.d))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        train_g = (server_round - 1) % self.gan.d_steps_per_g_step == 0
        config: dict[str, Scalar] = {
            "server_round": server_round,
            KEY_TRAIN_G: train_g,
            KEY_SAMPLE_RATE: self.sample_rate,
        }
        clients = client_manager.sample(num_clients=self.m, min_num_clients=self.m)
        return [(c, FitIns(parameters, dict(config))) for c in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        gradient = weighted_mean([(parameters_to_ndarrays(r.parameters), self.public_weight(r)) for _, r in results])
        before = weights_of(self.d)
        self.optimizer.zero_grad(set_to_none=True)
        for p, grad in zip(self.d.parameters(), gradient, strict=True):
            p.grad = torch.as_tensor(grad, dtype=p.dtype).clone()
        self.optimizer.step()
        after = weights_of(self.d)
        if self.on_step is not None:
            self.on_step(server_round, before, gradient, after)
        for _, res in results:
            if res.metrics.get(METRIC_G_STOPPED) and "partition_id" in res.metrics:
                self.stopped.setdefault(int(res.metrics["partition_id"]), server_round)
        return ndarrays_to_parameters(after), {"clients": len(results), "g_stopped": len(self.stopped)}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


def weighted_mean(uploads: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """``Σ n_i·g_i / Σ n_i`` array by array (what SecAgg+ also computes, from masked uploads)."""
    total = float(sum(n for _, n in uploads))
    if total <= 0:
        raise ValueError("no examples to weight the uploads with")
    first = uploads[0][0]
    return [sum(np.asarray(g[i], dtype=np.float64) * n for g, n in uploads) / total for i in range(len(first))]


class PerClientNoiseDP(DistributedDP):
    """``privacy.mode = "sample"`` for D: :class:`DistributedDP`'s σ and ledger, but every client adds all of
    σ·C (share σ, not σ/√m), so no SecAgg+ is needed: each upload alone is the sampled Gaussian mechanism on
    that client's images, and every real image is in one client only."""

    def __init__(self, strategy: Strategy, cfg: Config, *, partition_sizes: list[int]) -> None:
        # DistributedDP refuses to run without SecAgg+ because its shares are small; the full share is not
        secure_view = dataclasses.replace(cfg, secagg=dataclasses.replace(cfg.secagg, enabled=True))
        super().__init__(strategy, secure_view, partition_sizes=partition_sizes)
        self.share = self.sigma

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if parameters is None:
            return None, metrics
        epsilon = ServerLedgerDP.account_round(self, noise_multiplier=self.sigma, sample_rate=self.sample_rate)
        return parameters, {**metrics, "epsilon": epsilon, "noise_multiplier": self.sigma}

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "mode": "sample (per-client noise, no SecAgg+)"}


def _no_dp(strategy: Strategy, cfg: Config, *, partition_sizes: list[int]) -> Strategy:
    return strategy


#: ``privacy.mode`` -> the server-side wrapper that calibrates σ, sends the noise share and keeps the ledger.
D_STRATEGY_WRAPPERS: dict[str, Callable[..., Strategy]] = {
    "none": _no_dp,
    "distributed": DistributedDP,
    "sample": PerClientNoiseDP,
}


def check_privacy_mode(cfg: Config) -> None:
    mode = cfg.privacy.mode
    if mode not in D_GRADIENT_WRAPPERS:
        raise ConfigError(
            f"privacy.mode = {mode!r} is not available for HF-GAN's discriminator; choose one of "
            f"{', '.join(sorted(D_GRADIENT_WRAPPERS))} ('distributed' needs secagg.enabled = true)"
        )


def build_strategy(
    cfg: Config,
    gan: GanConfig,
    info: DatasetInfo,
    *,
    partition_sizes: Sequence[int],
    on_step: Callable[..., None] | None = None,
) -> tuple[HFGANStrategy, Strategy]:
    """The HF-GAN server strategy and its DP wrapper for ``privacy.mode`` (the wrapper is what Flower runs).

    Raises
    ------
    PrivacyError
        When the calibrated σ exceeds ``gan.max_noise_multiplier`` (ε too small to train D).
    """
    check_privacy_mode(cfg)
    inner = HFGANStrategy(cfg, gan, info, partition_sizes=partition_sizes, on_step=on_step)
    outer = D_STRATEGY_WRAPPERS[cfg.privacy.mode](inner, cfg, partition_sizes=list(partition_sizes))
    sigma = getattr(outer, "sigma", 0.0)
    if sigma > gan.max_noise_multiplier:
        raise PrivacyError(
            f"privacy.epsilon = {cfg.privacy.epsilon:g} is too small to train the discriminator: over {gan.rounds} D "
            f"steps at q = {inner.sample_rate:.4g} it needs noise multiplier sigma = {sigma:.3g}, above "
            f"gan.max_noise_multiplier = {gan.max_noise_multiplier:g} (the noise would drown D's gradient); raise "
            "privacy.epsilon, lower gan.rounds or raise gan.batch_size"
        )
    return inner, outer
