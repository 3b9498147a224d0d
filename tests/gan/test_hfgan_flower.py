"""HF-GAN's protocol on real Flower runs (simulation engine, real Opacus, real SecAgg+).

- D's update is an Adam step on the size-weighted mean (weights: the public partition sizes, the only sizes the
  server may know) of the clients' clipped, noised gradients (without SecAgg+ the server's view of every upload is
  recorded; under SecAgg+ the uploads are recorded before masking).
- Nothing computed from a DP client's private data without noise leaves it (a wiretap outside every mod): the clear
  weight is 1, the metrics are the allow-list's, no loss, fit time or example count; results.json lists no
  per-client counts.
- No G_i parameter appears in any message a client sends (checked on every reply, as it leaves the client).
- The ledger's ε matches Google's dp-accounting for (σ, q, rounds).
- A generator whose loss turns NaN is stopped, reported, and the run goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from privmed.federation import task
from privmed.federation.wiretap import Wiretap
from privmed.gan.app import SENT_METRICS, check_message_has_no_generator
from privmed.gan.config import GanConfig, load_gan_config
from privmed.gan.hfgan import GeneratorStore, adam, discriminator_config, initial_discriminator
from privmed.gan.run import run_hfgan

pytestmark = pytest.mark.slow


class UploadTap:
    """Client mod: save the fit reply's arrays (what the next layer out receives) as ``r<round>-p<partition>.npz``."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def __call__(self, message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(message, context)
        if message.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        if not reply.content.array_records:  # a SecAgg+ stage without parameters
            return reply
        res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        pid = int(context.node_config["partition-id"])
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        np.savez(
            Path(self.folder) / f"r{message.metadata.group_id}-p{pid}.npz", *parameters_to_ndarrays(res.parameters)
        )
        return reply


class GeneratorLeakCheck:
    """Client mod, outermost: after the client's reply is final, compare it with this client's G_i in its store."""

    def __init__(self, cfg, gan: GanConfig, store: Path, folder: Path) -> None:
        self.cfg, self.gan, self.store, self.folder = cfg, gan, str(store), str(folder)

    def __call__(self, message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(message, context)
        pid = int(context.node_config["partition-id"])
        store = GeneratorStore(self.store)
        if store.path(pid).is_file():
            info, _ = task.client_partition(self.cfg, pid, self.cfg.data.num_clients)
            g = store.load(pid, self.cfg, self.gan, info)[0]
            check_message_has_no_generator(reply, [p.detach().numpy() for p in g.parameters()])
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            (Path(self.folder) / f"checked-{message.metadata.message_id}").write_text("ok")
        return reply


def _setup(tmp_path: Path, mode: str, rounds: int = 3) -> tuple:
    secagg = "true" if mode == "distributed" else "false"
    cfg, gan = load_gan_config(
        "gan-smoke",
        overrides=[
            f"privacy.mode='{mode}'",
            f"secagg.enabled={secagg}",
            f"gan.rounds={rounds}",
            "gan.d_steps_per_g_step=1",
        ],
    )
    return cfg, gan, tmp_path / "run"


def _adam_replay(cfg, gan, info, steps: list[tuple]) -> None:
    """Replay the server's D steps with a fresh Adam on the recorded aggregates; must give the same D."""
    d = initial_discriminator(discriminator_config(cfg, gan), gan, info)
    opt = adam(d.parameters(), gan, gan.lr_d)
    for _, before, gradient, after in steps:
        assert all(np.allclose(p.detach().numpy(), b) for p, b in zip(d.parameters(), before, strict=True))
        opt.zero_grad()
        for p, gr in zip(d.parameters(), gradient, strict=True):
            p.grad = torch.as_tensor(gr, dtype=p.dtype)
        opt.step()
        assert all(np.allclose(p.detach().numpy(), a, atol=1e-7) for p, a in zip(d.parameters(), after, strict=True))


def _uploads(folder: Path, rnd: int, sizes: list[int]) -> list[tuple[list[np.ndarray], int]]:
    out = []
    for pid, n in enumerate(sizes):
        with np.load(folder / f"r{rnd}-p{pid}.npz") as z:
            out.append(([z[f"arr_{i}"] for i in range(len(z.files))], n))
    return out


#: computed from a client's private data without noise: never in a DP client's messages or in results.json
UNNOISED = {"train_loss", "fit_seconds", "g_loss", "examples", "loss", "accuracy", "update_norm"}
#: per-client counts: not in a DP run's results.json
CLIENT_COUNTS = {"partition_sizes", "label_histogram", "classes_absent", "examples"}


def _keys(tree: object) -> set[str]:
    if isinstance(tree, dict):
        return set(tree) | {k for v in tree.values() for k in _keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in _keys(v)}
    return set()


def _public_sizes(cfg) -> list[int]:
    """The partition sizes every process computes from the config (what the server may know)."""
    return [int(p.size) for p in task.load_federated_data(cfg)[1]]


def _check_wire(folder: Path, cfg, out: Path) -> None:
    """Every fit reply as it left the client: weight 1 in the clear, allowed metrics only, nothing unnoised."""
    replies = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    fits = [r for r in replies if r["message_type"] == MessageType.TRAIN and "fitres.metrics" in r["config_records"]]
    assert len(fits) == cfg.data.num_clients * len(json.loads((out / "results.json").read_text())["rounds"])
    for reply in fits:
        assert reply["metric_records"]["fitres.num_examples"] == {"num_examples": 1}
        assert set(reply["config_records"]["fitres.metrics"]) <= SENT_METRICS[cfg.privacy.mode]
    assert not _keys(replies) & UNNOISED
    saved = json.loads((out / "results.json").read_text())
    assert not _keys(saved) & (UNNOISED | CLIENT_COUNTS)


def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    ref = RdpAccountant()
    ref.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps))
    return ref.get_epsilon(delta)


