"""The auditor that knows the data: its clipped gradient sums are DP-SGD's, and subtracting them leaves the canary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from privmed.audit import canaries as C
from privmed.audit import known_data as K
from privmed.audit.pipeline import quickstart_config
from privmed.config import from_dict


def test_clipped_gradient_sum_matches_a_loop_over_examples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(20, 6) * 3, torch.randint(0, 3, (20,))
    loss_fn = nn.CrossEntropyLoss()
    got = K.clipped_gradient_sum(model, loss_fn, [(x[:7], y[:7]), (x[7:], y[7:])], clip=0.5)
    want = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(20):
        model.zero_grad()
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        for k, p in model.named_parameters():
            want[k] += p.grad * min(1.0, 0.5 / float(norm))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)


def _small_cfg(tmp_path):
    cfg = quickstart_config().to_dict()
    cfg["data"]["options"] |= {"n_train": 300, "n_val": 50, "n_test": 50}
    cfg["data"]["num_clients"] = 3
    cfg["audit"] |= {"known_data": True, "work_dir": str(tmp_path)}
    return from_dict(cfg, source="test")


def test_observed_steps_leave_exactly_the_canary_of_a_full_batch_step(tmp_path) -> None:
    from privmed.federation import task

    cfg = _small_cfg(tmp_path)
    dataset, parts = task.load_federated_data(cfg)
    model = task.new_model(cfg, dataset.info)
    weights = [np.asarray(w) for w in task.initial_weights(cfg, dataset.info)]
    can = C.draw_canaries(model, m=50, num_clients=3, rng=np.random.default_rng(0))
    K.save_global(weights, 3, tmp_path)
    # the real examples' clipped gradient sum at the canaries, as the clients compute it (q = 1)
    model.load_state_dict({k: torch.as_tensor(w) for k, w in zip(model.state_dict(), weights, strict=True)})
    info, batches = K._training_batches(cfg)
    from privmed.train import make_loss

    sums = K.clipped_gradient_sum(model, make_loss(info), batches, clip=cfg.privacy.max_grad_norm)
    flat = [sums[k].reshape(-1).numpy() if k in sums else None for k in model.state_dict()]
    real = np.array([flat[t][o] for t, o in zip(can.tensor, can.offset, strict=True)])
    signs, n, lr = can.signs_at(3), float(sum(len(p) for p in parts)), 0.5
    at = np.array([weights[t].reshape(-1)[o] for t, o in zip(can.tensor, can.offset, strict=True)], dtype=np.float64)
    step = signs * can.included * cfg.privacy.max_grad_norm + real
    view = C.RoundView(3, at, {0: (n, at - lr * step / n)}, lr=lr, noise_multiplier=1.0, sample_rate=1.0)
    x = K.observed_steps(cfg, [view], can, tmp_path)
    np.testing.assert_allclose(x[0], can.included.astype(float), atol=1e-4)
    plain = K.observed_steps(dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, known_data=False)),
                             [view], can, tmp_path)  # fmt: skip
    assert np.abs(plain[0] - can.included).max() > 1e-2  # without the auditor's knowledge the real sums remain


def test_rounds_without_a_kept_global_subtract_nothing(tmp_path) -> None:
    cfg = _small_cfg(tmp_path)
    can = C.draw_canaries(nn.Linear(10, 10), m=5, num_clients=3, rng=np.random.default_rng(1))
    view = C.RoundView(9, np.zeros(5), {0: (10.0, np.ones(5))}, lr=1.0, noise_multiplier=1.0, sample_rate=1.0)
    assert K.load_global(9, tmp_path) is None
    assert K.known_data_steps(cfg, [view], can, tmp_path) == pytest.approx(np.zeros((1, 5)))
