"""`privmed attack train-prior`: a DCGAN trained on public images, the prior of the generative-prior attack.

    privmed attack train-prior --dataset breastmnist --split test --out priors/breast-test.pt
    privmed attack RECORD --attack generative-prior --set prior=priors/breast-test.pt --out DIR

Threat model: the attacker (the server) knows public images of the clients' kind. Train the prior on images no
attacked client holds: for BreastMNIST records of the training split, its test and/or validation split
(``--split val+test``), or another dataset of the same shape. Writes one checkpoint (the generator's weights and
what it was trained on; the images themselves are not in it) and prints its path. A leaked HF-GAN generator needs
no training: give the ``privmed gan`` run folder as the prior (``--set prior=RUN --set prior_client=3``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privmed.cli._common import console, help_text
from privmed.errors import ConfigError


def train_prior_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="privmed attack train-prior",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="a public image dataset (breastmnist, phantom, ...)")
    p.add_argument("--split", default="test", help="split(s) to train on, joined by '+' (default: test)")
    p.add_argument("--size", type=int, default=28, help="image side (default 28)")
    p.add_argument("--steps", type=int, default=2000, help="GAN steps (one D and one G step each; default 2000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--width", type=int, default=32, help="channels of G's and D's widest map at the image side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    return p


def train_prior_action(args: argparse.Namespace) -> int:
    from privmed.attacks.priors import PriorTraining, train_prior
    from privmed.data import SPLITS

    splits = [s.strip() for s in args.split.split("+") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if not splits or bad:
        raise ConfigError(f"--split {args.split!r}: use {', '.join(SPLITS)} joined by '+', e.g. --split val+test")
    if args.out.is_dir() or (args.out.exists() and not args.overwrite):
        raise ConfigError(f"{args.out} exists; choose another --out or pass --overwrite")
    settings = PriorTraining(
        steps=args.steps,
        batch_size=args.batch_size,
        latent_dim=args.latent_dim,
        g_width=args.width,
        d_width=args.width,
        seed=args.seed,
    )
    with console().status(f"training a DCGAN prior on {args.dataset} {args.split} ..."):
        meta = train_prior(args.dataset, splits, args.out, settings=settings, size=args.size)
    print(
        f"prior: {args.out} (DCGAN, {meta['images']} {meta['dataset']} images of {'+'.join(splits)}, "
        f"{settings.steps} steps, {meta['seconds']:.1f} s); threat model: {meta['threat']}"
    )
    return 0
