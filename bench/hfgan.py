"""HF-GAN on PneumoniaMNIST and BreastMNIST, 10 clients, Dirichlet alpha = 0.1: do its synthetic images help?

The issue's tables (one per dataset), rows on the same partitions, seed and classifier rounds:

- (a) FedAvg; (b) FedAvg + classic augmentation (random flips and shifts, privmed's ``train.augment``);
  (c) FedAvg + HF-GAN (each client adds labelled images of its own G_i, class-balanced);
- (d) each with DP: the classifier with DP-SGD per client (``privacy.mode = "sample"``) at epsilon_clf, and for
  (c) D trained with distributed noise under SecAgg+ (``privacy.mode = "distributed"``) at epsilon_D.

Columns: test accuracy, macro-F1, AUC of the federated classifier (last round); TSTR (accuracy of a small CNN
trained only on the synthetic images, on the real test split) and its ratio to the same CNN trained on the real
training split; IS and FID with a **domain feature extractor** (a small CNN trained on the real training split,
not Inception: not comparable with published numbers); epsilon of D (= of the synthetic images), of the
classifier, and a real image's total: the two ledgers composed in RDP (privmed.gan.ledger) for rows that use
both; wall time per GAN round on this CPU
(median of rounds 2..R). A centralised, non-private DCGAN (same G and D, same D:G ratio, same number of D steps,
plain torch) gives the FID reference of the goal "private federated FID <= 2x centralised".

A reduced, honest run (the 2-hour budget on a shared 2-core CPU): few GAN rounds and classifier rounds, one seed;
the numbers say what this budget reaches, not what HF-GAN can reach. Sample grids are written to the run folder
(outside the repository: images made from MedMNIST files are never committed).

Usage::

    python bench/hfgan.py --datasets pneumoniamnist breastmnist --gan-rounds 150 --clf-rounds 10

The DP classifier rows with a DP-SGD recipe that leaves the majority class (``bench/results/hfgan-dprows.md``;
the recipe of ``configs/pneumonia-dp-tuned.toml``: GroupNorm CNN, C = 1, lr 0.5 with cosine decay, FedAvgM 0.9,
EMA 0.8 of the global model, batch 64, 20 rounds)::

    python bench/hfgan.py --datasets pneumoniamnist --clf-rounds 20 --name hfgan-dprows --work /tmp/privmed-dprows \\
        --only "(a) + DP" "(b) + DP" "(c) + DP" "(c0) + DP" --set model.width=32 train.batch_size=64 train.lr=0.5 \\
        train.weight_decay=0.0 train.lr_schedule='cosine' federation.strategy='fedavgm' \\
        federation.server_momentum=0.9 federation.ema_decay=0.8 privacy.grad_sample_mode='bk'

(``(c) + DP`` needs a ``gan DP`` row in the table file: its ``store`` is the DP generators' client store.)

The synthetic warm start (``bench/results/hfgan-warm.md``): phase 1, ``--warm-rounds`` rounds of non-private FedAvg
on images of the DP G_i alone at uniform labels (``gan.augment_mode = "synthetic-only"``: post-processing of D, so
epsilon_D and nothing more), then the DP classifier rows' recipe started from phase 1's final weights
(``model.init_from``); its control repeats both phases with untrained G_i::

    python bench/hfgan.py --datasets pneumoniamnist --clf-rounds 20 --name hfgan-warm --work /tmp/privmed-warm \
        --dp-store /tmp/privmed-tstr-fed-fix600/gan-dp/client-store --warm-rounds 5 --warm-ratio 2 \
        --only "(c') phase 1: synthetic only, no DP" "(c') warm start + DP" "(c') warm start + HF-GAN + DP" \
        "(c0') phase 1: untrained G_i, no DP" "(c0') warm start from untrained G_i + DP" --set <the DP recipe above>

The pooled phase 1 (``bench/results/hfgan-same-epsilon-pool.md``): ``--warm-rounds 40 --warm-per-client 256`` (every
client the same 256 images of its G_i: equal FedAvg weights, so the average approaches the pool of all G_i).

The classifier with D's architecture (``bench/results/hfgan-dclf.md``; preset ``pneumonia-hfgan-synthetic``): phase 1
alone with ``--warm-set model.name='dcgan-d' model.init_from='<gan run>/discriminator.pt'`` (D's trunk and class
projection; ε_D only), against (a) / (b) + DP with the same architecture, ``--set model.name='dcgan-d' train.lr=0.125``
(the step chosen on validation macro-F1) and ``--epsilon-c 10``; ``bench/hfgan_eps10.py`` tabulates the draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privmed.config import Config
from privmed.federation import task
from privmed.gan.config import GanConfig, load_gan_config
from privmed.gan.hfgan import GeneratorStore, adam, d_loss, new_gan, train_generator, uniform_labels
from privmed.gan.ledger import classifier_histories, compose_with_d
from privmed.results import machine, write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = "/work/shared/data/medmnist"
PRESETS = {"pneumoniamnist": "pneumonia-hfgan", "breastmnist": "breast-hfgan"}
log = logging.getLogger("bench.hfgan")
#: The control row: the same class-balanced synthetic labels, images of *untrained* generators (an empty store:
#: every client's G_i at its initialisation). It separates what HF-GAN's training adds from what relabelling adds.
CONTROL = "(c0) + untrained G_i (control)"
CONTROL_DP = "(c0) + DP"
#: The synthetic warm start (issue 11, "(c) + DP" goal): phase 1, non-private FedAvg on images of the DP G_i alone at
#: uniform labels (``gan.augment_mode = "synthetic-only"``: costs epsilon_D, nothing more); phase 2, the DP
#: classifier run started from phase 1's final weights (``model.init_from``), without or with the "add" augmentation.
WARM = "(c') phase 1: synthetic only, no DP"
WARM_DP = "(c') warm start + DP"
WARM_AUG_DP = "(c') warm start + HF-GAN + DP"
#: its control: the same two phases with *untrained* G_i (an empty store), separating what the DP generators' images
#: teach from what any non-private pretraining (a start other than the random one) gives
WARM0 = "(c0') phase 1: untrained G_i, no DP"
WARM0_DP = "(c0') warm start from untrained G_i + DP"
WARM_ROWS = (WARM, WARM_DP, WARM_AUG_DP, WARM0, WARM0_DP)
#: phase 1's recipe: plain SGD without the DP recipe's large step (lr 0.5 is for clipped, noised gradients), no
#: server momentum, no EMA; ``--warm-set`` adds to it
WARM_RECIPE = (
    "train.lr=0.05",
    "train.lr_schedule='constant'",
    "federation.strategy='fedavg'",
    "federation.server_momentum=0.0",
    "federation.ema_decay=0.0",
)


def gan_row(cfg: Config, gan: GanConfig, out: Path, *, private: bool, epsilon: float) -> dict[str, Any]:
    """Train HF-GAN (non-private, or distributed DP under SecAgg+) and evaluate its synthetic images."""
    from privmed.gan.evaluate import evaluate_synthetic
    from privmed.gan.run import run_hfgan, store_dir

    privacy = (
        dataclasses.replace(cfg.privacy, mode="distributed", epsilon=epsilon)
        if private
        else dataclasses.replace(cfg.privacy, mode="none")
    )
    run_cfg = dataclasses.replace(cfg, privacy=privacy, secagg=dataclasses.replace(cfg.secagg, enabled=private))
    results = run_hfgan(run_cfg, gan, out_dir=out)
    results["evaluation"] = evaluate_synthetic(run_cfg, gan, store_dir(gan, out), out)
    write_json_atomic(out / "results.json", results)
    ev = results["evaluation"]
    return {
        "store": str(store_dir(gan, out)),
        "epsilon_D": results["epsilon_discriminator"],
        "noise_multiplier": (results.get("privacy_details") or {}).get("noise_multiplier"),
        "gan_round_seconds": results["timing"]["steady_round_seconds_median"],
        "gan_round1_seconds": results["timing"]["round1_seconds"],
        "gan_total_seconds": results["timing"]["total_seconds"],
        "fid": ev["fid"],
        "fid_train_vs_test": ev["fid_train_vs_test"],
        "is": ev["is"],
        "is_real_test": ev["is_real_test"],
        "tstr": ev["tstr"],
        "trtr": ev["trtr"],
        "tstr_ratio": ev["tstr_ratio"],
        "g_stopped": results["g_stopped"],
    }


def centralized_gan_fid(cfg: Config, gan: GanConfig, out: Path) -> dict[str, Any]:
    """A non-private centralised DCGAN (same G, D, Adam, D:G ratio and number of D steps; ``gan.batch_size`` real
    images of the whole training split and as many fakes as a federated D step sees per step; plain torch),
    evaluated like HF-GAN's generators: the FID reference."""
    from privmed.data.base import to_torch
    from privmed.gan.evaluate import evaluate_synthetic

    dataset, _ = task.load_federated_data(cfg)
    info = dataset.info
    torch.manual_seed(cfg.train.seed)
    g, d = new_gan(cfg, gan, info)
    g_opt, d_opt = adam(g.parameters(), gan, gan.lr_g), adam(d.parameters(), gan, gan.lr_d)
    x_all, y_all = to_torch(dataset.train, info).tensors
    gen = torch.Generator().manual_seed(cfg.train.seed)
    n_fake = gan.fake_batch * cfg.data.num_clients  # the fakes of one federated D step (every client's)
    started = time.perf_counter()
    for step in range(gan.rounds):
        if step % gan.d_steps_per_g_step == 0:
            train_generator(g, g_opt, d, steps=gan.g_steps, batch=gan.g_batch, generator=gen, aux_weight=gan.aux_weight)
        idx = torch.randint(0, len(x_all), (gan.batch_size,), generator=gen)
        y_fake = uniform_labels(n_fake, info.n_labels, gen)
        with torch.no_grad():
            x_fake = g(torch.randn(n_fake, gan.latent_dim, generator=gen), y_fake)
        loss = (
            d_loss(d, x_all[idx], y_all[idx], real=True, aux_weight=gan.aux_weight).mean()
            + d_loss(d, x_fake, y_fake, real=False).mean()
        )
        d_opt.zero_grad()
        loss.backward()
        d_opt.step()
    seconds = time.perf_counter() - started
    store = out / "client-store"
    GeneratorStore(store).save(0, g, g_opt, {"stopped": False, "reason": "", "g_updates": 0})
    one = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_clients=1))
    ev = evaluate_synthetic(one, gan, store, out)
    return {"fid": ev["fid"], "is": ev["is"], "tstr": ev["tstr"], "tstr_ratio": ev["tstr_ratio"], "seconds": seconds}


