"""HF-GAN's pieces in plain torch: G's step leaves D and its Opacus hooks alone, the clipped + noised D gradient,
the fake term, the size-weighted mean, class-balanced synthetic labels, the [gan] table."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from privmed.config import from_dict
from privmed.errors import ConfigError
from privmed.federation import task
from privmed.federation.dp_distributed import KEY_NOISE_SHARE, KEY_SAMPLE_RATE
from privmed.gan.augment import synthetic_labels
from privmed.gan.config import load_gan_config
from privmed.gan.hfgan import (
    D_GRADIENT_WRAPPERS,
    KEY_TRAIN_G,
    GeneratorStore,
    HFGANClientLogic,
    fake_gradient,
    new_gan,
    real_gradient,
    train_generator,
    weighted_mean,
    weights_of,
)
from privmed.models.dcgan import build_gan
from privmed.privacy import make_private


def _pair() -> tuple:
    torch.manual_seed(0)
    return build_gan(channels=1, size=28, num_classes=2, latent_dim=8, g_width=8, d_width=8)


def test_generator_step_runs_no_per_sample_hooks_and_leaves_d() -> None:
    g, d = _pair()
    loader = DataLoader(TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 2, (16,))), batch_size=4)
    private = copy.deepcopy(d)  # what the client wraps for the real-image gradient
    gs, _, _ = make_private(
        private, torch.optim.SGD(private.parameters(), lr=1.0), loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    before = [p.detach().clone() for p in d.parameters()]
    g_before = [p.detach().clone() for p in g.parameters()]
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    loss = train_generator(g, opt, d, steps=2, batch=4, generator=torch.Generator().manual_seed(0))
    assert np.isfinite(loss)
    assert all(getattr(p, "grad_sample", None) is None for p in gs.parameters())  # no per-sample hook ran
    assert all(p.grad is None for p in d.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, d.parameters(), strict=True))
    assert all(p.requires_grad for p in d.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, g.parameters(), strict=True))
    # the trap this avoids: the module inside Opacus' wrapper has hooked layers, and G's step through it fails
    with pytest.raises(ValueError, match="No activations detected"):
        train_generator(g, opt, gs._module, steps=1, batch=4, generator=torch.Generator().manual_seed(0))


def test_client_round_trains_g_then_uploads_a_d_gradient(tmp_path) -> None:
    """A whole client round (G step, fake term, clipped + noised real term) in plain torch, twice."""
    cfg, gan = load_gan_config("gan-smoke", overrides=["privacy.mode='sample'", "secagg.enabled=false"])
    info, split = task.client_partition(cfg, 0, cfg.data.num_clients)
    store = GeneratorStore(tmp_path)
    logic = HFGANClientLogic(cfg, gan, 0, info, split, store)
    _, d = new_gan(cfg, gan, info)
    shapes = [tuple(p.shape) for p in d.parameters()]
    config = {"server_round": 1, KEY_TRAIN_G: True, KEY_SAMPLE_RATE: 0.1, KEY_NOISE_SHARE: 1.0}
    upload, metrics = logic.fit(weights_of(d), config)
    assert [a.shape for a in upload] == shapes and metrics["g_stopped"] == 0.0 and np.isfinite(metrics["g_loss"])
    g1 = [p.detach().clone() for p in store.load(0, cfg, gan, info)[0].parameters()]
    upload2, _ = logic.fit(weights_of(d), {**config, "server_round": 2, KEY_TRAIN_G: False})
    g2 = list(store.load(0, cfg, gan, info)[0].parameters())
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))  # D:G ratio: no G step this round
    assert any(not np.allclose(a, b) for a, b in zip(upload, upload2, strict=True))


def _clipping_only(d: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float) -> task.LocalTraining:
    """D's real-image step under the ``"sample"`` wrapper at q ~ 1 and noise share 0: only the clipping acts."""
    cfg = from_dict({"privacy": {"mode": "sample", "max_grad_norm": max_grad_norm}})
    loader = DataLoader(TensorDataset(x, y), batch_size=1, generator=torch.Generator().manual_seed(0))
    local = task.LocalTraining(
        d,
        torch.optim.SGD(d.parameters(), lr=1.0),
        loader,
        {},
        instructions={KEY_SAMPLE_RATE: 0.999999, KEY_NOISE_SHARE: 0.0},
    )
    return D_GRADIENT_WRAPPERS["sample"](local, cfg, 0)


