"""Cost of DP-SGD per training example against non-private SGD, for each way Opacus computes per-sample gradients.

For privmed's small GroupNorm CNN and the slim DPResNet (ResNet-9, width 32) on 28 x 28 grey input, this
times one optimizer step (forward, backward, per-sample clipping, noise, update) at a fixed batch size
and reports microseconds per example and the ratio against non-private SGD **measured in the same run**
with the same model, batch size and thread count. Variants (a registry, :data:`VARIANTS`):

``nonprivate``
    Plain SGD; the baseline of every ratio.
``hooks`` / ``ew`` / ``functorch``
    :func:`privmed.privacy.make_private` with Opacus' module hooks, PyTorch expanded weights, or
    ``torch.func.vmap`` per-sample gradients (flat clipping, σ = 1, C = 1).
``bk``
    :func:`privmed.privacy.make_private` with privmed's book-keeping clipping
    (:mod:`privmed.privacy.bookkeeping`): per-sample norms from ghost norms or small per-layer products,
    chosen per layer, and the clipped sum as one matrix product per layer; one backward pass.
``hooks+secure`` / ``bk+secure``
    ``hooks`` / ``bk`` with ``privacy.secure_rng``: noise from ChaCha20 keyed from the OS, four float64
    Box–Muller draws per coordinate and the power-of-two grid snap (:mod:`privmed.privacy.randomness`).
    Their ratio to the default-source twin **in the same run** is the cost of the secure generator
    (``--variants nonprivate hooks bk hooks+secure bk+secure --out bench/results/dpsgd_cost-secure_rng.json``).
``ghost``
    Opacus' fast gradient clipping (Li et al. 2022 "ghost clipping", Bu et al. 2023 book-keeping): per-sample
    *norms* without materialising per-sample gradients, then a second backward pass with the clipped loss.
    Only ``nn.Linear`` / ``nn.Embedding`` have ghost norm samplers; convolutions fall back to per-sample
    gradients, so it is measured as an exploration, not offered by ``make_private``.

Timing: each variant is built once; then ``--repeats`` rounds interleave all variants (warm-up steps,
then ``--steps`` timed steps each), so slow drift of a shared machine hits every variant alike; the
median over rounds is reported. Batches are fixed-size (no Poisson sampling) so every variant does the
same work.

Writes ``bench/results/dpsgd_cost.json`` and ``.md`` (machine, settings, findings). ``--quick`` runs a
couple of steps per variant and writes ``dpsgd_cost-quick.*``: a check that the script runs, not a result.

Usage::

    python bench/dpsgd_cost.py                       # batch 64, all thread counts up to the cores
    python bench/dpsgd_cost.py --batch 64 256        # also a larger physical batch
    python bench/dpsgd_cost.py --quick               # end-to-end check, < 1 minute
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privmed.privacy import make_private
from privmed.privacy.randomness import RANDOMNESS
from privmed.results import machine, write_json_atomic

logger = logging.getLogger("bench.dpsgd_cost")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMAGE_SIZE = 28
NUM_CLASSES = 2
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
GOAL_RATIO = 2.0

StepFn = Callable[[torch.Tensor, torch.Tensor], None]


def _fallback_cnn() -> nn.Module:
    """A small GroupNorm CNN, used when ``privmed.models`` is not installed."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.GroupNorm(8, 32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.GroupNorm(8, 64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.GroupNorm(8, 64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, NUM_CLASSES),
    )


def _privmed_model(name: str, width: int | None) -> Callable[[], nn.Module] | None:
    try:
        from privmed.models import build_model
    except ImportError:
        return None
    return lambda: build_model(name, in_channels=1, num_classes=NUM_CLASSES, width=width)


def model_factories() -> dict[str, Callable[[], nn.Module]]:
    """Models to time: privmed's CNN and slim DPResNet when available, else a stand-in CNN."""
    out: dict[str, Callable[[], nn.Module]] = {}
    cnn = _privmed_model("cnn", None)
    out["cnn" if cnn else "groupnorm-cnn (stand-in)"] = cnn or _fallback_cnn
    resnet = _privmed_model("dpresnet", 32)
    if resnet is not None:
        out["dpresnet-w32"] = resnet
    return out


def _dummy_loader(batch: int) -> DataLoader:
    ds = TensorDataset(torch.zeros(batch * 4, 1, IMAGE_SIZE, IMAGE_SIZE), torch.zeros(batch * 4, dtype=torch.long))
    return DataLoader(ds, batch_size=batch)


