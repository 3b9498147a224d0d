"""Carry a privmed :class:`~privmed.config.Config` through Flower's flat run config and back.

Flower's ``run_config`` is a flat mapping of scalars (``bool | int | float | str``). A privmed config is
flattened to one key per field, ``"<section>.<field>"`` (``"train.epochs"``, ``"federation.rounds"``), with
two encodings for what is not a scalar:

- dict fields (``data.options``, ``data.partition_options``) become a TOML inline table in a string,
  ``'{ classes = 2, n_train = 1200 }'``, so one override replaces the whole table (options differ per
  dataset, and Flower refuses override keys that its defaults lack);
- ``None`` (``model.width``, ``privacy.noise_multiplier``) becomes the empty string.

Keys outside the config sections carry run options that are not part of the experiment: ``run.*``
(output folder, resume, timeouts) and ``testing.*`` (fault injection, for tests only). The same flat
mapping is what ``flwr run --run-config`` overrides, what ``[tool.flwr.app.config]`` declares and what the
embedded simulation passes in, so every process rebuilds the config with :func:`privmed.config.from_dict`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import Any

from privmed.config import _SECTION_TYPES, Config, from_dict
from privmed.errors import ConfigError

FlatConfig = dict[str, bool | int | float | str]

#: Run options that are not part of the experiment, with their defaults (all must be Flower scalars).
RUN_OPTION_DEFAULTS: FlatConfig = {
    # where the ServerApp writes results.json and checkpoints ("" = ./privmed-runs/<run id>)
    "run.out-dir": "",
    # continue from the last complete round's checkpoint in run.out-dir
    "run.resume": False,
    # seconds to wait for one round's replies before counting the missing ones as failures (0 = no limit)
    "run.round-timeout": 0.0,
    # seconds to wait for enough SuperNodes to connect before giving up with a clear error
    "run.connect-timeout": 120.0,
    # TESTING / FAULT INJECTION ONLY: comma-separated partition ids whose fit raises on purpose, in every round
    # ("1,2") or in one round ("1@2": partition 1 in round 2)
    "testing.fail-partitions": "",
}


@dataclass(frozen=True)
class RunOptions:
    """The ``run.*`` and ``testing.*`` keys of a flat run config."""

    out_dir: str = ""
    resume: bool = False
    round_timeout: float = 0.0
    connect_timeout: float = 120.0
    #: fault injection for tests: these partitions raise in ``fit``
    fail_partitions: tuple[int, ...] = ()
    #: fault injection for tests: ``(partition, round)`` pairs that raise in ``fit`` in that round only
    fail_at: tuple[tuple[int, int], ...] = ()


def _toml_value(value: Any) -> str:
    """A scalar or list as TOML source."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return _inline_table(value)
    raise ConfigError(f"cannot pass {value!r} ({type(value).__name__}) through Flower's run config")


def _inline_table(table: dict[str, Any]) -> str:
    if not table:
        return "{}"
    return "{ " + ", ".join(f"{key} = {_toml_value(value)}" for key, value in sorted(table.items())) + " }"


def flatten_config(cfg: Config) -> FlatConfig:
    """A :class:`Config` as a flat Flower run config (see the module docstring for the encoding)."""
    flat: FlatConfig = {}
    for section in _SECTION_TYPES:
        for fld in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), fld.name)
            key = f"{section}.{fld.name}"
            if value is None:
                flat[key] = ""
            elif isinstance(value, dict):
                flat[key] = _inline_table(value)
            else:
                flat[key] = value
    return flat


def _optional_fields() -> set[str]:
    return {
        f"{section}.{fld.name}"
        for section, cls in _SECTION_TYPES.items()
        for fld in dataclasses.fields(cls)
        if fld.default is None
    }


def _dict_fields() -> set[str]:
    return {
        f"{section}.{fld.name}"
        for section, cls in _SECTION_TYPES.items()
        for fld in dataclasses.fields(cls)
        if fld.default_factory is dict
    }


