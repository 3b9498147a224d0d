"""Gradient inversion on a clinical table and on ICU series: the poster's table in privmed's form.

For each data set (the real Wisconsin breast-cancer table; synthetic ICU stays in the MIMIC-III benchmark
layout) and batch size, one FedSGD case (:func:`privmed.attacks.case_tabular.make_tabular_case`: a fresh
model, the mean gradient of one batch) is attacked with ``tabular-gm``:

- **prior mean**: no attack, the public per-feature mean as the reconstruction (the floor an attack must beat);
- **naive**: N(0, 1) start, linear LR decay, α_TV = 0.1 (Jeon et al. 2021's baseline, the poster's first row);
- **BO (prior, cosine)**: Gaussian-prior start, cosine annealing, (lr, α_TV, α_BC, α_NN) chosen by a TPE
  study (:func:`privmed.attacks.tune_tabular.tune_tabular`) on the attacker's own objective, the final
  gradient-matching loss; the row is the study's pick;
- **best (oracle)**: the study's trial with the lowest FMSE, picked with the ground truth (an upper bound on
  what the attacker can choose, as the poster's "best").

Then the BO pick of batch 1 attacks one DP-SGD step at several ε (noise calibrated for one release at
sampling rate 1: the least noise any run with that budget adds to one update).

Writes ``bench/results/attack_tabular.json`` and ``.md`` (+ one history plot per study); the studies live in
``bench/runs/attack_tabular.db`` and resume.

Usage::

    nice python bench/attack_tabular.py                 # everything
    nice python bench/attack_tabular.py --quick         # a few iterations, to check the plumbing
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from privmed.attacks import get_attack
from privmed.attacks.case_tabular import DPStep, make_tabular_case
from privmed.attacks.record import UpdateRecord
from privmed.attacks.tune_tabular import plot_history, tune_tabular
from privmed.data import load_dataset
from privmed.metrics.tabular import score_tabular
from privmed.results import machine, write_json_atomic

log = logging.getLogger("bench.attack_tabular")
HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
STUDIES = HERE / "runs" / "attack_tabular.db"

ICU = {"n_train": 500, "n_val": 50, "n_test": 50}
#: case -> (data set, loader options, model, model kwargs, iterations)
CASES: dict[str, tuple[str, dict[str, Any], str, dict[str, Any], int]] = {
    "breast-cancer-table": ("breast-cancer-table", {}, "tabular-mlp", {"width": 64}, 3000),
    "icu-synthetic": ("icu-synthetic", ICU, "tabular-mlp", {"width": 64, "steps": 48}, 1500),
    # the temporal model federated training uses on series (a 1-D CNN along time)
    "icu-synthetic-cnn": ("icu-synthetic", ICU, "series-cnn", {"width": 64}, 1500),
}
NAIVE = {"init": "randn", "schedule": "linear", "alpha_tv": 0.1, "lr": 0.01, "loss": "cosine"}
BO_BASE = {"init": "prior", "schedule": "cosine", "loss": "cosine"}
#: what the tables mean and do not mean (written into the .md)
NOTES: list[str] = [
    "- **Synthetic**: every `icu-synthetic` row is on synthetic ICU stays (privmed's generator in the MIMIC-III "
    "benchmark layout, 48 h × 76), not patient data. The poster's anchor (MIMIC-III, 5,000 iterations, lr 0.01: "
    "naive FMSE 0.69 / similarity 0.893, best FMSE 6.4e-6 / similarity 0.99916) is on real MIMIC-III with a model "
    "the poster does not name: a reference, not a like-for-like comparison.",
    "- The ICU model here is an MLP over the flattened 48 × 76 series (width 64): its first layer's weight gradient "
    "is each example's input times a per-unit factor, so one example is identifiable, and a batch up to the width "
    "in principle (Wang, Lee & Lei 2022). The 1-D CNN that federated training uses on series (convolution sums "
    "over time, so its first-layer gradient mixes the steps) is a case of its own (`--datasets icu-synthetic-cnn`), "
    "measured at batch 1 only with 4 trials × 1000 iterations in [attack_tabular-cnn.md](attack_tabular-cnn.md): "
    "FMSE 0.178 / similarity 0.653 for the BO pick against the prior mean's 0.134 / 0.665, i.e. nothing recovered "
    "beyond the prior at that budget; whether more iterations or a wider CNN change that was not measured.",
    "- The BO row is the attacker's own choice: the TPE trial with the lowest final gradient-matching loss, no "
    "truth used. The oracle row picks by FMSE against the truth: an upper bound, like the poster's 'best'.",
    "- The table has no binary columns and no time axis: α_BC and α_TV do nothing there (TPE still samples them); "
    "on the table the naive row differs from the BO row only by the start, schedule and LR.",
    "- DP: one DP-SGD step at sampling rate 1, C = 1, σ calibrated so that this single release is (ε, 1e-5)-DP "
    "(RDP accountant): the least noise any run with that budget puts on one update, the attacker's best case. "
    "The attack starts from a prior draw (expected FMSE twice the prior variance), so a failed attack scores worse "
    "than the prior mean; under strong noise it fits the noise and its FMSE grows beyond that.",
    "- Labels are inferred, not given: from the sign of the output bias gradient for one example (iDLG) and from "
    "its size for a batch (counts, Geng et al. 2021); `labels_right` in the JSON says whether the multiset was right.",
    "- Wall-clock seconds in the JSON were measured on 2 CPU cores shared with other jobs (load average up to 35).",
    "- The TPE sampler has the same seed in every study, so its random start-up trials repeat across batch sizes: "
    "the same α appear in several rows.",
    "- Two invocations made this file (see `runs` in the JSON): the table with 10 trials × 3000 iterations, the "
    "ICU series with 6 trials × 1000 iterations and ε ∈ {1, 6, 1e4} (the shared cores would not fit more before "
    "the deadline).",
    "",
    "**Measured against the goals** (ICU series, synthetic; the attacker's BO pick):",
    "",
    "- Batch 1: FMSE 7.3e-12 (goal ≤ 1e-6) and similarity 0.999999999997 (goal ≥ 0.9999), binary and categorical "
    "columns all right; the naive row reaches FMSE 4.1e-4 / similarity 0.99956 (α_TV = 0.1 biases it).",
    "- Batch 4: FMSE 0.035 / similarity 0.946, binary and categorical accuracy 0.999.",
    "- Batch 16: little is recovered. FMSE 0.337 is worse than the prior mean's 0.270 and similarity 0.581 barely "
    "above its 0.519; binary accuracy 0.822 vs 0.841 for the prior mean; only the categorical columns (Glasgow coma "
    "scale items, capillary refill) come out better than the population mode, 0.714 vs 0.558. On the table batch 16 "
    "keeps more (FMSE 0.354 vs 1.15 for the prior mean, similarity 0.777).",
    "- ε = 6 (one DP-SGD step, σ = 0.815): FMSE 2.19 and similarity 0.040 on the ICU series, 34 and −0.153 on the "
    "table, against the prior mean's 0.134 / 0.665 and 0.320 / 0.060: nothing better than the prior mean. Only at "
    "ε = 1e4 (σ = 0.0075) does the attack get through again (ICU 0.056 / 0.900; table 0.0028 / 0.996); at ε = 100 "
    "the table attack recovers similarity 0.58 at FMSE 1.02, worse than the prior mean.",
]
KEYS = ("fmse", "similarity", "binary_accuracy", "categorical_accuracy")


def _scores(recon: np.ndarray, truth: np.ndarray, record: UpdateRecord) -> dict[str, Any]:
    s = score_tabular(recon, truth, record.data)
    return {k: s[k] for k in (*KEYS, "worst_features")}


def prior_mean_row(record: UpdateRecord, truth: np.ndarray) -> dict[str, Any]:
    """The public mean as the reconstruction (no attack)."""
    mean = np.broadcast_to(np.asarray(record.data["feature_mean"], dtype=np.float32), truth.shape).copy()
    return {"row": "prior mean (no attack)", **_scores(mean, truth, record)}


def attack_row(
    name: str, record: UpdateRecord, case: tuple[np.ndarray, np.ndarray], settings: dict[str, Any], seed: int
) -> dict:
    """One attack run and its scores against ``case = (inputs, labels)``, the truth kept out of the record."""
    truth, labels = case
    result = get_attack("tabular-gm", **settings).run(record, seed=seed)
    return {
        "row": name,
        "settings": {k: v for k, v in settings.items()},
        "labels_right": bool(np.array_equal(np.sort(result.labels), np.sort(labels))),
        "match_loss": result.info["match_loss"],
        "seconds": round(result.info["seconds"], 1),
        **_scores(result.inputs, truth, record),
    }


def bo_rows(record: UpdateRecord, truth: np.ndarray, study: str, args: argparse.Namespace, iters: int) -> list[dict]:
    """The TPE study's pick (attacker-side objective) and its oracle-best trial."""
    base = {**BO_BASE, "iterations": iters}
    result = tune_tabular(
        record, storage=args.storage, study_name=study, n_trials=args.trials, base_settings=base, truth=truth, seed=0
    )
    plot_history(result, RESULTS_DIR / f"{args.out}-{study}.png", title=f"TPE study {study} (match loss)")
    chosen = min(result.trials, key=lambda t: t["value"])
    oracle = min(result.trials, key=lambda t: t["fmse"])
    rows = []
    for name, trial in (("BO (prior, cosine)", chosen), ("best (oracle pick)", oracle)):
        rows.append({
            "row": name,
            "settings": {**base, **trial["params"]},
            "trial": trial["number"],
            "match_loss": trial["match_loss"],
            **{k: trial.get(k) for k in KEYS},
        })  # fmt: skip
    return rows