def _nonprivate(model: nn.Module, batch: int) -> StepFn:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def _opacus_mode(mode: str, randomness: str = "os-entropy") -> Callable[[nn.Module, int], StepFn]:
    """A DP-SGD step with ``make_private`` in ``mode``, the noise drawn from the ``randomness`` source."""

    def build(model: nn.Module, batch: int) -> StepFn:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        gm, dopt, _ = make_private(
            model,
            opt,
            _dummy_loader(batch),
            noise_multiplier=NOISE_MULTIPLIER,
            max_grad_norm=MAX_GRAD_NORM,
            grad_sample_mode=mode,
            randomness=RANDOMNESS[randomness](()),
        )
        loss_fn = nn.CrossEntropyLoss()

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            dopt.zero_grad(set_to_none=True)
            loss_fn(gm(x), y).backward()
            dopt.step()

        return step

    return build


def _ghost(model: nn.Module, batch: int) -> StepFn:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    gm = GradSampleModuleFastGradientClipping(model, max_grad_norm=MAX_GRAD_NORM, use_ghost_clipping=True)
    opt = DPOptimizerFastGradientClipping(
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        expected_batch_size=batch,
    )
    criterion = DPLossFastGradientClipping(gm, opt, nn.CrossEntropyLoss())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        criterion(gm(x), y).backward()
        opt.step()

    return step


#: Variant name -> builder(model, batch_size) returning one training step.
VARIANTS: dict[str, Callable[[nn.Module, int], StepFn]] = {
    "nonprivate": _nonprivate,
    "hooks": _opacus_mode("hooks"),
    "ew": _opacus_mode("ew"),
    "functorch": _opacus_mode("functorch"),
    "bk": _opacus_mode("bk"),
    "ghost": _ghost,
    # privacy.secure_rng: the same steps with the noise from ChaCha20, four Box-Muller draws per coordinate
    # in float64 and the grid snap (privmed.privacy.randomness); compared with their default-source twin
    "hooks+secure": _opacus_mode("hooks", "secure"),
    "bk+secure": _opacus_mode("bk", "secure"),
}
#: Variant -> the variant it differs from only by ``privacy.secure_rng`` (the ratio the findings report).
SECURE_TWINS = {"hooks+secure": "hooks", "bk+secure": "bk"}


@dataclass
class Row:
    model: str
    params: int
    threads: int
    batch: int
    variant: str
    seconds_per_step: list[float]
    us_per_example: float | None = None
    ratio_vs_nonprivate: float | None = None
    error: str | None = None


