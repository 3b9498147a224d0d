"""``privmed data``: describe, download and check datasets, and show how a config splits them across clients.

::

    privmed data list
    privmed data info pneumoniamnist
    privmed data download pneumoniamnist --size 64
    privmed data verify pneumoniamnist [--root DIR]
    privmed data partition smoke --set 'data.partition_options={alpha = 0.1}' --plot hist.png

Results (tables, "OK" lines) go to stdout, whole whatever the terminal's width; progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.table import Table

from privmed.cli._common import console, results_console
from privmed.config import load_config
from privmed.data import load_dataset
from privmed.data.base import Dataset, DatasetInfo
from privmed.data.medmnist import INFO, SIZES, fetch_medmnist, get_info, medmnist_path, verify_medmnist
from privmed.data.partition import label_histogram, partition_dataset
from privmed.data.phantom import DEFAULT_SPLITS, make_phantom
from privmed.errors import ConfigError


def _cmd_list(args: argparse.Namespace) -> int:
    table = Table(title="Datasets (MedMNIST v2 2D, plus built-in and own data)")
    longest = max(len(name) for name in [*INFO, "phantom", "folder"])
    table.add_column("name", no_wrap=True, min_width=longest)  # names are never cut, whatever the width
    for column in ("task", "ch", "classes", "train", "val", "test", "license", "local sizes"):
        table.add_column(column, justify="right" if column in ("ch", "classes", "train", "val", "test") else "left")
    for name, record in INFO.items():
        local = [str(s) for s in SIZES if medmnist_path(name, size=s, root=args.root).is_file()]
        n = record.n_samples
        table.add_row(
            name,
            record.task,
            str(record.n_channels),
            str(len(record.labels)),
            *(f"{n[s]:,}" for s in ("train", "val", "test")),
            record.license,
            ", ".join(local) or "-",
        )
    table.add_row("phantom", "binary/multi-class", "1/3", "2-8", "", "", "", "CC0", "built-in (synthetic)")
    table.add_row("folder", "binary/multi-class", "auto", "sub-folders", "", "", "", "yours", "option path=<dir>")
    results_console().print(table)
    return 0


def _phantom_info() -> DatasetInfo:
    tiny = make_phantom(n_train=2, n_val=2, n_test=2)
    return dataclasses.replace(tiny.info, n_samples=dict(DEFAULT_SPLITS))


def _cmd_info(args: argparse.Namespace) -> int:
    if args.name.lower() == "phantom":
        info, record = _phantom_info(), None
    else:
        record = get_info(args.name)
        info = record.dataset_info(args.size)
    table = Table(title=f"{info.display_name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("task", info.task)
    table.add_row("channels", f"{info.n_channels} ({'grey' if info.n_channels == 1 else 'RGB'})")
    table.add_row("labels", "\n".join(f"{k}: {v}" for k, v in info.labels.items()))
    table.add_row("splits", ", ".join(f"{k} {v:,}" for k, v in info.n_samples.items()))
    table.add_row("license", info.license)
    table.add_row("description", info.description)
    if record is not None:
        for size in SIZES:
            path = medmnist_path(record.name, size=size, root=args.root)
            table.add_row(
                f"{size} px",
                f"{record.url(size)}\nMD5 {record.md5[size]}\n{path} ({'present' if path.is_file() else 'absent'})",
            )
    results_console().print(table)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    target = medmnist_path(args.name, size=args.size, root=args.root)
    if not target.is_file():
        console().print(f"downloading {get_info(args.name).url(args.size)} to {target.parent} ...")
    path = fetch_medmnist(args.name, size=args.size, root=args.root, download=True)
    md5 = verify_medmnist(args.name, size=args.size, root=args.root)
    results_console().print(f"{path} [green]OK[/green] (MD5 {md5})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    md5 = verify_medmnist(args.name, size=args.size, root=args.root)
    path = medmnist_path(args.name, size=args.size, root=args.root)
    results_console().print(f"{path} [green]OK[/green]: MD5 {md5} is the official one")
    return 0


def _class_names(info: DatasetInfo) -> list[str]:
    names = [f"{k}: {v}" if len(v) <= 16 else f"{k}: {v[:15]}…" for k, v in info.labels.items()]
    # multi-label data is partitioned by first positive label; "none" holds examples with no positive label
    return [*names, "none"] if info.multilabel else names


def _histogram_table(title: str, counts: np.ndarray, names: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("client", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right", style="bold")
    for client, row in enumerate(counts):
        table.add_row(str(client), *(str(v) for v in row), str(int(row.sum())))
    table.add_row("all", *(str(v) for v in counts.sum(axis=0)), str(int(counts.sum())), style="bold")
    return table


def _plot_format(path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fmt = path.suffix.lstrip(".").lower()
    supported = FigureCanvasAgg.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"--plot {path}: unknown image type {fmt or '(none)'!r}; use one of {', '.join(supported)}")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {path}: folder {path.parent} does not exist; create it first")
    return fmt


def _write_plot(path: Path, fmt: str, title: str, counts: np.ndarray, names: list[str]) -> None:
    """A stacked bar per client, one colour per class, written atomically (temp file + rename)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.45 * counts.shape[0] + 3.0), 4.5), layout="constrained")
    ax = fig.subplots()
    clients = np.arange(counts.shape[0])
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    bottom = np.zeros(counts.shape[0])
    for k, name in enumerate(names):
        ax.bar(clients, counts[:, k], bottom=bottom, color=cmap(k % cmap.N), label=name, width=0.8)
        bottom += counts[:, k]
    ax.set_xlabel("client")
    ax.set_ylabel("training examples")
    ax.set_xticks(clients)
    ax.set_title(title, fontsize=10)
    ax.legend(title="class", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_partition(args: argparse.Namespace) -> int:
    plot = Path(args.plot) if args.plot else None
    fmt = _plot_format(plot) if plot else ""
    cfg = load_config(args.config, overrides=args.set)
    data = cfg.data
    dataset: Dataset = load_dataset(data.name, size=data.size, **data.options)
    parts = partition_dataset(dataset, data)
    names = _class_names(dataset.info)
    counts = label_histogram(dataset.train.class_labels, parts, len(names))
    options = ", ".join(f"{k}={v}" for k, v in data.partition_options.items())
    title = (
        f"{dataset.info.display_name}\n{data.partitioner}({options}) of the train split, "
        f"{data.num_clients} clients, seed {data.seed}"
    )
    results_console().print(_histogram_table(title.replace("\n", ": "), counts, names))
    if plot is not None:
        _write_plot(plot, fmt, title, counts, names)
        results_console().print(f"plot written to {plot}")
    return 0


def _add_size_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=28, choices=SIZES, help="image side in pixels (default 28)")
    parser.add_argument(
        "--root", default=None, help="data folder (default: $PRIVMED_DATA_DIR, else ~/.cache/privmed/medmnist)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``privmed data`` and its subcommands."""
    parser = sub.add_parser("data", help="describe, download, verify and partition datasets")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    handlers: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "list": ("list the datasets and which files are present", _cmd_list),
        "info": ("describe a dataset (task, labels, splits, URLs, MD5s)", _cmd_info),
        "download": ("download an official MedMNIST file and check its MD5", _cmd_download),
        "verify": ("check a local MedMNIST file against its official MD5", _cmd_verify),
        "partition": ("print (and plot) how a config splits the train set across clients", _cmd_partition),
    }
    parsers = {}
    for name, (help_text, handler) in handlers.items():
        parsers[name] = commands.add_parser(name, help=help_text, description=help_text)
        parsers[name].set_defaults(func=handler)
    parsers["list"].add_argument("--root", default=None, help="data folder to look in")
    parsers["info"].add_argument("name", help="dataset name, e.g. pneumoniamnist (or phantom)")
    _add_size_root(parsers["info"])
    for name in ("download", "verify"):
        parsers[name].add_argument("name", help="MedMNIST dataset name, e.g. pneumoniamnist")
        _add_size_root(parsers[name])
    partition = parsers["partition"]
    partition.add_argument("config", help="config TOML file or preset name (e.g. smoke)")
    partition.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (TOML syntax), e.g. --set data.num_clients=8; repeatable",
    )
    partition.add_argument("--plot", default=None, metavar="OUT.png", help="also write a stacked bar plot")
