"""The audit's HF-GAN stage: train HF-GAN on the audit's federation and score its synthetic images.

Runs when the audited config file has a ``[gan]`` table (what ``privmed gan`` reads, :mod:`privmed.gan.config`):
:func:`privmed.gan.run.run_hfgan` trains the server's discriminator with the run's privacy and every
client's generator G_i (which only ever sees D), then :func:`privmed.gan.evaluate.evaluate_synthetic` scores
the pooled synthetic images (FID and IS on domain features, TSTR vs TRTR) and draws real vs synthetic
samples per class. Threat model: the server sees D's (noised, securely aggregated) updates, never a G_i;
D's ε is spent on the same data as the classifier's, so the two compose (the report says both).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privmed.config import Config

if TYPE_CHECKING:
    from privmed.gan.config import GanConfig

log = logging.getLogger(__name__)

#: The HF-GAN stage's folder inside the audit's output.
HFGAN_DIR = "hfgan"


def hfgan_config(cfg: Config) -> Config:
    """The audit's federation and privacy without its canaries, records and stage settings."""
    fed = dataclasses.replace(cfg.federation, record="")
    audit = dataclasses.replace(cfg.audit, canaries=0, work_dir="", attacks="", attack_settings={}, sweep={})
    return dataclasses.replace(cfg, federation=fed, audit=audit)


def check(cfg: Config, gan: GanConfig, scratch: Path) -> None:
    """HF-GAN's own checks (one message each, exit 2), on a scratch folder."""
    from privmed.gan.hfgan import discriminator_config
    from privmed.gan.run import check_hfgan

    check_hfgan(discriminator_config(hfgan_config(cfg), gan), gan, scratch)


def run_stage(cfg: Config, gan: GanConfig, out: Path) -> dict[str, Any]:
    """Train HF-GAN into ``<out>/hfgan`` and score it; the results entry (no pixels, the grid's file name)."""
    from privmed.gan.evaluate import evaluate_synthetic
    from privmed.gan.run import run_hfgan, store_dir

    folder = (out / HFGAN_DIR).resolve()
    shutil.rmtree(folder, ignore_errors=True)  # a resumed audit redoes HF-GAN whole
    run = run_hfgan(hfgan_config(cfg), gan, out_dir=folder)
    scores = evaluate_synthetic(cfg, gan, store_dir(gan, folder), folder, grids=True)
    log.info("HF-GAN: FID %.2f (train vs test %.2f)", scores["fid"], scores["fid_train_vs_test"])
    return {
        "epsilon_discriminator": run.get("epsilon_discriminator"),
        "epsilon_note": run.get("epsilon_note"),
        "rounds": gan.rounds,
        "fid": scores["fid"],
        "fid_train_vs_test": scores["fid_train_vs_test"],
        "is": scores["is"],
        "tstr_accuracy": (scores.get("tstr") or {}).get("accuracy"),
        "trtr_accuracy": (scores.get("trtr") or {}).get("accuracy"),
        "synthetic_images": scores["synthetic_images"],
        "features": scores["features"],
        "figure": str(Path(scores["grid"]).relative_to(out.resolve())) if scores.get("grid") else None,
    }
