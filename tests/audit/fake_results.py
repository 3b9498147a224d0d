"""A small audit results payload (no training) for the report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def fake_results(*, violation: bool = False, attacks: bool = False, hfgan: bool = False) -> dict[str, Any]:
    """An audit's results as :func:`privmed.audit.pipeline.summarize` writes them, with made-up numbers.

    ``attacks``: with an honest-but-curious and a malicious attack entry (their grid is ``attacks/<name>.png``
    in the report's folder: :func:`write_fake_grids`). ``hfgan``: with an HF-GAN entry (its samples are
    ``hfgan/samples.png``, also written by :func:`write_fake_grids`).
    """
    rounds = [
        {"round": r, "val": {"accuracy": 0.5 + r / 40, "auc": 0.6 + r / 30}, "test": {"auc": 0.6 + r / 32},
         "epsilon": 0.8 * r}
        for r in range(1, 11)
    ]  # fmt: skip
    hist = {"edges": [0.0, 1.0, 2.0, 3.0], "in": [5, 10, 20], "out": [20, 10, 5]}
    lb = 9.5 if violation else 1.2
    payload = {
        "kind": "audit",
        "formal_epsilon": 8.0,
        "target_epsilon": 8.0,
        "delta": 1e-5,
        "privacy_mode": "distributed",
        "secagg": True,
        "break_noise": "off" if violation else "none",
        "canaries": 1000,
        "confidence": 0.95,
        "confidence_each": 0.99,
        "bounds": {
            "white-box": {
                "epsilon_lb": lb,
                "beta": 0.01,
                "delta": 1e-5,
                "m": 1000,
                "k_in": 50,
                "k_out": 50,
                "correct": 90,
                "method": "one-run",
                "score_histogram": hist,
            },
            "white-box, noise check": {
                "epsilon_lb": 0.0,
                "beta": 0.01,
                "delta": 1e-5,
                "ratio_ub": 1.02,
                "p_value": 0.3,
                "n": 5000,
                "method": "chi-square",
            },
        },
        "estimates": {"one-shot": {"epsilon_estimate": 6.5, "method": "one-shot", "statistic": "sum"}},
        "verdict": {"violations": ["white-box"] if violation else [], "ok": not violation},
        "stages": {
            "train": {"title": "training", "status": "done", "seconds": 60.0},
            "attacks": {"title": "attacks", "status": "skipped", "reason": "not available in this run"},
            "hfgan": {"title": "HF-GAN", "status": "skipped", "reason": "not available in this run"},
        },
        "federation": {
            "dataset": {"display_name": "phantom", "synthetic": True},
            "model": {"name": "cnn"},
            "rounds": rounds,
            "final": rounds[-1],
            "partition_sizes": [100, 200, 300],
        },
        "label_histograms": [[50, 50], [150, 50], [10, 290]],
        "total_seconds": 90.0,
        "config": {"data": {"seed": 0}, "train": {"seed": 0}},
        "config_source": "quickstart",
        "machine": {"cpu_count": 2},
    }
    if attacks:
        payload["attacks"] = {name: fake_attack(name, threat) for name, threat in FAKE_ATTACKS.items()}
        payload["stages"] |= {
            "attacks": {"title": "attacks", "status": "done", "seconds": 5.0},
            "malicious": {"title": "malicious", "status": "done", "seconds": 30.0},
        }
    if hfgan:
        payload["hfgan"] = {
            "epsilon_discriminator": 9.9, "epsilon_note": "post-processing", "rounds": 6, "fid": 40.0,
            "fid_train_vs_test": 2.0, "is": 1.5, "tstr_accuracy": 0.7, "trtr_accuracy": 0.9,
            "synthetic_images": 300, "features": "domain classifier features", "figure": "hfgan/samples.png",
        }  # fmt: skip
        payload["stages"]["hfgan"] = {"title": "HF-GAN", "status": "done", "seconds": 60.0}
    return payload


#: attack name -> threat, for :func:`fake_results`
FAKE_ATTACKS = {"inverting-gradients": "honest-but-curious", "imprint": "malicious"}


def fake_attack(name: str, threat: str, *, psnr: float = 9.0) -> dict[str, Any]:
    """One attack's results entry (:func:`privmed.audit.attack_stage.attack_record`), made up."""
    return {
        "attack": name,
        "threat": threat,
        "record": f"federation/records/round-001-{name}.npz",
        "record_kind": "aggregate",
        "round": 1,
        "client": None,
        "pool_size": 2000,
        "settings": {},
        "seconds": 3.0,
        "metrics": {
            "images": 4,
            "psnr": {"mean": psnr, "min": psnr - 1, "max": psnr + 1},
            "ssim": {"mean": 0.05, "min": 0.0, "max": 0.1},
            "floor_psnr": {"mean": 22.0, "min": 21.0, "max": 23.0},
            "above_floor": 0,
        },
        "epsilon_of_run": 8.0,
        "figure": f"{name}.png",
    }


def write_fake_grids(folder: Path) -> None:
    """A true | reconstructed | error grid of random synthetic images per fake attack, in ``folder/attacks``."""
    from privmed.attacks.figures import image_grid

    rng = np.random.default_rng(0)
    for name in FAKE_ATTACKS:
        images = rng.uniform(-1, 1, size=(4, 1, 28, 28))
        image_grid(folder / "attacks" / f"{name}.png", images, input_range=(-1.0, 1.0), truth=images[::-1])
    image_grid(folder / "hfgan" / "samples.png", rng.uniform(-1, 1, size=(6, 1, 28, 28)), input_range=(-1.0, 1.0))


def fake_sweep(*, violation: bool = False) -> dict[str, Any]:
    """A sweep's results as :func:`privmed.audit.sweep.audit_sweep` writes them, with made-up numbers."""
    runs = []
    for eps in (2.0, 4.0, 8.0):
        bad = ["white-box, noise check"] if violation and eps == 8.0 else []
        runs.append({
            "value": eps, "folder": f"runs/epsilon-{eps:g}-0123456789ab", "formal_epsilon": eps - 0.01,
            "bounds": {"white-box": eps / 8, "white-box, noise check": 9.0 if bad else 0.0},
            "best_bound": 9.0 if bad else eps / 8,
            "test": {"accuracy": 0.6 + eps / 40, "macro_f1": 0.55 + eps / 40, "auc": 0.7 + eps / 30},
            "attacks": {"inverting-gradients": {"psnr": 8 + eps / 4, "fmse": None, "floor_psnr": 22.0,
                                                "threat": "honest-but-curious"}},
            "violations": bad,
        })  # fmt: skip
    violations = [f"privacy.epsilon = {r['value']:g}: {v}" for r in runs for v in r["violations"]]
    return {
        "kind": "audit-sweep",
        "axis": "privacy.epsilon",
        "values": [r["value"] for r in runs],
        "runs": runs,
        "verdict": {"violations": violations, "ok": not violations},
        "config_source": "quickstart",
        "config": {},
        "machine": {"cpu_count": 2},
    }