def unflatten_config(flat: dict[str, Any], *, source: str = "run config") -> tuple[Config, RunOptions]:
    """Rebuild the :class:`Config` and the :class:`RunOptions` from a flat run config.

    Raises
    ------
    ConfigError
        For an unknown key (in any section, like the TOML loader), a malformed inline table or a value of
        the wrong type.
    """
    raw: dict[str, dict[str, Any]] = {}
    run: dict[str, Any] = {}
    optional, dict_fields = _optional_fields(), _dict_fields()
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if section in ("run", "testing"):
            if key not in RUN_OPTION_DEFAULTS:
                raise ConfigError(
                    f"unknown run option {key!r} in {source}; valid: {', '.join(sorted(RUN_OPTION_DEFAULTS))}"
                )
            run[key] = value
            continue
        if not dot or "." in name:
            raise ConfigError(
                f"run-config key {key!r} in {source} must look like <section>.<field> (e.g. train.epochs); "
                "tables such as data.options are passed whole as an inline table string"
            )
        if key in dict_fields and isinstance(value, str):
            try:
                value = tomllib.loads(f"v = {value}")["v"] if value.strip() else {}
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(
                    f"{key} = {value!r} in {source} is not a TOML inline table ({exc}); "
                    "write it like '{ classes = 2, n_train = 1200 }'"
                ) from None
        elif key in optional and value == "":
            value = None
        raw.setdefault(section, {})[name] = value
    cfg = from_dict(raw, source=source)
    return cfg, _run_options(run)


def _run_options(run: dict[str, Any]) -> RunOptions:
    merged = {**RUN_OPTION_DEFAULTS, **run}
    fail = str(merged["testing.fail-partitions"]).replace(" ", "")
    try:
        items = [p for p in fail.split(",") if p]
        fail_ids = tuple(int(p) for p in items if "@" not in p)
        fail_at = tuple((int(p.split("@")[0]), int(p.split("@")[1])) for p in items if "@" in p)
    except (ValueError, IndexError):
        raise ConfigError(
            "testing.fail-partitions must be comma-separated partition ids (or id@round), got "
            f"{merged['testing.fail-partitions']!r}"
        ) from None
    return RunOptions(
        out_dir=str(merged["run.out-dir"]),
        resume=bool(merged["run.resume"]),
        round_timeout=float(merged["run.round-timeout"]),
        connect_timeout=float(merged["run.connect-timeout"]),
        fail_partitions=fail_ids,
        fail_at=fail_at,
    )


def run_config(cfg: Config, options: RunOptions | None = None) -> FlatConfig:
    """The full flat run config for ``cfg`` and ``options`` (what the embedded simulation passes in)."""
    options = options or RunOptions()
    return {
        **flatten_config(cfg),
        "run.out-dir": options.out_dir,
        "run.resume": options.resume,
        "run.round-timeout": float(options.round_timeout),
        "run.connect-timeout": float(options.connect_timeout),
        "testing.fail-partitions": ",".join(
            [str(p) for p in options.fail_partitions] + [f"{p}@{r}" for p, r in options.fail_at]
        ),
    }


def run_config_overrides(flat: FlatConfig) -> str:
    """``flat`` as the string ``flwr run --run-config`` takes (``key=value`` pairs in TOML syntax)."""
    parts = []
    for key, value in flat.items():
        text = _toml_value(value)
        if isinstance(value, str) and "'" not in value:
            text = "'" + value + "'"  # a TOML literal string keeps inner double quotes intact
        parts.append(f"{key}={text}")
    return " ".join(parts)


def pyproject_app_config(cfg: Config) -> str:
    """The ``[tool.flwr.app.config]`` TOML block declaring every key with ``cfg``'s values as defaults."""
    lines = ["[tool.flwr.app.config]"]
    for key, value in run_config(cfg).items():
        lines.append(f'"{key}" = {_toml_value(value)}')
    return "\n".join(lines) + "\n"