def test_real_gradient_is_the_mean_of_clipped_per_example_gradients() -> None:
    """With the noise share set to 0 the wrapped step is exactly sum(clip(g_j)) / (q n): the clipping part."""
    _, d = _pair()
    x, y = torch.randn(12, 1, 28, 28), torch.randint(0, 2, (12,))
    clone = build_gan(channels=1, size=28, num_classes=2, latent_dim=8, g_width=8, d_width=8)[1]
    clone.load_state_dict(d.state_dict())
    wrapped = _clipping_only(d, x, y, 0.05)
    got = real_gradient(wrapped)
    # reference: per-example gradients of the real loss, clipped to C, summed, divided by the expected batch q n
    batch_x, batch_y = next(iter(wrapped.loader))  # not used (Poisson draw differs); recompute on all 12 examples
    del batch_x, batch_y
    total = [torch.zeros_like(p) for p in clone.parameters()]
    for j in range(12):
        logit = clone(x[j : j + 1], y[j : j + 1])
        grads = torch.autograd.grad(
            F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit)), list(clone.parameters())
        )
        norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
        factor = min(1.0, 0.05 / (float(norm) + 1e-6))
        total = [t + gr * factor for t, gr in zip(total, grads, strict=True)]
    expected = [t / (0.999999 * 12) for t in total]
    # at q ~ 1 the Poisson batch is (almost surely) all 12 examples
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)
    assert float(torch.sqrt(sum((a**2).sum() for a in got))) <= 0.05 * 12 / (0.999999 * 12) + 1e-6


def test_diffaugment_real_gradient_stays_clipped_per_example_and_the_client_round_runs(tmp_path) -> None:
    """DiffAugment transforms each real image before its gradient is clipped: the step's norm stays within C at
    noise 0 and differs from the unaugmented one; a whole client round with the paper's policy uploads D's shapes."""
    _, d = _pair()
    x, y = torch.randn(12, 1, 28, 28), torch.randint(0, 2, (12,))

    def step(policy: str) -> list[torch.Tensor]:
        return real_gradient(_clipping_only(copy.deepcopy(d), x, y, 0.05), augment=policy)

    plain, augmented = step(""), step("color,translation,cutout")
    norm = float(torch.sqrt(sum((a**2).sum() for a in augmented)))
    assert 0 < norm <= 0.05 / 0.999999 + 1e-6
    assert any(not torch.allclose(a, b) for a, b in zip(plain, augmented, strict=True))
    over = ["privacy.mode='sample'", "secagg.enabled=false", "gan.diffaugment='color,translation,cutout'"]
    cfg, gan = load_gan_config("gan-smoke", overrides=over)
    info, split = task.client_partition(cfg, 0, cfg.data.num_clients)
    logic = HFGANClientLogic(cfg, gan, 0, info, split, GeneratorStore(tmp_path))
    _, d2 = new_gan(cfg, gan, info)
    config = {"server_round": 1, KEY_TRAIN_G: True, KEY_SAMPLE_RATE: 0.1, KEY_NOISE_SHARE: 1.0}
    upload, metrics = logic.fit(weights_of(d2), config)
    assert [a.shape for a in upload] == [tuple(p.shape) for p in d2.parameters()]
    assert np.isfinite(metrics["g_loss"])