def time_setting(
    name: str,
    factory: Callable[[], nn.Module],
    *,
    batch: int,
    threads: int,
    variants: list[str],
    args: argparse.Namespace,
) -> list[Row]:
    """Time every variant for one (model, batch, threads), interleaving repeats across variants."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    steps: dict[str, StepFn] = {}
    rows: dict[str, Row] = {}
    for variant in variants:
        torch.manual_seed(0)
        model = factory()
        params = sum(p.numel() for p in model.parameters())
        rows[variant] = Row(name, params, threads, batch, variant, [])
        try:
            steps[variant] = VARIANTS[variant](model, batch)
            steps[variant](x, y)  # first call builds caches / compiles vmaps
        except Exception as exc:  # a variant that cannot run this model is a finding, not a crash
            rows[variant].error = f"{type(exc).__name__}: {exc}"[:300]
            steps.pop(variant, None)
            logger.warning("%s / %s failed: %s", name, variant, rows[variant].error)
    for _ in range(args.repeats):
        for variant, step in steps.items():
            for _ in range(args.warmup):
                step(x, y)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            rows[variant].seconds_per_step.append((time.perf_counter() - start) / args.steps)
    base = rows.get("nonprivate")
    base_t = statistics.median(base.seconds_per_step) if base and base.seconds_per_step else None
    for row in rows.values():
        if row.seconds_per_step:
            t = statistics.median(row.seconds_per_step)
            row.us_per_example = 1e6 * t / batch
            row.ratio_vs_nonprivate = t / base_t if base_t else None
        logger.info(
            "%-22s threads=%d batch=%d %-10s %s",
            name,
            threads,
            batch,
            row.variant,
            f"{row.us_per_example:.0f} us/example, x{row.ratio_vs_nonprivate:.2f}"
            if row.ratio_vs_nonprivate
            else row.error,
        )
    steps.clear()
    gc.collect()
    return list(rows.values())


def findings(rows: list[Row]) -> list[str]:
    """Plain-language conclusions drawn from the measured rows."""
    out: list[str] = []
    for model in dict.fromkeys(r.model for r in rows):
        dp = [  # the default noise source; secure_rng's cost is reported apart (secure_rng_findings)
            r
            for r in rows
            if r.model == model and r.variant not in ("nonprivate", *SECURE_TWINS) and r.ratio_vs_nonprivate
        ]
        if not dp:
            continue
        best = min(dp, key=lambda r: r.ratio_vs_nonprivate or float("inf"))
        met = "meets" if (best.ratio_vs_nonprivate or 0) <= GOAL_RATIO else "misses"
        out.append(
            f"{model}: fastest DP-SGD is `{best.variant}` (threads={best.threads}, batch={best.batch}) at "
            f"x{best.ratio_vs_nonprivate:.2f} the non-private time per example; it {met} the <= x{GOAL_RATIO:g} goal."
        )
        for mode in ("hooks", "ew", "functorch", "bk", "ghost"):
            mode_rows = [r for r in dp if r.variant == mode]
            if mode_rows:
                ratios = ", ".join(f"x{r.ratio_vs_nonprivate:.2f} (t={r.threads}, b={r.batch})" for r in mode_rows)
                out.append(f"  - {mode}: {ratios}")
    out.extend(secure_rng_findings(rows))
    failed = [r for r in rows if r.error]
    out.extend(f"{r.model} / {r.variant}: could not run ({r.error})" for r in failed)
    return out


def time_noise(params: int, *, repeats: int) -> dict[str, float]:
    """Seconds to add one step's noise to ``params`` float32 coordinates, per source (median of ``repeats``,
    the sources interleaved): the part of a DP-SGD step that ``privacy.secure_rng`` changes."""
    value = torch.zeros(params)
    sources = {name: RANDOMNESS[name](()) for name in ("os-entropy", "secure")}
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(repeats):
        for name, source in sources.items():
            start = time.perf_counter()
            source.add_gaussian(value, std=NOISE_MULTIPLIER * MAX_GRAD_NORM)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def secure_rng_findings(rows: list[Row]) -> list[str]:
    """The cost of ``privacy.secure_rng``: each secure variant's time per step over its default twin's, same run."""
    out: list[str] = []
    timed = {(r.model, r.threads, r.batch, r.variant): r for r in rows if r.seconds_per_step}
    for (model, threads, batch, variant), row in timed.items():
        twin = timed.get((model, threads, batch, SECURE_TWINS.get(variant, "")))
        if twin is None:
            continue
        secure, default = statistics.median(row.seconds_per_step), statistics.median(twin.seconds_per_step)
        out.append(
            f"secure_rng: {model} `{variant}` (threads={threads}, batch={batch}) takes x{secure / default:.2f} the "
            f"time per step of `{twin.variant}` with the default source ({1e3 * (secure - default):+.1f} ms per step "
            f"for {row.params:,} parameters)"
        )
    return out


def noise_findings(noise: dict[str, dict[str, float]]) -> list[str]:
    """One line per model: the noise draw alone with each source (:func:`time_noise`)."""
    return [
        f"secure_rng: the noise of one step alone for {n['params']:,} parameters takes {1e3 * n['secure']:.1f} ms "
        f"with the secure source vs {1e3 * n['os-entropy']:.1f} ms with the default "
        f"(x{n['secure'] / n['os-entropy']:.1f})"
        for n in noise.values()
    ]


NOTES = """\
## Notes on making DP-SGD cheaper here

