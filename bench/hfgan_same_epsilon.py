"""HF-GAN's synthetic warm start against (a) and (b) at the same ε per real image: the table of every DP draw.

Reads the rows that ``bench/hfgan.py`` runs wrote (one file per independent draw of the DP noise and sampling, all
from OS entropy), composes D's ledger with the warm start's classifier ledgers (``privmed.gan.ledger``; the ε a
real image of (c') actually spends) and writes ``bench/results/hfgan-same-epsilon.json`` and the table part of
``hfgan-same-epsilon.md`` (``--name``; its hand-written ``## Reading`` section is kept)::

    bench/hfgan_same_epsilon.py --ab hfgan-eps15 hfgan-eps15-r2 ... --warm hfgan-warm hfgan-warm-repeat ... \\
        --d-run /tmp/privmed-tstr-fed-fix600/gan-dp
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from privmed.gan.ledger import compose_with_d
from privmed.results import machine, write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "hfgan-same-epsilon"
WARM_DP = "(c') warm start + DP"


def draws(files: list[str], label: str, dataset: str = "pneumoniamnist") -> list[dict[str, Any]]:
    """``label``'s row of every file's ``dataset`` table, with the file's name."""
    out = []
    for f in files:
        rows = json.loads((RESULTS / f"{f}.json").read_text())["datasets"][dataset]["rows"]
        if label in rows and "error" not in rows[label]:
            out.append({"file": f, **rows[label]})
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    f1 = [r["macro_f1"] for r in rows]
    return {
        "macro_f1": f1,
        "mean": statistics.mean(f1) if f1 else None,
        "sd": statistics.stdev(f1) if len(f1) > 1 else None,
        "files": [r["file"] for r in rows],
        "recall_per_class": [r.get("recall_per_class") for r in rows],
        "val_macro_f1": [r.get("val_macro_f1") for r in rows],
        "epsilon_classifier": [r.get("epsilon_classifier") for r in rows],
    }


def table(p: dict[str, Any]) -> str:
    def fmt(s: dict[str, Any]) -> str:
        got = "; ".join(f"{f}: {v:.3f}" for f, v in zip(s["files"], s["macro_f1"], strict=True))
        rec = ", ".join("/".join(f"{x:.2f}" for x in r) if r else "—" for r in s["recall_per_class"])
        sd = f"{s['sd']:.3f}" if s["sd"] is not None else "—"
        return f"{got} | {s['mean']:.3f} | {sd} | {rec} |"

    eps = p["epsilon_real_image"]
    lines = [
        "| setting (ε per real image) | draws (file: macro-F1) | mean | sd | class-0 / class-1 recall per draw |",
        "|---|---|---:|---:|---|",
        f"| (a) + DP, ε_clf {p['epsilon_ab']:g} | {fmt(p['a'])}",
        f"| (b) + DP, ε_clf {p['epsilon_ab']:g} | {fmt(p['b'])}",
        f"| **(c') warm start + DP** ({eps['rdp']['max']:.2f} RDP / {eps['prv']['max']:.2f} PRV composed; "
        f"sum {eps['sum']['max']:.2f}) | {fmt(p['warm'])}",
    ]
    da, db = p["warm"]["mean"] - p["a"]["mean"], p["warm"]["mean"] - p["b"]["mean"]
    lines += [
        "",
        f"Difference of means: **{100 * da:+.1f}** points over (a), **{100 * db:+.1f}** over (b) (goal: +3 over both).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ab", nargs="+", required=True, help="result names holding (a) + DP and (b) + DP rows")
    parser.add_argument("--warm", nargs="+", required=True, help=f"result names holding {WARM_DP!r} rows")
    parser.add_argument("--d-run", required=True, help="the HF-GAN run folder of the DP generators (results.json)")
    parser.add_argument("--name", default=NAME, help="output bench/results/NAME.json and .md")
    args = parser.parse_args(argv)
    ab = draws(args.ab, "(a) + DP")
    warm = draws(args.warm, WARM_DP)
    gan_results = json.loads((Path(args.d_run) / "results.json").read_text())
    run = json.loads((Path(warm[0]["init_from"]).parent / "warm-dp" / "results.json").read_text())
    plans = run["privacy_details"]["plans"]  # every draw has the same plans (same partitions and epsilon_clf)
    ledgers = {pid: [(p["noise_multiplier"], p["sample_rate"], p["total_steps"])] for pid, p in plans.items()}
    payload = {
        "a": summary(ab),
        "b": summary(draws(args.ab, "(b) + DP")),
        "warm": summary(warm),
        "epsilon_ab": ab[0]["epsilon_classifier"],
        "epsilon_real_image": compose_with_d(gan_results, ledgers),
        "command": "bench/hfgan_same_epsilon.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
    }
    payload["epsilon_ab"] = round(max(payload["a"]["epsilon_classifier"]), 2)
    write_results(args.name, payload, table(payload), rows="one row per independent DP draw")
    return 0


def write_results(name: str, payload: dict[str, Any], table_md: str, *, rows: str) -> None:
    """``bench/results/NAME.json`` and the table part of ``NAME.md`` (its hand-written ``## Reading`` is kept)."""
    write_json_atomic(RESULTS / f"{name}.json", payload)
    md = RESULTS / f"{name}.md"
    text = md.read_text() if md.is_file() else f"# {name}\n\n## Reading\n\n(to be written)\n"
    head, _, rest = text.partition("## Macro-F1 on the test split")
    _, _, reading = rest.partition("## Reading")
    md.write_text(
        f"{head}## Macro-F1 on the test split ({rows})\n\n{table_md}\n\n"
        f"Command: `{payload['command']}`.\n\n## Reading{reading}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