def test_per_client_noise_run_weighted_mean_no_leak_nan_generator(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    cfg, gan, out = _setup(tmp_path, "sample")
    steps: list[tuple] = []
    taps = tmp_path / "uploads"
    store = out / "client-store"
    d_cfg = discriminator_config(cfg, gan)
    results = run_hfgan(
        cfg,
        gan,
        out_dir=out,
        outer_mods=[
            Wiretap(tmp_path / "wire"),
            GeneratorLeakCheck(d_cfg, gan, store, tmp_path / "checks"),
            UploadTap(taps),
        ],
        nan_partitions=[1],
        on_step=lambda *a: steps.append(a),
    )
    sizes = _public_sizes(cfg)
    assert len(set(sizes)) > 1  # unequal sizes: weighting by the clear weight 1 would fail the check below
    assert len(steps) == gan.rounds
    for rnd, _, gradient, _ in steps:  # the server sees exactly these uploads: D steps with their weighted mean
        expected = [np.asarray(a) for a in _weighted_mean(_uploads(taps, rnd, sizes))]
        assert all(np.allclose(g, e, atol=1e-6) for g, e in zip(gradient, expected, strict=True))
    dataset, _ = task.load_federated_data(cfg)
    _adam_replay(cfg, gan, dataset.info, steps)
    assert len(list((tmp_path / "checks").iterdir())) >= gan.rounds * cfg.data.num_clients
    # every upload has D's shapes: nothing else leaves the client
    d_shapes = [
        tuple(p.shape) for p in initial_discriminator(discriminator_config(cfg, gan), gan, dataset.info).parameters()
    ]
    assert all([a.shape for (a,) in [(x,) for x in _uploads(taps, 1, sizes)[0][0]]] == d_shapes for _ in [0])
    # the NaN generator: stopped, reported, the run went on
    assert results["g_stopped"] == {"1": 1}
    assert GeneratorStore(store).load(1, cfg, gan, dataset.info)[2]["stopped"] is True
    assert all(np.isfinite(a).all() for a in steps[-1][3])
    details = results["privacy_details"]
    expected_eps = _rdp_epsilon(details["noise_multiplier"], details["sample_rate"], gan.rounds, cfg.privacy.delta)
    assert results["epsilon_discriminator"] == pytest.approx(expected_eps, rel=0.01)
    _check_wire(tmp_path / "wire", cfg, out)


def test_distributed_secagg_run_weighted_mean_and_ledger(tmp_path: Path) -> None:
    cfg, gan, out = _setup(tmp_path, "distributed")
    steps: list[tuple] = []
    taps = tmp_path / "uploads"  # inside secaggplus_mod: each client's clipped, noised gradient before masking
    results = run_hfgan(
        cfg,
        gan,
        out_dir=out,
        outer_mods=[Wiretap(tmp_path / "wire")],
        inner_mods=[UploadTap(taps)],
        on_step=lambda *a: steps.append(a),
    )
    sizes = _public_sizes(cfg)
    assert [r["round_failed"] for r in results["rounds"]] == [False] * gan.rounds
    for rnd, _, gradient, _ in steps:  # SecAgg+ unmasked the weighted mean (up to its quantisation error)
        expected = _weighted_mean(_uploads(taps, rnd, sizes))
        bound = results["secagg"]["max_abs_error_bound_observed"]
        assert all(np.max(np.abs(g - e)) <= bound + 1e-6 for g, e in zip(gradient, expected, strict=True))
    dataset, _ = task.load_federated_data(cfg)
    _adam_replay(cfg, gan, dataset.info, steps)
    details = results["privacy_details"]
    assert details["noise_share"] == pytest.approx(details["noise_multiplier"] / np.sqrt(cfg.data.num_clients))
    expected_eps = _rdp_epsilon(details["noise_multiplier"], details["sample_rate"], gan.rounds, cfg.privacy.delta)
    assert results["epsilon_discriminator"] == pytest.approx(expected_eps, rel=0.01)
    assert results["epsilon_synthetic_images"] == results["epsilon_discriminator"]
    ledger = [tuple(e) for e in details["ledger"]["history"]]  # what a later mechanism composes with
    assert sum(e[2] for e in ledger) == gan.rounds and {e[:2] for e in ledger} == {
        (details["noise_multiplier"], details["sample_rate"])
    }
    saved = json.loads((out / "results.json").read_text())
    assert saved["epsilon_discriminator"] == results["epsilon_discriminator"]
    _check_wire(tmp_path / "wire", cfg, out)  # the real weights rode inside SecAgg+'s masked vectors


def _weighted_mean(uploads):
    from privmed.gan.hfgan import weighted_mean

    return weighted_mean(uploads)