def test_auxiliary_classifier_real_gradient_clips_both_losses_together() -> None:
    """AC-GAN D (gan.aux_weight > 0): the real term's per-example gradient is that of BCE + aux * class CE, clipped
    as one vector (so the class head's gradient is inside the DP guarantee); the fake term leaves the head alone."""
    torch.manual_seed(0)
    g, d = build_gan(channels=1, size=28, num_classes=2, latent_dim=8, g_width=8, d_width=8, aux_classifier=True)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 0, 1, 1, 0])
    clone = copy.deepcopy(d)
    got = real_gradient(_clipping_only(d, x, y, 0.05), aux_weight=2.0)
    total = [torch.zeros_like(p) for p in clone.parameters()]
    for j in range(6):
        logit, classes = clone(x[j : j + 1], y[j : j + 1], with_classes=True)
        loss = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit)) + 2.0 * F.cross_entropy(
            classes, y[j : j + 1]
        )
        grads = torch.autograd.grad(loss, list(clone.parameters()))
        factor = min(1.0, 0.05 / (float(torch.sqrt(sum((gr**2).sum() for gr in grads))) + 1e-6))
        total = [t + gr * factor for t, gr in zip(total, grads, strict=True)]
    for a, b in zip(got, [t / (0.999999 * 6) for t in total], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)
    head = [i for i, (name, _) in enumerate(clone.named_parameters()) if name.startswith("classify")]
    assert head and all(float(got[i].abs().sum()) > 0 for i in head)
    fake = fake_gradient(clone, g, batch=4, generator=torch.Generator().manual_seed(0), max_norm=1.0)
    assert all(float(fake[i].abs().sum()) == 0 for i in head)


def test_noise_share_reaches_the_gradient() -> None:
    _, d = _pair()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 2, (8,))
    cfg = from_dict({"privacy": {"mode": "sample", "max_grad_norm": 1.0}})
    grads = []
    for _ in range(2):
        loader = DataLoader(TensorDataset(x, y), batch_size=1)
        d2 = build_gan(channels=1, size=28, num_classes=2, latent_dim=8, g_width=8, d_width=8)[1]
        d2.load_state_dict(d.state_dict())
        local = task.LocalTraining(
            d2,
            torch.optim.SGD(d2.parameters(), lr=1.0),
            loader,
            {},
            instructions={KEY_SAMPLE_RATE: 0.5, KEY_NOISE_SHARE: 1.0},
        )
        grads.append(real_gradient(D_GRADIENT_WRAPPERS["sample"](local, cfg, 0)))
    # fresh OS entropy for noise and sampling: two calls with identical inputs differ, by about sigma*C/(q n) = 0.25
    diff = torch.cat([(a - b).flatten() for a, b in zip(*grads, strict=True)])
    assert 0.15 < float(diff.std()) / np.sqrt(2) < 0.4


def test_fake_gradient_clipping() -> None:
    g, d = _pair()
    plain = fake_gradient(d, g, batch=6, generator=torch.Generator().manual_seed(1))
    clipped = fake_gradient(d, g, batch=6, generator=torch.Generator().manual_seed(1), max_norm=1e-3)
    assert float(torch.sqrt(sum((a**2).sum() for a in clipped))) <= 1e-3 + 1e-7
    assert float(torch.sqrt(sum((a**2).sum() for a in plain))) > 1e-3


def test_weighted_mean() -> None:
    a, b = [np.ones(3), np.zeros(2)], [np.zeros(3), np.ones(2)]
    out = weighted_mean([(a, 1), (b, 3)])
    assert np.allclose(out[0], 0.25) and np.allclose(out[1], 0.75)


def test_class_balanced_labels() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    balanced = synthetic_labels(labels, 2, ratio=0.8, class_balance=True)
    assert len(balanced) == 80 and np.bincount(balanced, minlength=2).tolist() == [0, 80]
    follow = synthetic_labels(labels, 2, ratio=1.0, class_balance=False)
    assert np.bincount(follow, minlength=2).tolist() == [90, 10]
    absent = synthetic_labels(np.zeros(10, dtype=int), 3, ratio=2.0, class_balance=True)
    assert np.bincount(absent, minlength=3).tolist() == [0, 10, 10]
    assert len(synthetic_labels(labels, 2, ratio=0.0, class_balance=True)) == 0


