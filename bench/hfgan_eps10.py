"""HF-GAN against (a) and (b) at ε = 10 per real image, one row per independent draw, by classifier architecture.

At ε = 10 the (c) row is phase 1 of the synthetic warm start alone (``bench/hfgan.py --only "(c') phase 1: ..."``):
a federated classifier trained only on images of the clients' DP generators G_i at uniform labels, optionally
started from the discriminator D's weights (``model.name = "dcgan-d"``, ``model.init_from = <run>/discriminator.pt``).
Both are post-processing of D's DP training, so a real image spends ε_D and nothing more; (a) / (b) + DP spend
ε_clf of DP-SGD per client. Each group names the rows ``bench/hfgan.py`` wrote (one file per draw of DP noise and
sampling, all from OS entropy, or per generator store); this script only reads them and writes
``bench/results/NAME.json`` and the table part of ``NAME.md`` (its hand-written ``## Reading`` is kept)::

    bench/hfgan_eps10.py --name hfgan-dclf \\
        --group "(a) + DP, cnn" "(a) + DP" hfgan-dprows hfgan-eps10-r2 ... \\
        --group "(c) phase 1, dcgan-d from D" "(c') phase 1: synthetic only, no DP" hfgan-dclf-p1-g3-s0 ... \\
        --versus "(c) phase 1, dcgan-d from D"
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from hfgan_same_epsilon import draws, summary, write_results

from privmed.results import machine


def group_rows(row: str, files: list[str], dataset: str) -> list[dict[str, Any]]:
    """``row`` of every file's ``dataset`` table, with the file's name (a file without it is an error)."""
    rows = draws(files, row, dataset)
    missing = [f for f in files if f not in {r["file"] for r in rows}]
    if missing:
        raise SystemExit(f"{', '.join(missing)}: no finished row {row!r}")
    return rows


def epsilon(r: dict[str, Any]) -> float:
    """ε per real image: the classifier's DP-SGD ledger, or D's for a classifier of synthetic images only."""
    if r.get("epsilon_classifier") is not None:
        return float(r["epsilon_classifier"])
    return float(r["generators"]["epsilon_D"])


def summarise(label: str, row: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`hfgan_same_epsilon.summary` of the rows, with the label, AUC, validation macro-F1 and ε per real image."""
    val = [v for v in (r.get("val_macro_f1") for r in rows) if v is not None]
    return {
        **summary(rows),
        "label": label,
        "row": row,
        "auc_mean": statistics.mean(r["auc"] for r in rows),
        "val_macro_f1_mean": statistics.mean(val) if val else None,
        "epsilon": max(epsilon(r) for r in rows),
        "phase1_overrides": rows[0].get("phase1_overrides"),
    }


def table(groups: list[dict[str, Any]], versus: list[str]) -> str:
    lines = [
        "| setting | ε per real image | draws (file: macro-F1) | mean | sd | AUC mean | validation macro-F1 mean "
        "| class-0 / class-1 recall |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for g in groups:
        got = "; ".join(f"{f}: {v:.3f}" for f, v in zip(g["files"], g["macro_f1"], strict=True))
        rec = ", ".join("/".join(f"{round(x, 2) + 0.0:.2f}" for x in r) if r else "—" for r in g["recall_per_class"])
        sd = f"{g['sd']:.3f}" if g["sd"] is not None else "—"
        name = f"**{g['label']}**" if g["label"] in versus else g["label"]
        val = f"{g['val_macro_f1_mean']:.3f}" if g["val_macro_f1_mean"] is not None else "—"
        cells = [name, f"{g['epsilon']:.2f}", got, f"{g['mean']:.3f}", sd, f"{g['auc_mean']:.3f}", val, rec]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for g in (g for g in groups if g["label"] in versus):
        others = [o for o in groups if o["row"] != g["row"]]  # the (a) / (b) groups, not (c)'s own variants
        diffs = ", ".join(f"{100 * (g['mean'] - o['mean']):+.1f} over {o['label']}" for o in others)
        lines.append(f"- {g['label']}: {diffs} (points of mean macro-F1).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--group", nargs="+", action="append", required=True, metavar="X",
        help="LABEL ROW FILE [FILE ...]: a table line from ROW of the named bench/results files",
    )  # fmt: skip
    parser.add_argument(
        "--versus", nargs="+", default=[], help="labels of groups compared with every group of another row"
    )
    parser.add_argument("--name", required=True, help="output bench/results/NAME.json and .md")
    parser.add_argument("--dataset", default="pneumoniamnist", help="the table of the result files to read")
    args = parser.parse_args(argv)
    if any(len(g) < 3 for g in args.group):
        parser.error("--group needs LABEL ROW and at least one FILE")
    groups = [summarise(g[0], g[1], group_rows(g[1], g[2:], args.dataset)) for g in args.group]
    unknown = set(args.versus) - {g["label"] for g in groups}
    if unknown:
        parser.error(f"--versus names no group: {', '.join(sorted(unknown))}")
    payload = {
        "dataset": args.dataset,
        "groups": groups,
        "versus": args.versus,
        "command": "bench/hfgan_eps10.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
    }
    write_results(args.name, payload, table(groups, args.versus), rows="one row per independent draw")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
