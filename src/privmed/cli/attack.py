"""`privmed attack`: be the server and reconstruct the images behind an update record.

    privmed attack RECORD [--attack NAME] [--set KEY=VALUE ...] [--truth FILE] --out DIR
    privmed attack make-case --model NAME [--dataset D --split S --batch-size B --local-steps K ...] --out FILE
    privmed attack tune RECORD --attack NAME --trials N --study FILE.db [--truth FILE] [--set KEY=VALUE ...]
    privmed attack train-prior --dataset D --split test --out PRIOR.pt
    privmed attack list

An attack takes the record (what the server received: ``privmed federate --record`` or ``make-case``) and
nothing else; it is chosen by name from the registry (default: the first attack for the record's modality,
so an attack registered later for tables or series runs through the same command). ``--truth`` (default: the
``<record>.truth.npz`` beside the record, when there) scores the result: PSNR, SSIM, MSE after optimal
matching, label accuracy, and the floor (the mean training image). Writes ``DIR/metrics.json``,
``DIR/reconstruction.npz`` and, for images, ``DIR/grid.png`` (true | reconstructed | error). Bad input (a
record that does not fit its model, NaN in an update, a batch size its gradient contradicts, an unknown
attack, setting or regularizer, a newer record version) stops with one message and exit code 2 before
anything is written. Keep reconstructions of real data out of the repository (``runs/`` is ignored).
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privmed.cli._common import console
from privmed.cli.attack_prior import train_prior_action, train_prior_parser
from privmed.errors import ConfigError

#: the attack used when ``--attack`` is not given, by record modality
DEFAULT_ATTACK: dict[str, str] = {"image": "inverting-gradients"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "attack",
        help="gradient inversion: reconstruct inputs from an update record (also: make-case, tune, train-prior, list)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("-h", "--help", dest="attack_help", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


# -- parsers ------------------------------------------------------------------------------------------------
def _settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an attack setting (TOML value), e.g. --set iterations=500 --set tv=0.1 "
        "--set 'regularizers={group=0.01}'; repeatable",
    )


def _truth_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", type=Path, default=None, help="ground-truth file (default: <record>.truth.npz)")


def attack_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="privmed attack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("record", type=Path, help="an update record (.npz)")
    p.add_argument("--attack", default=None, help="attack name (privmed attack list); default by modality")
    _settings_args(p)
    _truth_arg(p)
    p.add_argument("--seed", type=int, default=0, help="the attacker's random starts")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def make_case_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privmed attack make-case", description="a synthetic record + its ground truth")
    p.add_argument("--model", required=True, help="a privmed model (convnet-small, mlp, cnn, dpresnet, ...)")
    p.add_argument("--width", type=int, default=None, help="model base width (default: the model's)")
    p.add_argument("--dataset", default="breastmnist", help="dataset name (default breastmnist)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--local-steps", type=int, default=1, help="1: the gradient (FedSGD); K: K SGD steps (FedAvg)")
    p.add_argument("--lr", type=float, default=0.1, help="the client's learning rate")
    p.add_argument("--trained-epochs", type=int, default=0, help="train the model this many epochs first")
    p.add_argument("--noise-multiplier", type=float, default=0.0, help="DP-SGD noise on the client's step (images)")
    p.add_argument(
        "--epsilon", type=float, default=None, help="tables and series: one DP-SGD step calibrated to this epsilon"
    )
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD clipping norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-index", type=int, default=0, help="which seeded random batch")
    p.add_argument("--out", type=Path, required=True, help="record file (.npz); the truth goes to <out>.truth.npz")
    return p


def tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privmed attack tune", description="Optuna over an attack's search space")
    p.add_argument("record", type=Path)
    p.add_argument("--attack", required=True)
    p.add_argument("--trials", type=int, default=20, help="trials to add to the study")
    p.add_argument("--study", type=Path, required=True, help="SQLite file of the study (resumed when it exists)")
    p.add_argument("--study-name", default=None)
    _settings_args(p)
    _truth_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the best settings here (JSON)")
    return p


# -- helpers ------------------------------------------------------------------------------------------------
def parse_settings(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (TOML values; a bare word is a string) to a dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. --set iterations=500")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out


def truth_path(record: Path, given: Path | None) -> Path | None:
    """``given``, else ``<record>.truth.npz`` when it exists."""
    if given is not None:
        return given
    beside = record.with_name(record.name.removesuffix(".npz") + ".truth.npz")
    return beside if beside.is_file() else None


def _choose(record: Any, name: str | None, settings: dict[str, Any]) -> Any:
    from privmed.attacks import load_families
    from privmed.attacks.base import attacks_for, get_attack, modality_of

    load_families()
    modality = modality_of(record)
    if name is None:
        name = DEFAULT_ATTACK.get(modality) or next(iter(attacks_for(modality)), None)
        if name is None:
            raise ConfigError(f"no attack is registered for {modality} records")
    attack = get_attack(name, **settings)
    attack.check_record(record)
    return attack


# -- actions ------------------------------------------------------------------------------------------------
def attack_action(args: argparse.Namespace) -> int:
    from privmed.attacks.record import UpdateRecord, load_mean_image, load_truth
    from privmed.results import machine, savez_atomic, write_json_atomic

    record = UpdateRecord.load(args.record)
    attack = _choose(record, args.attack, parse_settings(args.settings))
    tpath = truth_path(args.record, args.truth)
    truth = load_truth(tpath) if tpath is not None else None
    con = console()
    with con.status(f"[bold]{attack.name}[/bold] on {args.record.name} ..."):
        rec = attack.run(record, seed=args.seed)
    payload: dict[str, Any] = {
        "kind": "attack",
        "record": str(args.record),
        "record_meta": {k: v for k, v in record.meta().items() if k != "keys"},
        "attack": attack.name,
        "threat": attack.threat,
        "info": rec.info,
        "truth": str(tpath) if tpath else None,
        "metrics": None,
        "machine": machine(),
    }
    low, high = record.data.get("input_range", [-1.0, 1.0])
    modality = str(record.data.get("modality", "image"))
    if truth is not None and modality in SCORERS:
        payload["metrics"] = SCORERS[modality](
            rec.inputs,
            truth[0],
            input_range=(low, high),
            labels=rec.labels,
            true_labels=truth[1],
            mean_image=load_mean_image(tpath) if tpath else None,
            schema=record.data,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    arrays = {"inputs": rec.inputs}
    if rec.labels is not None:
        arrays["labels"] = rec.labels
    savez_atomic(args.out / "reconstruction.npz", arrays)
    FIGURES.get(str(record.data.get("modality", "image")), lambda *a: None)(args.out, rec, truth, payload, (low, high))
    write_json_atomic(args.out / "metrics.json", payload)
    _print_summary(con, payload)
    return 0


def _image_figure(out: Path, rec: Any, truth: Any, payload: dict[str, Any], rng: tuple[float, float]) -> None:
    from privmed.attacks.figures import image_grid

    metrics = payload.get("metrics") or {}
    payload["figure"] = str(
        image_grid(
            out / "grid.png",
            rec.inputs,
            input_range=rng,
            truth=truth[0] if truth is not None else None,
            order=metrics.get("order"),
            psnr=metrics.get("psnr_per_image"),
        )
    )


def _score_images(recon: Any, true: Any, *, schema: Any, **kwargs: Any) -> dict[str, Any]:
    from privmed.metrics.reconstruction import score

    return score(recon, true, **kwargs)


def _score_tabular(recon: Any, true: Any, *, schema: Any, **kwargs: Any) -> dict[str, Any]:
    from privmed.metrics.tabular import score_tabular

    return score_tabular(recon, true, schema)


#: record modality -> figure writer ``(out, reconstruction, truth, payload, input_range)``; a modality without
#: one gets none
FIGURES: dict[str, Callable[..., None]] = {"image": _image_figure}
#: record modality -> ``(reconstructed, true, *, input_range, labels, true_labels, mean_image, schema) -> metrics``
#: (``schema`` is the record's public ``data``; a modality without a scorer is reported without metrics)
SCORERS: dict[str, Callable[..., dict[str, Any]]] = {
    "image": _score_images,
    "table": _score_tabular,
    "series": _score_tabular,
}


def _print_summary(con: Any, payload: dict[str, Any]) -> None:
    info, m = payload["info"], payload["metrics"]
    line = f"{payload['attack']}: {info.get('num_images')} input(s), {info.get('iterations')} iterations"
    line += f", {info.get('seconds', 0):.1f} s"
    if m and "fmse" in m:  # tables and series
        line += f"; FMSE {m['fmse']:.3g}, similarity {m['similarity']:.5f}"
    elif m:
        line += f"; PSNR {m['psnr']['mean']:.2f} dB (min {m['psnr']['min']:.2f}, max {m['psnr']['max']:.2f})"
        line += f", SSIM {m['ssim']['mean']:.3f}"
        if "floor_psnr" in m:
            line += f"; floor {m['floor_psnr']['mean']:.2f} dB, {m['above_floor']}/{m['images']} above it"
        if m.get("label_accuracy") is not None:
            line += f"; labels {100 * m['label_accuracy']:.0f}%"
    con.print(line)


def make_case_action(args: argparse.Namespace) -> int:
    from privmed.attacks.cases import make_case
    from privmed.attacks.record import save_truth
    from privmed.data import load_dataset

    if args.dataset.lower() in TABULAR_DATASETS:
        return _make_tabular_case(args, load_dataset(args.dataset))
    case = make_case(
        args.model,
        dataset=args.dataset,
        split=args.split,
        batch_size=args.batch_size,
        local_steps=args.local_steps,
        lr=args.lr,
        seed=args.seed,
        batch_index=args.batch_index,
        width=args.width,
        trained_epochs=args.trained_epochs,
        noise_multiplier=args.noise_multiplier,
        max_grad_norm=args.max_grad_norm,
    )
    path = case.record.save(args.out)
    truth = save_truth(
        path.with_name(path.name.removesuffix(".npz") + ".truth.npz"),
        inputs=case.inputs,
        labels=case.labels,
        mean_image=case.mean_image,
    )
    console().print(f"record: {path} ({case.record.kind}); ground truth (keep it out of git): {truth}")
    return 0


#: datasets whose cases are tables or series (``privmed.data.tabular``), made by :func:`_make_tabular_case`
TABULAR_DATASETS = ("breast-cancer-table", "icu-synthetic")


def _series_kwargs(model: str, inputs: Any) -> dict[str, Any]:
    """``{"steps": T}`` for a model that flattens a series (``tabular-mlp``) given ``(N, T, F)`` inputs, else ``{}``."""
    import inspect

    from privmed.models import MODELS

    cls = MODELS.get(model)
    takes_steps = cls is not None and "steps" in inspect.signature(cls).parameters
    return {"steps": int(inputs.shape[1])} if takes_steps and inputs.ndim == 3 else {}


def _make_tabular_case(args: argparse.Namespace, dataset: Any) -> int:
    from privmed.attacks.case_tabular import DPStep, make_tabular_case
    from privmed.attacks.record import save_truth

    if args.local_steps != 1 or args.trained_epochs or args.noise_multiplier:
        raise ConfigError(
            "tables and series: make-case writes one FedSGD gradient of an untrained model; drop --local-steps, "
            "--trained-epochs and --noise-multiplier (use --epsilon for a DP-SGD step)"
        )
    dp = DPStep(epsilon=args.epsilon, max_grad_norm=args.max_grad_norm) if args.epsilon is not None else None
    record, inputs, labels = make_tabular_case(
        dataset,
        model=args.model,
        batch_size=args.batch_size,
        seed=args.seed,
        width=args.width,
        split=args.split,
        dp=dp,
        model_kwargs=_series_kwargs(args.model, dataset.split(args.split).images),
    )
    path = record.save(args.out)
    truth = save_truth(path.with_name(path.name.removesuffix(".npz") + ".truth.npz"), inputs=inputs, labels=labels)
    console().print(f"record: {path} ({record.kind}); ground truth (keep it out of git): {truth}")
    return 0


def tune_action(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from privmed.attacks import load_families
    from privmed.attacks.record import UpdateRecord, load_truth
    from privmed.attacks.tune import tune
    from privmed.results import write_json_atomic

    load_families()
    record = UpdateRecord.load(args.record)
    settings = parse_settings(args.settings)
    _choose(record, args.attack, settings)
    if args.trials < 1:
        raise ConfigError("--trials must be at least 1")
    tpath = truth_path(args.record, args.truth)
    truth = load_truth(tpath) if tpath is not None else None
    started = time.perf_counter()
    with Progress(console=console()) as bar:
        task = bar.add_task(f"tune {args.attack}", total=args.trials)
        result = tune(
            record,
            args.attack,
            study_path=args.study,
            trials=args.trials,
            fixed=settings,
            truth=truth,
            seed=args.seed,
            study_name=args.study_name,
            callback=lambda study, trial: bar.advance(task),
        )
    result["seconds"] = time.perf_counter() - started
    if args.out is not None:
        write_json_atomic(args.out, result)
    console().print(
        f"best {result['objective']} {result['best_value']:.4g} after {result['trials']} trials: "
        f"{result['best_settings']}"
    )
    return 0


def list_action(args: argparse.Namespace) -> int:
    from privmed.attacks import load_families
    from privmed.attacks.base import ATTACKS, REGULARIZERS

    load_families()
    for name, cls in sorted(ATTACKS.items()):
        print(f"{name:28s} {cls.threat:20s} {','.join(cls.modalities)}")
    print("regularizers: " + ", ".join(sorted(REGULARIZERS)))
    return 0


#: first word -> (parser, action); anything else is a record path
ACTIONS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "make-case": (make_case_parser, make_case_action),
    "tune": (tune_parser, tune_action),
    "train-prior": (train_prior_parser, train_prior_action),
    "list": (lambda: argparse.ArgumentParser(prog="privmed attack list"), list_action),
}


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if args.attack_help or not argv:
        attack_parser().print_help(sys.stdout)
        return 0 if args.attack_help else 2
    if argv[0] in ACTIONS:
        build, action = ACTIONS[argv[0]]
        return action(build().parse_args(argv[1:]))
    return attack_action(attack_parser().parse_args(argv))