def test_gan_table(tmp_path) -> None:
    cfg, gan = load_gan_config("gan-smoke", overrides=["gan.rounds=3", "privacy.epsilon=5.0"])
    assert gan.rounds == 3 and cfg.privacy.epsilon == 5.0 and cfg.privacy.mode == "distributed"
    bad = tmp_path / "bad.toml"
    bad.write_text("[gan]\nroundz = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'roundz' in \\[gan\\]"):
        load_gan_config(str(bad))
    assert dataclasses.asdict(gan)["batch_size"] == 32


def test_gan_defaults_are_the_collapse_fix() -> None:
    """[gan]'s defaults and the PneumoniaMNIST preset build the fixed pair: BatchNorm G, D's flatten head with a
    class-blind start, and an EMA of G released (the first version's GroupNorm G + mean head collapsed G to about
    one image per class, bench/results/hfgan_tstr.md)."""
    cfg, gan = load_gan_config("pneumonia-hfgan")
    assert (gan.g_norm, gan.d_head) == ("batch", "flatten") and 0 < gan.g_ema < 1
    info = task.load_federated_data(load_gan_config("gan-smoke")[0])[0].info  # 1 channel, 2 classes, as Pneumonia
    g, d = new_gan(cfg, gan, info)
    assert isinstance(g.project[1], torch.nn.BatchNorm1d)
    assert float(d.embed.weight.abs().sum()) == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gan.g_norm='layer'", "g_norm"),
        ("gan.d_head='sum'", "d_head"),
        ("gan.fake_batch=1", "fake_batch >= 2"),
        ("gan.diffaugment='color,rotate'", "diffaugment.*rotate"),
    ],
)
def test_bad_architecture_names_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_gan_config("gan-smoke", overrides=[override])


def test_store_keeps_an_ema_of_g_and_releases_it(tmp_path) -> None:
    cfg, gan = load_gan_config("gan-smoke", overrides=["gan.g_ema=0.75"])
    info = task.load_federated_data(cfg)[0].info
    store = GeneratorStore(tmp_path)
    g, opt, status = store.load(0, cfg, gan, info)
    first = {k: v.clone() for k, v in g.state_dict().items()}
    store.save(0, g, opt, status)
    store.update_ema(0, g, gan.g_ema)  # starts at G_i
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
        g.project[1].running_mean.add_(2.0)
    store.save(0, g, opt, status)
    store.update_ema(0, g, gan.g_ema)
    released = store.released(0, cfg, gan, info)
    assert not released.training
    names = {n for n, _ in g.named_parameters()}
    for name, value in released.state_dict().items():
        if name in names:  # 0.75 * first + 0.25 * (first + 1)
            assert torch.allclose(value, first[name] + 0.25, atol=1e-6)
        elif value.is_floating_point():  # buffers (BatchNorm's running statistics) follow G_i
            assert torch.equal(value, g.state_dict()[name])
    off = dataclasses.replace(gan, g_ema=0.0)  # no EMA asked: G_i itself
    plain = store.released(0, cfg, off, info)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), g.parameters(), strict=True))


def test_a_batch_norm_g_from_the_store_loads_as_an_attack_prior(tmp_path) -> None:
    """privmed attack's generative prior reads G's architecture from its weights; HF-GAN's BatchNorm G must load
    (README: a client's leaked G_i as a prior) and give G_i's eval-mode images."""
    from privmed.attacks.priors import generator_from_state

    cfg, gan = load_gan_config("gan-smoke")
    info = task.load_federated_data(cfg)[0].info
    g = GeneratorStore(tmp_path).load(0, cfg, gan, info)[0]
    g.train()(torch.randn(8, g.latent_dim), torch.randint(0, 2, (8,)))  # move the running statistics
    g.eval()
    loaded = generator_from_state(g.state_dict(), origin="test")
    assert loaded.norm == "batch" and not loaded.training
    z, y = torch.randn(3, g.latent_dim), torch.tensor([0, 1, 1])
    assert torch.equal(loaded(z, y), g(z, y))
    legacy = new_gan(cfg, dataclasses.replace(gan, g_norm="group"), info)[0]
    assert generator_from_state(legacy.state_dict(), origin="test").norm == "group"