def classifier_row(
    cfg: Config, gan: GanConfig, out: Path, *, augment: bool, store: str | None, epsilon: float | None
) -> dict[str, Any]:
    """The federated classifier (privmed's app): plain, classic augmentation, or with the G_i of ``store``."""
    from privmed.federation.run import run_federated
    from privmed.gan.augment import run_augmented_federated

    privacy = (
        dataclasses.replace(cfg.privacy, mode="sample", epsilon=epsilon)
        if epsilon is not None
        else dataclasses.replace(cfg.privacy, mode="none")
    )
    clf = dataclasses.replace(
        cfg,
        privacy=privacy,
        secagg=dataclasses.replace(cfg.secagg, enabled=False),
        train=dataclasses.replace(cfg.train, augment=augment),
        federation=dataclasses.replace(cfg.federation, fraction_evaluate=0.0),
    )
    if store is None:
        results = run_federated(clf, out_dir=out)
    else:
        results = run_augmented_federated(clf, gan, store, out_dir=out)
    test, val = results["final"]["test"], results["final"]["val"] or {}
    return {
        **classifier_epsilons(results),
        "classifier_ledgers": classifier_histories(results),
        "val_macro_f1": val.get("macro_f1"),
        "val_auc": val.get("auc"),
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "auc": test["auc"],
        "vt_macro_f1": test.get("vt_macro_f1"),
        "balanced_accuracy": test.get("balanced_accuracy"),
        "recall_per_class": binary_recalls(clf, test),
        "classifier_round_seconds": results["timing"]["steady_round_seconds_median"],
    }