def run_dataset(name: str, args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data_name, options, model, kwargs, iters = CASES[name]
    iters = args.iterations or iters
    dataset = load_dataset(data_name, **options)
    out: dict[str, Any] = {
        "display_name": dataset.info.display_name,
        "model": model,
        "model_kwargs": kwargs,
        "iterations": iters,
        "trials": args.trials,
    }
    out["batches"], chosen_b1 = {}, None
    for batch in args.batches:
        record, x, y = make_tabular_case(dataset, model=model, batch_size=batch, seed=args.seed, model_kwargs=kwargs)
        rows = [prior_mean_row(record, x), attack_row("naive (randn, linear, TV 0.1)", record, (x, y),
                                                      {**NAIVE, "iterations": iters}, args.seed)]  # fmt: skip
        rows += bo_rows(record, x, f"{name}-b{batch}", args, iters)
        out["batches"][str(batch)] = rows
        save(out)  # a partial result survives an interrupted run
        chosen_b1 = rows[2]["settings"] if batch == 1 else chosen_b1
        log.info("%s batch %d: %s", name, batch, [(r["row"], r["fmse"], r["similarity"]) for r in rows])
    out["dp"] = run_dp(dataset, model, kwargs, chosen_b1 or {**BO_BASE, "iterations": iters}, args)
    return out


def run_dp(dataset: Any, model: str, kwargs: dict, settings: dict[str, Any], args: argparse.Namespace) -> list[dict]:
    """The batch-1 BO pick against one DP-SGD step at each ε."""
    rows = []
    for eps in args.epsilons:
        dp = DPStep(epsilon=eps, delta=1e-5, max_grad_norm=1.0)
        record, x, y = make_tabular_case(dataset, model=model, batch_size=1, seed=args.seed, model_kwargs=kwargs, dp=dp)
        row = attack_row(f"BO pick vs DP ε={eps:g}", record, (x, y), settings, args.seed)
        rows.append({"epsilon": eps, "noise_multiplier": record.privacy["noise_multiplier"], **row,
                     "prior_mean": prior_mean_row(record, x)})  # fmt: skip
        log.info("DP eps=%g: fmse %.3g (prior mean %.3g)", eps, row["fmse"], rows[-1]["prior_mean"]["fmse"])
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _sim(v: float | None) -> str:
    """Similarity with enough digits to tell 0.9999 from 0.999999."""
    return "–" if v is None else f"{v:.6f}"


def _alpha(row: dict, key: str) -> str:
    return _fmt(row.get("settings", {}).get(key)) if "settings" in row else "–"


def markdown(payload: dict[str, Any]) -> str:
    """The tables of the results."""
    lines = [
        "# Gradient inversion on a clinical table and ICU series (tabular-gm)",
        "",
        f"Machine: {payload['machine']['processor']}, {payload['machine']['cpu_count']} CPUs shared, torch "
        f"{payload['machine']['torch']} (1 thread), {payload['machine']['date']}. Seeds: case {payload['seed']} "
        "(batch, model init, DP noise), attack 0, TPE sampler 0. "
        "One case per cell (one batch, one fresh model): the numbers are single measurements, not averages.",
        "",
        "FedSGD case: a fresh model's mean cross-entropy gradient on one batch; the attacker knows the model, "
        "the gradient, the batch size and the public schema (per-feature mean/std of the train split, binary "
        "columns, one-hot blocks). Labels are inferred from the bias gradient. FMSE and similarity (cosine) "
        "are on standardised features after matching the batch order. α_BC acts on the binary mask columns, "
        "α_TV along time (the table has no time axis, so α_TV does nothing there).",
        "",
    ]
    for data in payload["datasets"].values():
        lines += [f"## {data['display_name']} — model {data['model']} {data['model_kwargs']}", ""]
        if "iterations" in data:
            lines += [f"{data['iterations']} iterations per attack, {data['trials']} TPE trials per study.", ""]
        lines += [
            "| batch | row | decay | α_TV | α_BC | α_NN | lr | FMSE | similarity | binary acc | categorical acc |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for batch, rows in sorted(data["batches"].items(), key=lambda kv: int(kv[0])):
            for r in rows:
                s = r.get("settings", {})
                lines.append(
                    f"| {batch} | {r['row']} | {s.get('schedule', '–')} | {_alpha(r, 'alpha_tv')} | "
                    f"{_alpha(r, 'alpha_bc')} | {_alpha(r, 'alpha_nn')} | {_alpha(r, 'lr')} | {_fmt(r['fmse'])} | "
                    f"{_sim(r['similarity'])} | {_fmt(r['binary_accuracy'])} | {_fmt(r['categorical_accuracy'])} |"
                )
        lines += ["", f"DP-SGD, batch 1, the batch-1 BO pick ({data['display_name']}):", ""]
        lines += [
            "| ε | σ | FMSE | similarity | prior-mean FMSE | prior-mean similarity |",
            "|---|---|---|---|---|---|",
        ]
        for r in data.get("dp", []):
            p = r["prior_mean"]
            lines.append(
                f"| {r['epsilon']:g} | {r['noise_multiplier']:.3g} | {_fmt(r['fmse'])} | {_sim(r['similarity'])} | "
                f"{_fmt(p['fmse'])} | {_sim(p['similarity'])} |"
            )
        lines.append("")
    lines += ["## Notes", "", *payload.get("notes", []), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(CASES), default=list(CASES)[:2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 6.0, 100.0, 1e4])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=0, help="override the per-data-set iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", type=Path, default=STUDIES)
    parser.add_argument("--out", default="attack_tabular")
    parser.add_argument("--quick", action="store_true", help="20 iterations, 2 trials: plumbing only")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json (with the notes)")
    parser.add_argument("--keep", action="store_true", help="keep the other data sets already in the .json")
    args = parser.parse_args(argv)
    if args.render:
        payload = json.loads((RESULTS_DIR / f"{args.out}.json").read_text())
        payload["notes"] = NOTES
        write_json_atomic(RESULTS_DIR / f"{args.out}.json", payload)
        (RESULTS_DIR / f"{args.out}.md").write_text(markdown(payload))
        return 0
    if args.quick:
        args.iterations, args.trials, args.out = 20, 2, args.out + "-quick"
        args.storage = args.storage.with_name(args.storage.stem + "-quick.db")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)
    torch.set_num_threads(1)
    start = time.time()
    payload: dict[str, Any] = {
        "machine": machine(),
        "seed": args.seed,
        "trials": args.trials,
        "config": {k: str(v) for k, v in vars(args).items()},
        "cases": {
            k: dict(zip(("dataset", "options", "model", "model_kwargs", "iterations"), v, strict=True))
            for k, v in CASES.items()
        },
        "naive": NAIVE,
        "bo_base": BO_BASE,
        "datasets": {},
        "notes": NOTES,
    }
    previous = RESULTS_DIR / f"{args.out}.json"
    if args.keep and previous.is_file():
        old = json.loads(previous.read_text())
        payload["datasets"] = old["datasets"]
        payload["runs"] = [*old.get("runs", [old["config"]]), payload["config"]]

    def save(name: str, out: dict[str, Any]) -> None:
        payload["datasets"][name] = out
        payload["seconds"] = round(time.time() - start, 1)
        write_json_atomic(RESULTS_DIR / f"{args.out}.json", payload)
        (RESULTS_DIR / f"{args.out}.md").write_text(markdown(payload))

    for name in args.datasets:
        save(name, run_dataset(name, args, functools.partial(save, name)))
    (RESULTS_DIR / f"{args.out}.md").write_text(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
