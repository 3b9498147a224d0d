"""Helpers shared by the subcommands: where output goes, and the arguments every run takes.

Results (tables, summaries, "OK" lines) go to stdout; progress bars, per-epoch and per-round lines and logs go
to stderr, so ``privmed ... > out.txt`` keeps the results and a script reading stdout sees only them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from privmed.config import Config, load_config
from privmed.errors import ConfigError

#: The preset behind ``--dataset NAME`` when no config is given (any MedMNIST set, CNN, a tested schedule).
DATASET_PRESET = "medmnist"

#: Width for results written to a file or a pipe: wide enough that no table cell is cut or wrapped.
PIPE_WIDTH = 1000


def console() -> Console:
    """The console for progress and log lines (stderr)."""
    return Console(stderr=True)


def results_console() -> Console:
    """The console for results (stdout); when stdout is not a terminal, as wide as the results need."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else PIPE_WIDTH)


def quiet_flower(verbose: int) -> None:
    """Keep Flower's logger at WARNING unless ``-v``: its per-stage DEBUG and INFO lines are noise for a user.

    Importing Flower's logger module sets that logger to DEBUG, so it is imported here first; setting the
    level before Flower is imported (as the commands did) was undone by the import.
    """
    if verbose:
        return
    import logging

    import flwr.common.logger  # noqa: F401  (sets the "flwr" logger to DEBUG on import)

    logging.getLogger("flwr").setLevel(logging.WARNING)


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` shows it: without reStructuredText's double backticks."""
    return (doc or "").replace("``", "")


def add_set_argument(parser: argparse.ArgumentParser, *, example: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) into ``args.overrides``: config overrides in TOML syntax."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override one config value (TOML syntax), e.g. --set {example}; repeatable",
    )


def add_run_arguments(parser: argparse.ArgumentParser, *, example: str) -> None:
    """CONFIG (optional with ``--dataset``), ``--dataset``, ``--set``, ``--out``, ``--resume``, ``--overwrite``."""
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        help=f"TOML config file or preset name (e.g. {example}); optional with --dataset",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="run on this dataset (e.g. retinamnist): without CONFIG, on the 'medmnist' preset (CNN and a tested "
        "schedule for any MedMNIST set); with CONFIG, replacing its data.name (and the data.options the new "
        "dataset does not take)",
    )
    add_set_argument(parser, example="train.epochs=10")
    parser.add_argument("--out", type=Path, default=None, help="output folder (created if missing)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (its results, checkpoints and predictions are deleted once the new run's "
        "inputs are checked)",
    )


def _loader_options(name: str) -> set[str] | None:
    """The options the loader of dataset ``name`` takes (``None`` for an unknown name: its loader says so)."""
    import inspect

    from privmed.data import LOADERS

    loader = LOADERS.get(name.lower())
    if loader is None:
        return None
    params = inspect.signature(loader).parameters
    return {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "size"}


def load_run_config(args: argparse.Namespace, *, extra: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's config from CONFIG and/or ``--dataset``, then ``extra`` and ``--set`` overrides (last wins).

    When the dataset differs from the one the config file names, the file's ``data.options`` that the new
    dataset's loader does not take (e.g. the phantom's ``classes``) are dropped, unless ``--set`` sets
    ``data.options`` itself.

    Raises
    ------
    ConfigError
        Neither CONFIG nor ``--dataset``, or any config error.
    """
    if args.config is None and args.dataset is None:
        raise ConfigError("give a config (a TOML file or a preset such as smoke) or --dataset NAME (e.g. retinamnist)")
    source = args.config if args.config is not None else DATASET_PRESET
    dataset = [f"data.name={args.dataset!r}"] if args.dataset else []
    cfg = load_config(source, overrides=[*dataset, *extra, *args.overrides])
    file_data = load_config(source).data
    user_sets_options = any(o.split("=", 1)[0].strip() == "data.options" for o in args.overrides)
    if cfg.data.name.lower() != file_data.name.lower() and not user_sets_options:
        accepted = _loader_options(cfg.data.name)
        if accepted is not None:
            cfg.data.options = {k: v for k, v in cfg.data.options.items() if k in accepted}
    return cfg


#: ``privacy.mode`` -> against whom the printed ε holds (see docs/threat-model.md).
AGAINST = {
    "sample": "epsilon per training image, against the server and anyone holding the model or results.json",
    "distributed": "epsilon per training image of the federation, against the server (it sees only the SecAgg+ "
    "aggregate) and anyone holding the model or results.json",
    "client": "epsilon per client (hospital), against anyone holding the model or results.json",
    "client-split": "epsilon per client (hospital), against the server (it sees only the SecAgg+ aggregate) and "
    "anyone holding the model or results.json",
}


def privacy_against(details: dict[str, Any]) -> str:
    """One phrase saying what the printed ε protects and from whom (docs/threat-model.md has the whole story)."""
    mode = details.get("mode", "")
    key = "client-split" if mode == "client" and details.get("noise") == "split" else mode
    return AGAINST.get(key, "")


def privacy_warnings(details: dict[str, Any]) -> list[str]:
    """The warnings a DP run's results record: a replayable noise source, a large δ·n."""
    randomness = details.get("randomness") or {}
    out = [randomness["warning"]] if randomness.get("warning") else []
    return out + list(details.get("warnings") or [])


def warn_if_replayable(con: Console, privacy: Any) -> None:
    """Say up front, in words, that a DP run with reproducible noise is not private against its config's holders."""
    from privmed.privacy.randomness import REPLAY_WARNING, randomness_name

    if privacy.mode != "none" and randomness_name(privacy) == "replay":
        con.print(f"[bold red]warning:[/bold red] {REPLAY_WARNING}")