def binary_recalls(cfg: Config, test: dict[str, Any]) -> list[float] | None:
    """Test recall of class 0 and class 1 of a binary task, from accuracy, balanced accuracy and the test split's
    class shares (r0 + r1 = 2 · bal. acc., p0 · r0 + p1 · r1 = acc.): a recall near 0 means one class is never
    predicted. None for other tasks or when the shares are equal."""
    if test.get("balanced_accuracy") is None:
        return None
    dataset, _ = task.load_federated_data(cfg)
    labels = dataset.test.class_labels
    if dataset.info.n_labels != 2 or len(labels) == 0:
        return None
    p1 = float(np.mean(labels == 1))
    if abs(2 * p1 - 1) < 1e-9:
        return None
    r1 = (test["accuracy"] - 2 * test["balanced_accuracy"] * (1 - p1)) / (2 * p1 - 1)
    return [2 * test["balanced_accuracy"] - r1, r1]


def classifier_epsilons(results: dict[str, Any]) -> dict[str, float | None]:
    """ε of the DP classifier: the largest of the clients' own ledgers (authoritative), and the server's mirror.

    Under augmentation a client calibrates σ for its augmented set (real + synthetic images), while the server's
    mirror of ``privacy.mode = "sample"`` plans with the real partition sizes and so over-states ε for augmented
    clients; the clients' ledgers account the mechanism that actually ran.
    """
    last = results["rounds"][-1] if results.get("rounds") else {}
    clients = [c.get("epsilon") for c in last.get("clients", []) if c.get("epsilon") is not None]
    return {
        "epsilon_classifier": max(clients) if clients else None,
        "epsilon_classifier_server_mirror": last.get("epsilon"),
        "epsilon_classifier_server_public_sizes": (
            (results.get("augmentation") or {}).get("epsilon_server_public_sizes") or {}
        ).get("max"),
    }


def dp_store(args: argparse.Namespace, rows: dict[str, Any]) -> str:
    """The DP generators' client store for ``(c) + DP``: ``--dp-store`` when given, else the table's ``gan DP`` row."""
    return args.dp_store or rows["rows"]["gan DP"]["store"]


def dp_generators(args: argparse.Namespace) -> dict[str, Any]:
    """For a ``--dp-store`` row: those generators' store and epsilon_D (from their run's results.json); their TSTR
    and FID are measured by bench/hfgan_tstr.py (another protocol), not copied here."""
    if not args.dp_store:
        return {}
    results = Path(args.dp_store).parent / "results.json"
    eps = json.loads(results.read_text()).get("epsilon_discriminator") if results.is_file() else None
    return {"generators": {"store": args.dp_store, "epsilon_D": eps, "evaluated_in": "bench/results/hfgan_tstr.md"}}


