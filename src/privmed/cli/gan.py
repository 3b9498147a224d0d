"""`privmed gan CONFIG`: HF-GAN — a federated discriminator trained from DP-noised client gradients, a generator
per client that never leaves it, and (``--classifier``) the federated classifier trained with its images.

Writes ``<out>/results.json`` (D's ε = the synthetic images' ε, per-round time and ε, stopped generators, FID / IS
with a domain feature extractor, TSTR), ``<out>/samples.png`` (real vs synthetic per class and client; keep images
made from patient data out of any repository) and, with ``--classifier``, ``<out>/classifier/results.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from privmed.cli._common import add_set_argument, console, help_text, quiet_flower
from privmed.results import write_json_atomic


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gan",
        help="HF-GAN: federated D from DP-noised gradients, local generators, synthetic augmentation",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="TOML config file or preset name (e.g. gan-smoke, pneumonia-hfgan)")
    add_set_argument(parser, example="gan.rounds=50")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config>-hfgan)")
    parser.add_argument("--classifier", action="store_true", help="then train the federated classifier, augmented")
    parser.add_argument("--no-eval", action="store_true", help="skip FID / IS / TSTR and the sample grid")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from privmed.gan.config import load_gan_config
    from privmed.gan.evaluate import evaluate_synthetic, plot_curves
    from privmed.gan.hfgan import discriminator_config
    from privmed.gan.run import check_hfgan, run_hfgan, store_dir

    cfg, gan = load_gan_config(args.config, overrides=args.overrides)
    out = (args.out or Path("runs") / f"{Path(cfg.source).stem}-hfgan").resolve()
    check_hfgan(discriminator_config(cfg, gan), gan, out)  # bad input fails here, before Ray
    quiet_flower(args.verbose)
    con = console()

    def progress(event: str, payload: dict[str, Any]) -> None:
        if event == "round" and (payload["round"] % max(1, gan.rounds // 10) == 0 or payload["round"] == 1):
            eps = f"  ε {payload['epsilon']:.3f}" if "epsilon" in payload else ""
            con.print(f"GAN round {payload['round']:>4}/{gan.rounds}: {payload['wall_seconds']:.2f} s{eps}")

    results = run_hfgan(cfg, gan, out_dir=out, progress=progress)
    for pid, rnd in results["g_stopped"].items():
        con.print(
            f"client {pid}: its generator's loss turned NaN in round {rnd}; it was stopped at its last finite state"
        )
    if not args.no_eval:
        results["evaluation"] = evaluate_synthetic(cfg, gan, store_dir(gan, out), out)
        ev = results["evaluation"]
        con.print(
            f"synthetic images: FID {ev['fid']:.2f}, IS {ev['is']:.3f} (domain features, not Inception); TSTR "
            f"accuracy {ev['tstr']['accuracy']:.3f} vs {ev['trtr']['accuracy']:.3f} trained on real "
            f"(mean of {len(ev['tstr']['seeds'])} classifier seed(s))"
        )
    if args.classifier or gan.classifier:
        from privmed.gan.augment import classifier_config, run_augmented_federated
        from privmed.gan.ledger import real_image_epsilon

        clf_cfg = classifier_config(cfg, gan, out)
        clf = run_augmented_federated(clf_cfg, gan, store_dir(gan, out), out_dir=out / "classifier")
        test = (clf.get("final") or {}).get("test") or {}
        total = real_image_epsilon(results, clf)
        results["classifier"] = {
            "results": str(out / "classifier" / "results.json"),
            "final_test": test,
            "epsilon_real_image": total,
        }
        con.print(f"federated classifier with synthetic images: test accuracy {test.get('accuracy', float('nan')):.3f}")
        if total is not None:
            con.print(
                f"a real image's epsilon over D and the classifier: {total['rdp']['max']:.3f} (RDP), "
                f"{total['prv']['max']:.3f} (PRV) composed; {total['sum']['max']:.3f} summed"
            )
    write_json_atomic(out / "results.json", results)
    plot_curves(results, out / "gan_rounds.png")
    eps = results["epsilon_synthetic_images"]
    con.print(
        f"epsilon of D = epsilon of the synthetic images: {eps:.3f} at delta {results['delta']:g}"
        if eps is not None
        else "non-private run (privacy.mode = 'none'): the synthetic images carry no DP guarantee"
    )
    con.print(f"results: {out / 'results.json'}")
    return 0