- The ratio is per example at equal physical batch; DP-SGD's extra cost is the per-sample gradient
  (``batch`` copies of every weight gradient, or an unfold of every convolution's input for ``hooks``),
  the per-sample norms and the clipped sum. Noise is one Gaussian draw per parameter per step: negligible.
- A larger *logical* batch (more examples per noisy step) is what DP-SGD wants anyway (better signal to
  noise at the same ε, Abadi et al. 2016; De et al. 2022); run it with a physical batch that fits the
  cache and Opacus' ``BatchMemoryManager`` (virtual steps). That changes the accounting's q but not the
  per-example cost measured here; compare the ``--batch`` rows to see how the per-example cost of each
  variant scales with physical batch.
- ``torch.set_num_threads``: with 2 cores shared between processes, 1 thread per process can beat 2;
  compare the ``threads`` rows. The Flower simulation runs one client per CPU, i.e. 1 thread each.
- Where the time goes on slim DPResNet: per-sample gradients are batch x 1.64M floats (~420 MB at batch
  64) written and re-read every step, so the materialising modes (``hooks``, ``ew``, ``functorch``) are
  memory-bound. Most parameters sit in ``layer3`` (256 channels) at 4 x 4 = 16 spatial positions on 28 x 28
  input, where a per-sample gradient *norm* costs O(T^2 (d_in + d_out)) with T = 16 via the ghost-norm
  identity ||sum_t g_t a_t^T||^2 = sum_{t,t'} (a_t . a_t')(g_t . g_t') instead of O(T d_in d_out) to
  materialise; mixed ghost clipping (Bu et al. 2022) picks per layer whichever is cheaper.
- ``bk`` (privmed) adds book-keeping (Bu et al. 2023): the clipped sum is one matrix product per layer of
  the stored inputs and the clip-rescaled output gradients, so there is no second backward pass.
  Opacus' ``ghost`` runs the backward twice and has norm samplers only for linear and embedding layers,
  so its convolutions still materialise per-sample gradients.
- What ``bk`` still pays over non-private SGD: the autograd weight gradients of the ordinary backward
  pass (computed, then replaced by the clipped sum), the per-layer norms, and the unfolded inputs kept
  until the step.
- Quick measurements on this machine were taken while three other processes shared the 2 cores (load
  average ~5): absolute times roughly doubled between runs and ratios moved by +-0.5, so only a full run
  on a quiet machine should be quoted.
"""


def _load_sentence(load: list[float] | None) -> str:
    if not load:
        return ""
    return (
        f" Load average {load[0]:.1f} before and {load[1]:.1f} after on {os.cpu_count()} cores: other processes "
        "shared the machine, so absolute times are inflated; the ratios come from interleaved repeats."
    )


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    rows = [Row(**r) for r in payload["rows"]]
    lines = [
        "# DP-SGD cost per example vs non-private SGD" + (" (QUICK CHECK, not a result)" if payload["quick"] else ""),
        "",
        f"Machine: {payload['machine']['processor']}, {payload['machine']['cpu_count']} CPUs, torch "
        f"{payload['machine']['torch']}, {payload['machine']['date']}. Input 1x{IMAGE_SIZE}x{IMAGE_SIZE}, "
        f"{NUM_CLASSES} classes, sigma={NOISE_MULTIPLIER}, C={MAX_GRAD_NORM}, SGD momentum 0.9. "
        f"{payload['settings']['steps']} timed steps after {payload['settings']['warmup']} warm-up, median of "
        f"{payload['settings']['repeats']} interleaved repeats. Ratios are against non-private SGD in the same run."
        + _load_sentence(payload["settings"].get("load_average")),
        "",
        "| model | params | threads | batch | variant | us / example | x non-private |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        us = f"{r.us_per_example:.0f}" if r.us_per_example is not None else "-"
        ratio = f"{r.ratio_vs_nonprivate:.2f}" if r.ratio_vs_nonprivate is not None else (r.error or "-")
        lines.append(f"| {r.model} | {r.params} | {r.threads} | {r.batch} | {r.variant} | {us} | {ratio} |")
    lines += ["", "## Findings", "", *[f"- {f}" if not f.startswith("  ") else f for f in payload["findings"]], ""]
    lines.append(NOTES)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only; writes dpsgd_cost-quick.*")
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and all cores")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--models", nargs="+", default=None, help="subset of the model names")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/dpsgd_cost.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    if args.quick:
        args.steps, args.warmup, args.repeats = 2, 1, 1
    cores = os.cpu_count() or 1
    threads = args.threads or ([1] if args.quick else sorted({1, cores}))
    factories = model_factories()
    if args.models:
        factories = {k: v for k, v in factories.items() if k in args.models}
    if "nonprivate" not in args.variants:
        args.variants.insert(0, "nonprivate")
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    for name, factory in factories.items():
        for batch in args.batch:
            for t in threads:
                rows += time_setting(name, factory, batch=batch, threads=t, variants=args.variants, args=args)
    noise = {}
    if any(v in SECURE_TWINS for v in args.variants):
        torch.set_num_threads(min(threads))
        for name, factory in factories.items():
            params = sum(p.numel() for p in factory().parameters())
            noise[name] = {"params": params, **time_noise(params, repeats=5 * args.repeats)}
            logger.info("%-22s noise for %d parameters: %s", name, params, noise[name])
    stem = "dpsgd_cost-quick" if args.quick else "dpsgd_cost"
    out = args.out or RESULTS_DIR / f"{stem}.json"
    payload = {
        "benchmark": "dpsgd_cost",
        "quick": args.quick,
        "machine": machine(),
        "settings": {
            "batch": args.batch,
            "threads": threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
            "image_size": IMAGE_SIZE,
            # 1-minute load average of the machine before and after (other processes sharing the cores)
            "load_average": [load_before, os.getloadavg()[0]],
        },
        "rows": [asdict(r) for r in rows],
        "noise_seconds": noise,
        "findings": findings(rows) + noise_findings(noise),
    }
    write_json_atomic(out, payload)
    write_markdown(out.with_suffix(".md"), payload)
    logger.info("wrote %s and %s", out, out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