def warm_phase1(cfg: Config, gan: GanConfig, args: argparse.Namespace, store: str, out: Path) -> dict[str, Any]:
    """Phase 1 of the warm start: ``--warm-rounds`` rounds of non-private FedAvg, every client on images of its G_i
    in ``store`` alone (``--warm-per-client`` of them, else ``round(warm_ratio · n)``, at uniform labels), with
    classic augmentation of those images when ``--warm-set train.augment=true``. Its updates are post-processing of
    D: ε_D."""
    over = [*WARM_RECIPE, *args.warm_set, f"federation.rounds={args.warm_rounds}"]
    phase1 = with_overrides(cfg, over)
    warm_gan = dataclasses.replace(
        gan,
        augment_mode="synthetic-only",
        class_balance=False,
        augment_ratio=args.warm_ratio,
        synthetic_per_client=args.warm_per_client,
    )
    row = classifier_row(phase1, warm_gan, out, augment=phase1.train.augment, store=store, epsilon=None)
    return {
        **row,
        "phase1_dir": str(out),
        "phase1_overrides": over,
        "warm_ratio": args.warm_ratio,
        "warm_per_client": args.warm_per_client,
    }


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``section.key=value`` overrides (TOML values) applied, checked like a config file's keys."""
    from privmed.config import apply_overrides, from_dict

    return from_dict(apply_overrides(cfg.to_dict(), overrides), source=cfg.source)


def warm_dp_row(
    cfg: Config, gan: GanConfig, args: argparse.Namespace, phase1: str, out: Path, *, store: str | None
) -> dict[str, Any]:
    """Phase 2: the DP classifier (the (a) + DP recipe, epsilon_clf) from phase 1's final weights (``phase1``, a run
    folder), with the images of the G_i in ``store`` added as in (c) + DP, or without (``None``)."""
    warm = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=phase1))
    row = classifier_row(warm, gan, out, augment=False, store=store, epsilon=args.epsilon_c)
    return {**row, "init_from": phase1}


def run_dataset(name: str, args: argparse.Namespace, payload: dict[str, Any], save: Any) -> None:
    cfg, gan = load_gan_config(
        PRESETS[name],
        overrides=[
            f"gan.rounds={args.gan_rounds}",
            f"gan.eval_samples={args.eval_samples}",
            f"gan.eval_epochs={args.eval_epochs}",
            f"federation.rounds={args.clf_rounds}",
            *args.set,
        ],
    )
    root = Path(args.work) / name
    rows: dict[str, Any] = payload["datasets"].setdefault(name, {"rows": {}})
    rows["config"] = {"gan": dataclasses.asdict(gan), "classifier": cfg.to_dict(), "source": cfg.source}
    plan = [
        ("gan non-private", lambda: gan_row(cfg, gan, root / "gan-none", private=False, epsilon=args.epsilon_d)),
        ("gan DP", lambda: gan_row(cfg, gan, root / "gan-dp", private=True, epsilon=args.epsilon_d)),
        ("centralised DCGAN", lambda: centralized_gan_fid(cfg, gan, root / "central")),
        ("(a) FedAvg", lambda: classifier_row(cfg, gan, root / "a", augment=False, store=None, epsilon=None)),
        ("(b) + classic aug.", lambda: classifier_row(cfg, gan, root / "b", augment=True, store=None, epsilon=None)),
        (
            "(c) + HF-GAN",
            lambda: classifier_row(
                cfg, gan, root / "c", augment=False, store=rows["rows"]["gan non-private"]["store"], epsilon=None
            ),
        ),
        (
            CONTROL,
            lambda: classifier_row(cfg, gan, root / "c0", augment=False, store=str(root / "untrained"), epsilon=None),
        ),
        (
            "(a) + DP",
            lambda: classifier_row(cfg, gan, root / "a-dp", augment=False, store=None, epsilon=args.epsilon_c),
        ),
        (
            "(b) + DP",
            lambda: classifier_row(cfg, gan, root / "b-dp", augment=True, store=None, epsilon=args.epsilon_c),
        ),
        (
            "(c) + DP",
            lambda: {
                **classifier_row(
                    cfg, gan, root / "c-dp", augment=False, store=dp_store(args, rows), epsilon=args.epsilon_c
                ),
                **dp_generators(args),
            },
        ),
        (
            CONTROL_DP,
            lambda: classifier_row(
                cfg, gan, root / "c0-dp", augment=False, store=str(root / "untrained"), epsilon=args.epsilon_c
            ),
        ),
        (
            WARM,
            lambda: {**warm_phase1(cfg, gan, args, dp_store(args, rows), root / "warm-phase1"), **dp_generators(args)},
        ),
        (
            WARM_DP,
            lambda: {
                **warm_dp_row(cfg, gan, args, str(root / "warm-phase1"), root / "warm-dp", store=None),
                **dp_generators(args),
            },
        ),
        (
            WARM_AUG_DP,
            lambda: {
                **warm_dp_row(
                    cfg, gan, args, str(root / "warm-phase1"), root / "warm-aug-dp", store=dp_store(args, rows)
                ),
                **dp_generators(args),
            },
        ),
        (WARM0, lambda: warm_phase1(cfg, gan, args, str(root / "untrained"), root / "warm0-phase1")),
        (WARM0_DP, lambda: warm_dp_row(cfg, gan, args, str(root / "warm0-phase1"), root / "warm0-dp", store=None)),
    ]
    for label in args.rerun:  # rows of an earlier run that this run replaces
        rows["rows"].pop(label, None)
    for row in rows["rows"].values():  # rows of an earlier run (made before rows had a session) say so
        if "session" not in row:
            row.setdefault("carried_from", payload.get("previous_command") or "an earlier run")
    for label, fn in plan:
        if label in rows["rows"] and "error" not in rows["rows"][label]:
            continue
        if args.only and label not in args.only:
            continue
        started, load = time.perf_counter(), os.getloadavg()[0]
        try:
            rows["rows"][label] = with_real_image_epsilon({**fn(), "wall_seconds": time.perf_counter() - started})
        except Exception as exc:  # a failed row is recorded, not hidden, and the others still run
            log.exception("%s / %s failed", name, label)
            rows["rows"][label] = {"error": repr(exc), "wall_seconds": time.perf_counter() - started}
        rows["rows"][label].update(load_average_1min=[load, os.getloadavg()[0]], session=payload["command"])
        save()


