"""The audit's self-contained ``report.html``: plots as embedded PNG, no network, no script.

Reads only the audit's ``results.json`` payload (:func:`privmed.audit.pipeline.summarize`), so a report can
be redrawn from a results file alone. The template is ``templates/report.html`` (:class:`string.Template`);
every value is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Template
from typing import Any

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
SWEEP_TEMPLATE = Path(__file__).with_name("templates") / "sweep.html"
#: The style both pages share, inlined into each (a report is one self-contained file).
STYLE = Path(__file__).with_name("templates") / "style.css"
#: the attack stages' folder inside an audit's output (:data:`privmed.audit.attack_stage.ATTACK_DIR`)
ATTACK_DIR = "attacks"

#: What each privacy mode's ε covers, and what it does not (the threat-model section).
THREAT_MODELS: dict[str, tuple[str, ...]] = {
    "distributed": (
        "Sample-level DP for every training example of the federation: the server (honest-but-curious, not "
        "colluding with clients) sees one SecAgg+ aggregate per round, a DP-SGD step on the union with noise "
        "σ·C split across the clients.",
        "Not covered: clients colluding with the server (they can subtract their own noise shares: the others' "
        "noise is σ·C·√((k−c)/m)); a malicious server (it can send any model); SecAgg+'s quantisation; "
        "dropouts lower the noise (the ledger accounts the noise actually added).",
        "Noise must come from secret randomness: noise derived from the config can be replayed by anyone who "
        "has the config (the 'replay' test checks exactly this).",
    ),
    "sample": (
        "Sample-level DP per client (DP-SGD inside every client): each client's examples are protected against "
        "a server that sees every client's update.",
        "Not covered: the number of examples per client and timing (metadata), a malicious server.",
    ),
    "client": ("Client-level DP: a client's whole contribution is protected (update clipping + Gaussian noise).",),
    "none": ("No differential privacy: the formal ε is infinite; the server sees every update.",),
}


def _b64_png(draw: Callable[[Any], None], *, size: tuple[float, float] = (6.4, 3.6)) -> str:
    """Draw on a fresh figure and return the PNG, base64-encoded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def _utility(rounds: Sequence[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        any_line = False
        for split, style in (("val", "-"), ("test", "--")):
            for metric, color in (("auc", "C0"), ("accuracy", "C1")):
                pts = [(r["round"], (r.get(split) or {}).get(metric)) for r in rounds]
                pts = [(x, y) for x, y in pts if y is not None and math.isfinite(float(y))]
                if pts:
                    any_line = True
                    ax.plot(*zip(*pts, strict=True), style, color=color, marker="o", ms=2, label=f"{split} {metric}")
        if not any_line:
            _empty(ax, "no per-round evaluation recorded")
            return
        ax.set_xlabel("round")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)

    return draw


def _epsilon_rounds(rounds: Sequence[dict[str, Any]], target: float | None) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        pts = [(r["round"], r["epsilon"]) for r in rounds if r.get("epsilon") is not None]
        if not pts:
            _empty(ax, "no ε ledger (privacy.mode = none)")
            return
        ax.plot(*zip(*pts, strict=True), "C3-", marker="o", ms=2, label="ε spent")
        if target:
            ax.axhline(target, color="C3", ls=":", label=f"target {target:g}")
        ax.set_xlabel("round")
        ax.set_ylabel("ε")
        ax.legend(fontsize=8)

    return draw


def _epsilons(results: dict[str, Any]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        bounds = results["bounds"]
        if not bounds:
            _empty(ax, "no empirical bound (stage skipped)")
            return
        names = list(bounds)
        formal = results.get("formal_epsilon")
        cap = 2 * (formal or 10)
        values = [min(float(bounds[n]["epsilon_lb"]), cap) for n in names]
        colors = ["#c62828" if n in results["verdict"]["violations"] else "#1565c0" for n in names]
        ax.barh(names, values, color=colors)
        if formal is not None:
            ax.axvline(formal, color="k", ls="--", label=f"formal ε {formal:.2f}")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"ε lower bound (capped at {cap:g} for display)")

    return draw


def _labels(hist: Sequence[Sequence[int]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        if not hist:
            _empty(ax, "no partitions")
            return
        bottom = [0] * len(hist)
        for label in range(len(hist[0])):
            counts = [h[label] for h in hist]
            ax.bar(range(len(hist)), counts, bottom=bottom, label=f"label {label}")
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.set_xlabel("client")
        ax.set_ylabel("training examples")
        ax.set_xticks(range(len(hist)))
        ax.legend(fontsize=8, ncol=min(4, len(hist[0])))

    return draw


def _scores(hist: dict[str, Any], title: str) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        edges = hist["edges"]
        width = edges[1] - edges[0]
        ax.bar(edges[:-1], hist["out"], width=width, align="edge", alpha=0.6, label="left out")
        ax.bar(edges[:-1], hist["in"], width=width, align="edge", alpha=0.6, label="included")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("membership score")
        ax.set_ylabel("canaries")
        ax.legend(fontsize=8)

    return draw


# -- tables ------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        if value > 100:
            return "&gt; 100"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        cells = "".join(
            f'<td class="num">{_fmt(c)}</td>'
            if c is None or (isinstance(c, int | float) and not isinstance(c, bool))
            else f"<td>{c}</td>"
            for c in row
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _bounds_table(results: dict[str, Any]) -> str:
    formal = results.get("formal_epsilon")
    rows, classes = [["formal (accountant)", formal, "—", "—", "the run's ledger"]], [""]
    for name, b in results["bounds"].items():
        how = html.escape(b.get("method", ""))
        if "ratio_ub" in b:
            how += f"; noise ratio ≤ {b['ratio_ub']:.3g} (p = {b['p_value']:.2g}, n = {b['n']})"
        elif "k_in" in b:
            how += f"; {b.get('correct')} of {b['k_in'] + b['k_out']} guesses right ({b['m']} canaries)"
        if "auc" in b:
            how += f"; score {html.escape(b.get('score', ''))}, AUC {_fmt(b['auc'])}"
        if "threat" in b:
            how = f"<b>threat model: {html.escape(b['threat'])}</b>; {how}"
        rows.append([html.escape(name), float(b["epsilon_lb"]), f"{100 * (1 - b['beta']):.2f}%", b.get("delta"), how])
        classes.append("violation" if name in results["verdict"]["violations"] else "")
    return _table(["test", "ε", "confidence", "δ", "how it was obtained"], rows, classes)


def _estimates_table(results: dict[str, Any]) -> str:
    if not results.get("estimates"):
        return ""
    rows = [
        [html.escape(n), float(e["epsilon_estimate"]), html.escape(e.get("method", "") + "; " + e.get("statistic", ""))]
        for n, e in results["estimates"].items()
    ]
    return _table(["estimate", "ε (no confidence)", "how it was obtained"], rows)


def _stages_table(results: dict[str, Any]) -> str:
    rows = [
        [html.escape(name), html.escape(s["title"]), html.escape(s["status"]),
         html.escape(s.get("reason", "")) or (f"{s['seconds']:.1f} s" if "seconds" in s else "")]
        for name, s in results["stages"].items()
    ]  # fmt: skip
    return _table(["stage", "what", "status", "time / reason"], rows)


def _final_table(results: dict[str, Any]) -> str:
    final = (results.get("federation") or {}).get("final") or {}
    test, val = final.get("test") or {}, final.get("val") or {}
    rows = [[split, m.get("accuracy"), m.get("macro_f1"), m.get("auc")] for split, m in (("val", val), ("test", test))]
    return _table(["split (last round)", "accuracy", "macro F1", "AUC"], rows)


def _provenance(results: dict[str, Any]) -> str:
    fed = results.get("federation") or {}
    data = fed.get("dataset") or {}
    cfg = results.get("config") or {}
    machine = results.get("machine") or {}
    clients, seed = len(fed.get("partition_sizes") or []), (cfg.get("data") or {}).get("seed")
    rows = [
        ["data", html.escape(f"{data.get('display_name', '?')} (synthetic: {data.get('synthetic')}), "
                              f"{clients} clients, seed {seed}")],
        ["model", html.escape(str(fed.get("model")))],
        ["training seed", _fmt((cfg.get("train") or {}).get("seed"))],
        ["privacy", html.escape(f"{results.get('privacy_mode')}; SecAgg+ {results.get('secagg')}; "
                                f"break_noise = {results.get('break_noise')!r}")],
        ["canaries", html.escape(f"{results.get('canaries')} Dirac gradient canaries and "
                                 f"{results.get('example_canaries', 0)} example canaries (random images, random "
                                 "labels), each included with probability 1/2 (coins from OS entropy, never in the "
                                 "config)")],
        ["config", html.escape(str(results.get("config_source")))],
        ["machine", html.escape(", ".join(f"{k} {v}" for k, v in machine.items()))],
        ["audit wall time", _fmt(results.get("total_seconds")) + " s"],
    ]  # fmt: skip
    return _table(["", ""], rows)


def _threat_model(results: dict[str, Any]) -> str:
    items = THREAT_MODELS.get(results.get("privacy_mode", "none"), ())
    return "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in items) + "</ul>"


def _banner(results: dict[str, Any]) -> str:
    if results["verdict"]["violations"]:
        from privmed.audit.pipeline import verdict_message

        return f'<div class="banner bad" id="verdict">{html.escape(verdict_message(results))}</div>'
    if not results["bounds"]:
        return (
            '<div class="banner warn" id="verdict">No empirical test could run on this configuration (see Stages): '
            "nothing here confirms the formal ε.</div>"
        )
    return (
        '<div class="banner ok" id="verdict">No empirical lower bound exceeds the formal ε '
        f"(confidence {100 * results['confidence']:.0f}%).</div>"
    )


def _skipped(results: dict[str, Any], stage: str) -> str:
    info = results["stages"].get(stage, {})
    return html.escape(f"skipped: {info.get('reason', 'not available in this run')}")


def _png_file(path: Path) -> str | None:
    """A PNG file base64-encoded for embedding, ``None`` when it is not there."""
    return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


def _attack_rows(attacks: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, a in attacks.items():
        m = a.get("metrics") or {}
        psnr, floor = (m.get("psnr") or {}), (m.get("floor_psnr") or {})
        rows.append([
            html.escape(name), html.escape(a.get("threat", "")),
            html.escape(f"{a.get('record_kind')} of round {a.get('round')}"
                        + (f", client {a['client']}" if a.get("client") is not None else "")),
            a.get("pool_size"), psnr.get("mean"), psnr.get("max"), floor.get("mean"),
            html.escape(f"{m['above_floor']} of {m.get('images')}") if "above_floor" in m else "—",
            (m.get("ssim") or {}).get("mean"), m.get("fmse"), a.get("seconds"),
        ])  # fmt: skip
    return rows


def _attacks_section(results: dict[str, Any], base: Path | None) -> str:
    """The attack stages: a table, then each image attack's true | reconstructed | error grid."""
    attacks = results.get("attacks") or {}
    notes = [
        f'<p class="skipped">{stage}: {_skipped(results, stage)}</p>'
        for stage in ("attacks", "malicious")
        if (results["stages"].get(stage) or {}).get("status") == "skipped"
    ]
    if not attacks:
        return "".join(notes)
    header = ["attack", "threat", "what the server saw", "pool", "PSNR mean (dB)", "PSNR max", "floor (dB)",
              "above floor", "SSIM", "FMSE", "seconds"]  # fmt: skip
    parts = [_table(header, _attack_rows(attacks)), *notes]
    for name, a in attacks.items():
        png = _png_file(base / ATTACK_DIR / a["figure"]) if base is not None and a.get("figure") else None
        if png is not None:
            parts.append(
                f'<figure><img alt="reconstruction {html.escape(name)}" src="data:image/png;base64,{png}">'
                f"<figcaption>{html.escape(name)} ({html.escape(a.get('threat', ''))}): best-matching training "
                "image of the pool (top), reconstruction (middle), |error| (bottom).</figcaption></figure>"
            )
    return "".join(parts)


def _fid_row(results: dict[str, Any]) -> list[Any]:
    gan = results.get("hfgan")
    if not gan:
        return ["FID", None, _skipped(results, "hfgan") if "hfgan" in results["stages"] else "—"]
    how = f"HF-GAN's pooled synthetic images vs the test split, {gan.get('features', 'domain features')}"
    return ["FID", gan.get("fid"), html.escape(how)]


def _hfgan_section(results: dict[str, Any], base: Path | None) -> str:
    """HF-GAN's scores and the real vs synthetic samples per class, or why the stage was skipped."""
    gan = results.get("hfgan")
    if not gan:
        return f'<p class="skipped">{_skipped(results, "hfgan")}</p>'
    rows = [
        ["ε of the discriminator", gan.get("epsilon_discriminator"), html.escape(gan.get("epsilon_note") or "")],
        ["FID (synthetic vs test)", gan.get("fid"), html.escape(str(gan.get("features", "")))],
        ["FID (train vs test)", gan.get("fid_train_vs_test"), "same features: what a perfect generator reaches"],
        ["TSTR accuracy", gan.get("tstr_accuracy"), "a classifier trained on synthetic images, tested on real ones"],
        ["TRTR accuracy", gan.get("trtr_accuracy"), "the same classifier trained on the real training images"],
    ]  # fmt: skip
    parts = [_table(["number", "value", "how it was obtained"], rows)]
    png = _png_file(base / gan["figure"]) if base is not None and gan.get("figure") else None
    if png is not None:
        caption = "Real training images (top rows) and each client's synthetic ones, per class."
        parts.append(
            f'<figure><img alt="real vs synthetic" src="data:image/png;base64,{png}"><figcaption>{caption}'
            "</figcaption></figure>"
        )
    return "".join(parts)


def _summary_table(results: dict[str, Any]) -> str:
    """The headline numbers, each with how it was obtained."""
    fed = results.get("federation") or {}
    final = fed.get("final") or {}
    test = final.get("test") or {}
    bounds = results.get("bounds") or {}
    best = max(bounds.items(), key=lambda kv: float(kv[1]["epsilon_lb"]), default=None)
    data = (fed.get("dataset") or {}).get("display_name", "?")
    rows = [
        ["formal ε", results.get("formal_epsilon"), html.escape(f"the run's accountant at its end (δ = "
                                                                f"{results.get('delta')})")],
        ["empirical ε (largest lower bound)", float(best[1]["epsilon_lb"]) if best else None,
         html.escape(f"{best[0]}, confidence {100 * (1 - best[1]['beta']):.2f}% ({results.get('canaries')} canaries)")
         if best else "no bound computed"],
        ["test accuracy", test.get("accuracy"), html.escape(f"final global model, {data} test split, round "
                                                             f"{final.get('round')}, arg-max class")],
        ["test accuracy (threshold from validation)", test.get("vt_accuracy"),
         "same model and split; the decision threshold chosen on the validation split (binary tasks)"],
        ["test macro F1", test.get("macro_f1"), "same model and split"],
        ["test AUC", test.get("auc"), "same model and split"],
        _fid_row(results),
    ]  # fmt: skip
    for name, a in (results.get("attacks") or {}).items():
        m = a.get("metrics") or {}
        value = (m.get("psnr") or {}).get("mean", m.get("fmse"))
        what = "PSNR (dB)" if "psnr" in m else "FMSE"
        how = (
            f"{a.get('threat')} server on the {a.get('record_kind')} of round {a.get('round')}; matched to the best "
            f"of {a.get('pool_size')} training examples; attacker seed 0"
        )
        rows.append([html.escape(f"{what}, {name}"), value, html.escape(how)])
    return _table(["number", "value", "how it was obtained"], rows)


def render(results: dict[str, Any], base: Path | None = None) -> str:
    """The report's HTML for an audit's results payload (``base``: its folder, for the attack grids)."""
    fed = results.get("federation") or {}
    rounds = fed.get("rounds") or []
    figures = []
    for name, b in results["bounds"].items():
        if "score_histogram" in b:
            png = _b64_png(_scores(b["score_histogram"], name), size=(5.0, 3.0))
            figures.append(f'<figure><img alt="scores {html.escape(name)}" src="data:image/png;base64,{png}">'
                           f"<figcaption>Membership scores ({html.escape(name)}).</figcaption></figure>")  # fmt: skip
    values = {
        "title": html.escape(str(results.get("config_source") or "audit")),
        "subtitle": html.escape(
            f"privacy.mode = {results.get('privacy_mode')}, target ε = {results.get('target_epsilon')}, "
            f"δ = {results.get('delta')}, {results.get('canaries')} canaries"
        ),
        "banner": _banner(results),
        "delta": _fmt(results.get("delta")),
        "ntests": str(len(results["bounds"])),
        "beta": _fmt(1 - results["confidence"]),
        "bounds_table": _bounds_table(results),
        "estimates_table": _estimates_table(results),
        "plot_epsilons": _b64_png(_epsilons(results)),
        "score_figures": '<div class="grid">' + "".join(figures) + "</div>",
        "plot_utility": _b64_png(_utility(rounds)),
        "plot_epsilon_rounds": _b64_png(_epsilon_rounds(rounds, results.get("target_epsilon"))),
        "plot_labels": _b64_png(_labels(results.get("label_histograms") or []), size=(8, 3.2)),
        "final_table": _final_table(results),
        "stages_table": _stages_table(results),
        "attacks": _attacks_section(results, base),
        "summary_table": _summary_table(results),
        "hfgan": _hfgan_section(results, base),
        "threat_model": _threat_model(results),
        "provenance": _provenance(results),
    }
    return _page(TEMPLATE, values)


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    """Render and write ``report.html`` atomically (never a half-written report)."""
    path = Path(path)
    return _write_atomic(path, render(results, base=path.parent))


def _write_atomic(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- the sweep's report --------------------------------------------------------------------------------------
def _x(results: dict[str, Any]) -> tuple[str, list[float]]:
    """The sweep's x axis: the formal ε when ε is swept, else the swept value."""
    if results["axis"] == "privacy.epsilon":
        return "formal ε", [p["value"] if p["formal_epsilon"] is None else p["formal_epsilon"] for p in results["runs"]]
    return results["axis"], [p["value"] for p in results["runs"]]


def _line(ax: Any, xs: Sequence[float], ys: Sequence[Any], fmt: str, **kwargs: Any) -> bool:
    pts = [(x, float(y)) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(float(y))]
    if pts:
        ax.plot(*zip(*sorted(pts), strict=True), fmt, marker="o", **kwargs)
    return bool(pts)


def _privacy_utility(results: dict[str, Any]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        label, xs = _x(results)
        drawn = [_line(ax, xs, [p["test"].get(m) for p in results["runs"]], "-", label=f"test {m}")
                 for m in ("auc", "accuracy", "vt_accuracy", "macro_f1")]  # fmt: skip
        if not any(drawn):
            _empty(ax, "no test metrics")
            return
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)

    return draw


def _bounds_curve(results: dict[str, Any]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        label, xs = _x(results)
        runs = results["runs"]
        _line(ax, xs, [p["formal_epsilon"] for p in runs], "k--", label="formal ε")
        names = sorted({n for p in runs for n in p["bounds"]})
        for name in names:
            _line(ax, xs, [p["bounds"].get(name) for p in runs], "-", label=f"{name} (lower bound)", ms=3)
        ax.set_xlabel(label)
        ax.set_ylabel("ε")
        ax.legend(fontsize=7)

    return draw


def _attack_curve(results: dict[str, Any]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        label, xs = _x(results)
        runs = results["runs"]
        names = sorted({n for p in runs for n in p["attacks"]})
        drawn = False
        for i, name in enumerate(names):
            metric = "psnr" if any((p["attacks"].get(name) or {}).get("psnr") is not None for p in runs) else "fmse"
            ys = [(p["attacks"].get(name) or {}).get(metric) for p in runs]
            drawn |= _line(ax, xs, ys, "-", color=f"C{i}", label=f"{name} ({metric.upper()})")
            if metric == "psnr":
                floor = [(p["attacks"].get(name) or {}).get("floor_psnr") for p in runs]
                _line(ax, xs, floor, ":", color=f"C{i}", label=f"{name} floor", ms=2)
        if not drawn:
            _empty(ax, "no attack ran in this sweep (audit.attacks)")
            return
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB) / FMSE")
        ax.legend(fontsize=7)

    return draw


def _points_table(results: dict[str, Any]) -> str:
    rows, classes = [], []
    for p in results["runs"]:
        link = f'<a href="{html.escape(p["folder"])}/report.html">report</a>'
        rows.append([p["value"], p["formal_epsilon"], p["best_bound"], p["test"].get("auc"),
                     p["test"].get("accuracy"), p["test"].get("vt_accuracy"),
                     html.escape(", ".join(p["violations"]) or "none"), link])  # fmt: skip
        classes.append("violation" if p["violations"] else "")
    header = [results["axis"], "formal ε", "largest lower bound", "test AUC", "test accuracy",
              "test accuracy (threshold from validation)", "violations", "run"]  # fmt: skip
    return _table(header, rows, classes)


def render_sweep(results: dict[str, Any]) -> str:
    """The sweep report's HTML for a sweep's results payload (:func:`privmed.audit.sweep.audit_sweep`)."""
    bad = results["verdict"]["violations"]
    banner = (
        f'<div class="banner bad" id="verdict">PRIVACY BUG: {html.escape("; ".join(bad))}</div>'
        if bad
        else '<div class="banner ok" id="verdict">No point of the sweep has a lower bound above its formal ε.</div>'
    )
    values = {
        "title": html.escape(str(results.get("config_source") or "sweep")),
        "axis": html.escape(results["axis"]),
        "banner": banner,
        "points_table": _points_table(results),
        "plot_utility": _b64_png(_privacy_utility(results)),
        "plot_bounds": _b64_png(_bounds_curve(results)),
        "plot_attacks": _b64_png(_attack_curve(results)),
        "machine": html.escape(", ".join(f"{k} {v}" for k, v in (results.get("machine") or {}).items())),
    }
    return _page(SWEEP_TEMPLATE, values)


def write_sweep_report(results: dict[str, Any], path: str | Path) -> Path:
    """Render and write the sweep's ``report.html`` atomically."""
    return _write_atomic(Path(path), render_sweep(results))


def _page(template: Path, values: dict[str, str]) -> str:
    """``template`` filled with ``values`` and the shared style inlined."""
    style = STYLE.read_text(encoding="utf-8")
    return Template(template.read_text(encoding="utf-8")).substitute(values, style=style)