def with_real_image_epsilon(row: dict[str, Any]) -> dict[str, Any]:
    """A row whose classifier is DP and whose images came from DP generators gets ``epsilon_real_image``: D's
    ledger and each client's classifier ledger composed in RDP and PRV (privmed.gan.ledger), not their sum."""
    store = (row.get("generators") or {}).get("store")
    ledgers = row.get("classifier_ledgers")
    gan_json = Path(store).parent / "results.json" if store else None
    if not ledgers or gan_json is None or not gan_json.is_file():
        return row
    return {**row, "epsilon_real_image": compose_with_d(json.loads(gan_json.read_text()), ledgers)}


def _f(value: Any, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def goals(rows: dict[str, Any]) -> list[str]:
    """The issue's three goals, met or not, from the measured rows (nothing when a row is missing)."""
    out = []

    def ok(flag: bool) -> str:
        return "met" if flag else "**not met**"

    def carried(label: str) -> bool:
        return "carried_from" in (rows.get(label) or {})

    def get(label: str, key: str) -> float | None:
        r = rows.get(label) or {}
        return r.get(key) if "error" not in r else None

    for suffix, tag in (("", "non-private"), (" + DP", "with DP")):
        c, a, b = (
            get("(c) + HF-GAN" if not suffix else "(c) + DP", "macro_f1"),
            get("(a) FedAvg" if not suffix else "(a) + DP", "macro_f1"),
            get("(b) + classic aug." if not suffix else "(b) + DP", "macro_f1"),
        )
        if None not in (a, b, c):
            gain = 100 * (c - max(a, b))
            old = " (rows of the earlier run †)" if carried("(c) + DP" if suffix else "(c) + HF-GAN") else ""
            out.append(
                f"- Goal HF-GAN >= +3 macro-F1 points over (a) and (b), {tag}: {gain:+.1f} points, "
                f"{ok(gain >= 3)}{old}."
            )
    for c_label, c0_label, tag in (("(c) + HF-GAN", CONTROL, ""), ("(c) + DP", CONTROL_DP, ", with DP")):
        c, c0 = get(c_label, "macro_f1"), get(c0_label, "macro_f1")
        if None not in (c, c0):
            out.append(
                f"- Control{tag}: HF-GAN's trained generators vs untrained ones with the same class-balanced labels: "
                f"{100 * (c - c0):+.1f} macro-F1 points (what the training of G_i adds beyond relabelling)."
            )
    gdp, central = rows.get("gan DP") or {}, rows.get("centralised DCGAN") or {}
    if (gdp.get("carried_args"), carried("gan DP")) != (central.get("carried_args"), carried("centralised DCGAN")):
        out.append(
            "- Goal private federated FID <= 2x centralised: not evaluated (the DP GAN and the centralised DCGAN come "
            "from runs with different settings, `carried_args` in the JSON)."
        )
        gdp = {k: v for k, v in gdp.items() if k != "fid"}
    if "fid" in gdp and "fid" in central:
        ratio = gdp["fid"] / max(central["fid"], 1e-12)
        floor = gdp.get("fid_train_vs_test") or 0.0
        caveat = (
            f" (but both are far from the data, FID >= 10x the real-vs-real floor {floor:.2f}: this compares early "
            "states of training)"
            if floor and min(gdp["fid"], central["fid"]) >= 10 * floor
            else ""
        )
        out.append(
            f"- Goal private federated FID <= 2x centralised non-private DCGAN: {ratio:.2f}x, {ok(ratio <= 2)}{caveat}."
        )
    if "tstr_ratio" in gdp:
        old = " Earlier run's DP GAN (†)." if carried("gan DP") else ""
        out.append(
            f"- Goal TSTR at epsilon_D = {gdp.get('epsilon_D') or 0:.1f} >= 0.95x trained-on-real: "
            f"{gdp['tstr_ratio']:.2f}x, {ok(gdp['tstr_ratio'] >= 0.95)} (TSTR accuracy {gdp['tstr']['accuracy']:.3f}, "
            f"macro-F1 {gdp['tstr']['macro_f1']:.3f}: compare with the majority-class rate of the test split).{old}"
        )
    return out + ([""] if out else [])


def load_note(payload: dict[str, Any]) -> str:
    """The 1-minute load average seen at the start and end of this run's rows (the machine is shared)."""
    loads = [
        x
        for data in payload["datasets"].values()
        for row in data["rows"].values()
        if "carried_from" not in row
        for x in row.get("load_average_1min", [])
    ]
    return f"1-min load average {min(loads):.1f}-{max(loads):.1f} at the rows' starts and ends" if loads else "load ?"


def ratio(payload: dict[str, Any]) -> int:
    """The D:G step ratio the GAN rows ran with."""
    for data in payload["datasets"].values():
        gan = (data.get("config") or {}).get("gan") or {}
        if gan.get("d_steps_per_g_step"):
            return int(gan["d_steps_per_g_step"])
    return 5


def markdown(payload: dict[str, Any]) -> str:
    from privmed.metrics.generative import FEATURES_NOTE

    a = payload["args"]
    lines = [
        "# HF-GAN: federated D from DP-noised gradients, local generators, synthetic augmentation",
        "",
        f"Machine: {payload['machine'].get('platform', '?')}, {payload['machine'].get('cpu_count', '?')} CPUs shared "
        f"with other engineers' jobs ({load_note(payload)}: every time below is inflated by that), "
        f"torch {payload['machine'].get('torch', '?')}, {payload['machine'].get('date', '')}. Seed 0 (one seed). "
        "10 clients, Dirichlet alpha = 0.1 (the partitions of `pneumonia-10c-a0.1` / `breast-10c-a0.1`). "
        "Command(s): `"
        + "`, `".join([payload.get("command", "")] + [p["command"] for p in payload.get("parallel_runs", [])])
        + "`.",
        "",
        *([f"Notes: {payload['notes']}", ""] if payload.get("notes") else []),
        f"**Reduced run** (a shared 2-core CPU): {a['gan_rounds']} GAN rounds (D steps; the presets say 1000), "
        f"{a['clf_rounds']} classifier rounds of 1 local epoch, {a['eval_samples']} synthetic images per class for "
        f"FID/IS/TSTR, evaluation CNNs trained {a['eval_epochs']} epochs; config overrides {a.get('set') or 'none'}. "
        f"epsilon_D = {a['epsilon_d']} (distributed noise under SecAgg+), epsilon_clf = {a['epsilon_c']} (DP-SGD per "
        "client), delta = 1e-5.",
        "",
        f"{FEATURES_NOTE}. TSTR: accuracy of a small CNN trained only on synthetic images, tested on the real test "
        "split (ratio: / the same CNN trained on the real training split). For rows with DP on both D and the "
        "classifier, a real image's total epsilon is D's and the classifier's ledgers composed in RDP "
        "(privmed.gan.ledger; the JSON keeps PRV and the plain sum) where the row recorded both ledgers, else the "
        "sum (sequential composition, an upper bound). Rows marked † come from an "
        "earlier run of this file (same partitions, seed and classifier rounds; its settings are each row's "
        "`carried_args` in the JSON): (a), (b), (c0) and their DP versions do not use the trained GAN, so they "
        "compare directly with this run's (c) rows; a carried (c) row is that earlier run's GAN.",
        "",
        *(
            ["Earlier commands (rows marked †): `" + "`, `".join(map(str, payload["earlier_commands"])) + "`.", ""]
            if payload.get("earlier_commands")
            else []
        ),
    ]
    for name, data in payload["datasets"].items():
        rows = data["rows"]
        gnp, gdp = rows.get("gan non-private", {}), rows.get("gan DP", {})
        central = rows.get("centralised DCGAN", {})
        lines += [
            f"## {name}",
            "",
            "| row | accuracy | macro-F1 | AUC | TSTR acc (ratio) | IS | FID | ε_D | ε_clf | ε total | s / GAN round |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        labels = ("(a) FedAvg", "(b) + classic aug.", "(c) + HF-GAN", CONTROL, "(a) + DP", "(b) + DP", "(c) + DP")
        for label in labels + tuple(extra for extra in (CONTROL_DP, *WARM_ROWS) if extra in rows):
            r = rows.get(label)
            if r is None:
                missing = "not in this run (--only)" if a.get("only") else "not run (out of time)"
                lines.append(f"| {label} | {missing} |  |  |  |  |  |  |  |  |  |")
                continue
            if "error" in r:
                lines.append(f"| {label} | failed: {r['error'][:80]} |  |  |  |  |  |  |  |  |  |")
                continue
            mark = " †" if "carried_from" in r else ""
            g = r.get("generators") or (gdp if label == "(c) + DP" else gnp if label == "(c) + HF-GAN" else None)
            eps_d = g.get("epsilon_D") if g else None
            eps_c = r.get("epsilon_classifier")
            composed = (r.get("epsilon_real_image") or {}).get("rdp", {}).get("max")
            total = composed if composed is not None else (eps_d or 0) + (eps_c or 0) if (eps_d or eps_c) else None
            tstr = f"{_f(g['tstr']['accuracy'])} ({_f(g['tstr_ratio'], 2)})" if g and "tstr" in g else "—"
            lines.append(
                f"| {label}{mark} | {_f(r['accuracy'])} | {_f(r['macro_f1'])} | {_f(r['auc'])} | {tstr} | "
                f"{_f(g.get('is') if g else None)} | {_f(g.get('fid') if g else None, 2)} | {_f(eps_d, 2)} | "
                f"{_f(eps_c, 2)} | {_f(total, 2)} | {_f(g.get('gan_round_seconds') if g else None, 2)} |"
            )
        lines += [""]
        recalls = [
            f"{label} {r['recall_per_class'][0]:.2f} / {r['recall_per_class'][1]:.2f}"
            for label, r in rows.items()
            if r.get("recall_per_class")
        ]
        if recalls:
            lines += [
                "Test recall of class 0 / class 1 (a recall near 0: that class is never predicted): "
                + "; ".join(recalls)
                + ".",
                "",
            ]
        if central and "fid" in central:
            lines.append(
                f"Centralised non-private DCGAN, same D steps: FID {_f(central['fid'], 2)}, IS {_f(central['is'])}, "
                f"TSTR {_f(central['tstr']['accuracy'])} (ratio {_f(central['tstr_ratio'], 2)}). "
                f"FID real train vs real test (the floor): {_f(gnp.get('fid_train_vs_test'), 2)}; "
                f"IS of the real test split: {_f(gnp.get('is_real_test'))}."
            )
        lines += goals(rows)
        for key, g in (("non-private", gnp), ("DP", gdp)):
            if g and "error" in g:
                lines.append(f"GAN {key} failed: {g['error'][:200]}")
            elif g:
                lines.append(
                    f"GAN {key}: round 1 {_f(g.get('gan_round1_seconds'), 1)} s (Ray start-up included), steady "
                    f"{_f(g.get('gan_round_seconds'), 2)} s/round, sigma {_f(g.get('noise_multiplier'), 3)}, "
                    f"stopped generators {g.get('g_stopped') or 'none'}."
                )
        lines.append("")
    lines += [
        "## Reading these numbers",
        "",
        f"- {a['gan_rounds']} D steps are {a['gan_rounds'] // ratio(payload)} G updates per client at a D:G ratio of "
        f"{ratio(payload)}; Bie et al. (TMLR 2023) reach FID 13.3 on MNIST at epsilon = 10 with 450,000 D steps at "
        "a ratio of 50 (9,000 G steps) on a GPU. This CPU budget is about 1/1000 of theirs: every FID / IS / TSTR "
        "here measures an early state of training, private and centralised alike (FID against the real-vs-real "
        "floor says how early; the sample grids in the run folders, not committed, show it).",
        "- IS uses a domain classifier trained for only a few epochs; with 2 classes IS lies in [1, 2] and is near 1 "
        "even on real test images when that classifier is unsure: uninformative here.",
        "- TSTR accuracy near the test split's majority-class rate means the TSTR classifier predicts one class.",
        f"- {a['clf_rounds']} classifier rounds: rows whose accuracy equals the majority-class rate with macro-F1 "
        "~0.38-0.42 (PneumoniaMNIST / BreastMNIST) predict one class everywhere; their differences are not evidence "
        "either way."
        + (
            " Every DP classifier row is such a row at this budget: the goal with DP cannot be judged here."
            if a["clf_rounds"] <= 5
            else " The per-class recalls under each table say which rows do."
        ),
        "- A gain of (c) over (a)/(b) counts for HF-GAN only when (c) also beats the control (c0), the same class-"
        "balanced labels on images of untrained generators: with noise-like images, relabelling alone can shift a "
        "skewed client's class prior. One seed: no error bars.",
        "- ε_clf is the largest of the clients' own DP-SGD ledgers. For (c) + DP the server's mirror of "
        '`privacy.mode = "sample"` (`epsilon_classifier_server_mirror` in the JSON) over-states it: it plans with '
        "the real partition sizes while each augmented client calibrated σ for its real + synthetic images; the "
        "augmented size n + round(ratio·n) is public, and `epsilon_classifier_server_public_sizes` is the server's "
        "accounting from it (equal to the clients' ledgers).",
        "- A full run (the presets' 1000 D steps) costs about 1000 x the steady time per GAN round above, per GAN. "
        "The DP GAN's round also runs SecAgg+'s four stages (key agreement, key shares, masked vectors, unmasking) "
        "with every client: the difference between its s / GAN round and the non-private one's; one client's "
        "compute alone, before and after the cost cuts, is in `hfgan_profile.md`.",
        "",
    ]
    return "\n".join(lines) + "\n"


def merge(name: str, others: list[str], *, notes: str = "") -> int:
    """Merge the rows of runs made in parallel (same settings) into ``name``'s table file.

    When the parts were run with other settings than ``name``, its rows that no part replaces are kept and marked
    ``carried_from`` / ``carried_args``, its commands move to ``earlier_commands`` and the parts' become the file's.
    """
    payload = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    parts = [json.loads((RESULTS_DIR / f"{other}.json").read_text()) for other in others]
    keys = ("gan_rounds", "clf_rounds", "eval_samples", "eval_epochs", "epsilon_d", "epsilon_c", "set")
    first = parts[0]["args"]
    for other, part in zip(others, parts, strict=True):
        if any(part["args"].get(k) != first.get(k) for k in keys):
            raise SystemExit(f"{other} was run with other settings than {others[0]}; not merged")
    runs = [{"name": other, "command": part.get("command")} for other, part in zip(others, parts, strict=True)]
    if any(payload["args"].get(k) != first.get(k) for k in keys):
        for data in payload["datasets"].values():
            for row in data["rows"].values():
                row.setdefault("carried_from", payload.get("command"))
                row.setdefault("carried_args", {k: payload["args"].get(k) for k in keys})
        earlier = [payload.get("command")] + [r["command"] for r in payload.pop("parallel_runs", [])]
        payload["earlier_commands"] = payload.get("earlier_commands", []) + earlier
        payload.pop("notes", None)
        payload["args"], payload["command"] = first, runs.pop(0)["command"]
    for part in parts:
        for dname, data in part["datasets"].items():
            merged = payload["datasets"].setdefault(dname, {"rows": {}})
            merged["rows"].update(data["rows"])
            merged["config"] = data.get("config", merged.get("config"))
    payload.setdefault("parallel_runs", []).extend(runs)
    if notes:
        payload["notes"] = notes
    write_json_atomic(RESULTS_DIR / f"{name}.json", payload)
    (RESULTS_DIR / f"{name}.md").write_text(markdown(payload))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--gan-rounds", type=int, default=150)
    parser.add_argument("--clf-rounds", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--eval-epochs", type=int, default=3)
    parser.add_argument("--epsilon-d", type=float, default=10.0)
    parser.add_argument("--epsilon-c", type=float, default=10.0)
    parser.add_argument("--work", default="/tmp/privmed-hfgan-bench", help="run folders (outside the repository)")
    parser.add_argument("--name", default="hfgan")
    parser.add_argument("--data-dir", default=os.environ.get("PRIVMED_DATA_DIR", DEFAULT_DATA_DIR))
    parser.add_argument(
        "--dp-store",
        default="",
        help="client store of other DP generators for (c) + DP (e.g. a bench/hfgan_tstr.py --federate dp run)",
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="ROW", help="run only these rows (labels)")
    parser.add_argument(
        "--rerun", nargs="+", default=[], metavar="ROW", help="drop these rows of an earlier run first, then run them"
    )
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--warm-rounds", type=int, default=5, help="rounds of the warm start's phase 1")
    parser.add_argument("--warm-ratio", type=float, default=2.0, help="phase 1: synthetic images per real image")
    parser.add_argument(
        "--warm-per-client",
        type=int,
        default=0,
        help="phase 1: images of G_i per client whatever its size (equal FedAvg weights; 0: --warm-ratio)",
    )
    parser.add_argument(
        "--warm-set", nargs="+", default=[], metavar="KEY=VALUE", help="phase 1: overrides after its recipe"
    )
    parser.add_argument("--notes", default="", help="notes for the table file (what this run is, what it is not)")
    parser.add_argument(
        "--merge", nargs="+", default=[], metavar="NAME", help="only merge bench/results/<NAME>.json into --name"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite bench/results/<NAME>.md from its JSON")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.name, args.merge, notes=args.notes)
    if args.render:
        (RESULTS_DIR / f"{args.name}.md").write_text(
            markdown(json.loads((RESULTS_DIR / f"{args.name}.json").read_text()))
        )
        return 0
    os.environ["PRIVMED_DATA_DIR"] = args.data_dir
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    json_path, md_path = RESULTS_DIR / f"{args.name}.json", RESULTS_DIR / f"{args.name}.md"
    payload: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {"datasets": {}}
    payload["previous_command"] = payload.get("command")
    payload.update(args=vars(args), machine=machine(), seeds=[0], command=" ".join(sys.argv))
    if args.notes:
        payload["notes"] = args.notes

    def save() -> None:
        write_json_atomic(json_path, payload)
        md_path.write_text(markdown(payload))

    started = time.perf_counter()
    for name in args.datasets:
        run_dataset(name, args, payload, save)
    payload["total_seconds"] = time.perf_counter() - started + payload.get("total_seconds", 0.0)
    steady = [
        r["gan_round_seconds"]
        for d in payload["datasets"].values()
        for r in d["rows"].values()
        if r.get("gan_round_seconds")
    ]
    payload["gan_round_seconds_median"] = statistics.median(steady) if steady else None
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
