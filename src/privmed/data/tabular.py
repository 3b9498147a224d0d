"""Clinical tables and ICU time series in privmed's dataset seam.

Three sources, each a :class:`~privmed.data.base.Dataset` whose splits hold model-ready ``float32`` features
(``Split.images``: ``(N, F)`` for a table, ``(N, T, F)`` for a series) and whose info carries a
:class:`TabularSchema` (feature names, binary columns, categorical one-hot blocks, public per-feature mean and
standard deviation for an attacker's Gaussian prior):

- ``"breast-cancer-table"``: the real Wisconsin diagnostic breast-cancer table that scikit-learn ships
  (569 × 30, malignant vs benign; Street, Wolberg & Mangasarian 1993), standardised with train-split statistics.
- ``"icu-synthetic"``: a seeded generator of ICU stays in the layout of the MIMIC-III benchmark's in-hospital
  mortality task (Harutyunyan et al. 2019, *Multitask learning and benchmarking with clinical time series data*,
  Sci. Data 6:96): 48 hourly steps × 76 columns = 17 channels discretised by the benchmark's discretizer (12
  continuous vitals/labs, 5 categorical channels one-hot over the benchmark's ``possible_values``: capillary
  refill and the four Glasgow coma scale items) followed by 17 observation masks. **Synthetic, not patient
  data**: its info says ``synthetic=True`` and every table names it ``icu-synthetic (synthetic)``.
- ``"mimic3-ihm"``: a reader for the real benchmark's episode CSVs (``root/{train,test}/*_timeseries.csv``
  with ``root/{train,val,test}_listfile.csv``), for users with credentialed PhysioNet access; it runs the same
  discretizer (1-hour bins, ``previous`` imputation, normal values where nothing was seen yet, masks appended).

Continuous columns are standardised with the train split's statistics; binary masks and one-hot columns stay
0/1. The public mean/std of the schema are those of the train split in model space (what a hospital consortium
could publish; an attacker's prior).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privmed.data.base import Dataset, DatasetInfo, Split
from privmed.errors import DataError

log = logging.getLogger(__name__)

# -- the MIMIC-III benchmark layout (mimic3models/resources/discretizer_config.json) -------------------------
#: The 17 channels, in the discretizer's order.
CHANNELS: tuple[str, ...] = (
    "Capillary refill rate",
    "Diastolic blood pressure",
    "Fraction inspired oxygen",
    "Glascow coma scale eye opening",
    "Glascow coma scale motor response",
    "Glascow coma scale total",
    "Glascow coma scale verbal response",
    "Glucose",
    "Heart Rate",
    "Height",
    "Mean blood pressure",
    "Oxygen saturation",
    "Respiratory rate",
    "Systolic blood pressure",
    "Temperature",
    "Weight",
    "pH",
)
#: Categorical channels -> their possible values, in the discretizer's one-hot order.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Capillary refill rate": ("0.0", "1.0"),
    "Glascow coma scale eye opening": (
        "To Pain",
        "3 To speech",
        "1 No Response",
        "4 Spontaneously",
        "None",
        "To Speech",
        "Spontaneously",
        "2 To pain",
    ),
    "Glascow coma scale motor response": (
        "1 No Response",
        "3 Abnorm flexion",
        "Abnormal extension",
        "No response",
        "4 Flex-withdraws",
        "Localizes Pain",
        "Flex-withdraws",
        "Obeys Commands",
        "Abnormal Flexion",
        "6 Obeys Commands",
        "5 Localizes Pain",
        "2 Abnorm extensn",
    ),
    "Glascow coma scale total": ("11", "10", "13", "12", "15", "14", "3", "5", "4", "7", "6", "9", "8"),
    "Glascow coma scale verbal response": (
        "1 No Response",
        "No Response",
        "Confused",
        "Inappropriate Words",
        "Oriented",
        "No Response-ETT",
        "5 Oriented",
        "Incomprehensible sounds",
        "1.0 ET/Trach",
        "4 Confused",
        "2 Incomp sounds",
        "3 Inapprop words",
    ),
}
#: The discretizer's normal values (imputed before the first observation).
NORMAL_VALUES: dict[str, str] = {
    "Capillary refill rate": "0.0",
    "Diastolic blood pressure": "59.0",
    "Fraction inspired oxygen": "0.21",
    "Glascow coma scale eye opening": "4 Spontaneously",
    "Glascow coma scale motor response": "6 Obeys Commands",
    "Glascow coma scale total": "15",
    "Glascow coma scale verbal response": "5 Oriented",
    "Glucose": "128.0",
    "Heart Rate": "86",
    "Height": "170.0",
    "Mean blood pressure": "77.0",
    "Oxygen saturation": "98.0",
    "Respiratory rate": "19",
    "Systolic blood pressure": "118.0",
    "Temperature": "36.6",
    "Weight": "81.0",
    "pH": "7.4",
}
#: Steps of the in-hospital mortality task (the first 48 hours, 1-hour bins).
HOURS = 48


@dataclass(frozen=True)
class TabularSchema:
    """What the columns of a table or series are; public, so it travels in update records.

    Parameters
    ----------
    feature_names
        One name per feature (column of a table, per-step column of a series).
    input_shape
        One example: ``(F,)`` for a table, ``(T, F)`` for a series.
    binary
        Indices of the columns that only take 0 and 1 (masks; one-hot columns are listed in ``categorical``).
    categorical
        ``(name, column indices)`` of every one-hot block (exactly one 1 per row and step).
    mean, std
        Public per-feature mean and standard deviation in model space (the Gaussian prior).
    """

    feature_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    binary: tuple[int, ...] = ()
    categorical: tuple[tuple[str, tuple[int, ...]], ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n = self.n_features
        if len(self.feature_names) != n:
            raise DataError(f"the schema names {len(self.feature_names)} features but its input shape has {n}")
        used = [*self.binary, *(i for _, block in self.categorical for i in block)]
        bad = [i for i in used if not 0 <= i < n]
        if bad:
            raise DataError(f"the schema's binary/categorical columns {bad[:5]} are outside 0..{n - 1}")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if values and len(values) != n:
                raise DataError(f"the schema's public {what} has {len(values)} values for {n} features")

    @property
    def n_features(self) -> int:
        """Features per row (table) or per time step (series)."""
        return int(self.input_shape[-1])

    @property
    def modality(self) -> str:
        """``"table"`` for ``(F,)`` inputs, ``"series"`` for ``(T, F)``."""
        return "table" if len(self.input_shape) == 1 else "series"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written into an update record's ``data``."""
        return {
            "modality": self.modality,
            "input_shape": list(self.input_shape),
            "feature_names": list(self.feature_names),
            "binary_columns": list(self.binary),
            "categorical_blocks": [{"name": name, "columns": list(cols)} for name, cols in self.categorical],
            "feature_mean": list(self.mean),
            "feature_std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularSchema:
        """Read the schema back from a record's ``data`` (:meth:`to_dict`)."""
        try:
            shape = tuple(int(v) for v in data["input_shape"])
            names = data.get("feature_names") or [f"x{i}" for i in range(shape[-1])]
            return cls(
                feature_names=tuple(str(n) for n in names),
                input_shape=shape,
                binary=tuple(int(i) for i in data.get("binary_columns", ())),
                categorical=tuple(
                    (str(b["name"]), tuple(int(i) for i in b["columns"])) for b in data.get("categorical_blocks", ())
                ),
                mean=tuple(float(v) for v in data.get("feature_mean", ())),
                std=tuple(float(v) for v in data.get("feature_std", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the record's tabular schema is incomplete or malformed ({exc!r})") from None

    def check(self, x: np.ndarray, *, what: str = "inputs") -> None:
        """Refuse inputs whose shape does not fit the schema or whose binary columns are not 0/1.

        Raises
        ------
        DataError
            Naming the mismatch.
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(
                f"{what} have shape {tuple(x.shape[1:])} per example but the schema says {self.input_shape} "
                f"({self.n_features} features); the data and the schema do not belong together"
            )
        cols = [*self.binary, *(i for _, block in self.categorical for i in block)]
        if cols:
            values = x[..., cols]
            if not np.isin(values, (0.0, 1.0)).all():
                bad = sorted({cols[j] for j in np.nonzero(~np.isin(values, (0.0, 1.0)))[-1]})
                raise DataError(
                    f"{what}: declared binary/one-hot columns {bad[:5]} hold values other than 0 and 1; "
                    "fix the schema (binary_columns / categorical_blocks) or the data"
                )


def public_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature mean and standard deviation over all rows (and steps) of ``x``."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    std = np.maximum(flat.std(axis=0), 1e-3)
    return tuple(float(v) for v in flat.mean(axis=0)), tuple(float(v) for v in std)


def _standardise(
    splits: Mapping[str, np.ndarray], columns: Sequence[int]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Standardise ``columns`` of every split with the train split's statistics."""
    cols = np.asarray(columns, dtype=np.int64)
    train = splits["train"].reshape(-1, splits["train"].shape[-1])[:, cols].astype(np.float64)
    mu, sd = train.mean(axis=0), np.maximum(train.std(axis=0), 1e-6)
    out = {}
    for name, x in splits.items():
        y = x.astype(np.float32).copy()
        y[..., cols] = ((y[..., cols] - mu) / sd).astype(np.float32)
        out[name] = y
    return out, mu, sd


def _stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices of a seeded stratified split into ``len(fractions)`` parts."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * idx.size).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _dataset(
    name: str,
    arrays: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    schema_args: Mapping[str, Any],
    **info: Any,
) -> Dataset:
    """Assemble a tabular :class:`Dataset` (public stats from the train split)."""
    mean, std = public_stats(arrays["train"])
    schema = TabularSchema(mean=mean, std=std, **schema_args)
    for split, x in arrays.items():
        schema.check(x, what=f"{name} {split} split")
    info_rec = DatasetInfo(
        name=name,
        task="binary-class",
        n_channels=schema.n_features,
        size=0,
        n_samples={k: int(v.shape[0]) for k, v in arrays.items()},
        modality=schema.modality,
        schema=schema,
        **info,
    )
    splits = {k: Split(arrays[k], targets[k].reshape(-1, 1).astype(np.int64)) for k in ("train", "val", "test")}
    return Dataset(info_rec, splits["train"], splits["val"], splits["test"])


# -- the Wisconsin breast-cancer table ----------------------------------------------------------------------
def load_breast_cancer_table(
    *, size: int = 0, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> Dataset:
    """The Wisconsin diagnostic breast-cancer table (569 × 30) that scikit-learn ships, standardised.

    Parameters
    ----------
    size
        Ignored (an image option; accepted so every loader takes the same call).
    seed
        Seed of the stratified train / val / test split.
    val_fraction, test_fraction
        Split fractions.

    Notes
    -----
    Labels are scikit-learn's (0 = malignant, 1 = benign). Features are standardised with the train split's
    mean and standard deviation.
    """
    from sklearn.datasets import load_breast_cancer

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1), sum < 1")
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float64), raw.target.astype(np.int64)
    fractions = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
    idx = dict(zip(("train", "val", "test"), _stratified_split(y, fractions, seed), strict=True))
    arrays, _, _ = _standardise({k: x[v] for k, v in idx.items()}, range(x.shape[1]))
    return _dataset(
        "breast-cancer-table",
        arrays,
        {k: y[v] for k, v in idx.items()},
        {"feature_names": tuple(str(n) for n in raw.feature_names), "input_shape": (x.shape[1],)},
        labels={"0": "malignant", "1": "benign"},
        description="Wisconsin diagnostic breast cancer (scikit-learn), 30 standardised features",
        license="CC BY 4.0 (UCI Machine Learning Repository)",
    )


# -- the benchmark discretizer ---------------------------------------------------------------------------------
def _layout() -> tuple[list[str], list[int], list[tuple[str, tuple[int, ...]]], list[int]]:
    """Column names, continuous columns, one-hot blocks and mask columns of the 76-column layout."""
    names: list[str] = []
    continuous: list[int] = []
    blocks: list[tuple[str, tuple[int, ...]]] = []
    for channel in CHANNELS:
        if channel in CATEGORIES:
            start = len(names)
            names += [f"{channel}->{v}" for v in CATEGORIES[channel]]
            blocks.append((channel, tuple(range(start, len(names)))))
        else:
            continuous.append(len(names))
            names.append(channel)
    masks = list(range(len(names), len(names) + len(CHANNELS)))
    names += [f"mask->{c}" for c in CHANNELS]
    return names, continuous, blocks, masks


FEATURE_NAMES, CONTINUOUS_COLUMNS, CATEGORICAL_BLOCKS, MASK_COLUMNS = _layout()


def _normal_code(channel: str) -> float:
    value = NORMAL_VALUES[channel]
    return float(CATEGORIES[channel].index(value)) if channel in CATEGORIES else float(value)


def discretize(values: np.ndarray) -> np.ndarray:
    """The benchmark discretizer on hourly bins: ``(N, T, 17)`` raw values -> ``(N, T, 76)`` columns.

    ``values`` holds, per channel, the last value observed in each hour (category index for categorical
    channels) and NaN where nothing was observed. Missing hours take the previous observation, or the
    channel's normal value before the first; categorical channels become one-hot blocks; the 17 observation
    masks are appended (Harutyunyan et al. 2019, ``Discretizer(impute_strategy="previous")``).
    """
    n, t, _ = values.shape
    observed = ~np.isnan(values)
    last = np.where(observed, np.arange(t)[None, :, None], -1)
    last = np.maximum.accumulate(last, axis=1)
    filled = np.take_along_axis(np.nan_to_num(values), np.maximum(last, 0), axis=1)
    normal = np.array([_normal_code(ch) for ch in CHANNELS])
    filled = np.where(last < 0, normal[None, None, :], filled)
    out = np.zeros((n, t, len(FEATURE_NAMES)), dtype=np.float32)
    cont_channels = [k for k, ch in enumerate(CHANNELS) if ch not in CATEGORIES]
    out[..., CONTINUOUS_COLUMNS] = filled[..., cont_channels]
    for channel, cols in CATEGORICAL_BLOCKS:
        code = filled[..., CHANNELS.index(channel)].astype(np.int64)
        out[..., cols] = np.eye(len(cols), dtype=np.float32)[code]
    out[..., MASK_COLUMNS] = observed.astype(np.float32)
    return out


def _series_dataset(name: str, raw: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], **info: Any) -> Dataset:
    """Discretise raw ``(N, T, 17)`` values per split, standardise the continuous columns, build the dataset."""
    arrays, _, _ = _standardise({k: discretize(v) for k, v in raw.items()}, CONTINUOUS_COLUMNS)
    t = next(iter(arrays.values())).shape[1]
    schema_args = {
        "feature_names": tuple(FEATURE_NAMES),
        "input_shape": (t, len(FEATURE_NAMES)),
        "binary": tuple(MASK_COLUMNS),
        "categorical": tuple(CATEGORICAL_BLOCKS),
    }
    return _dataset(name, arrays, labels, schema_args, labels={"0": "survived", "1": "died in hospital"}, **info)


# -- the synthetic ICU generator ---------------------------------------------------------------------------------
#: Continuous channels: (normal value, between-patient sd, within-stay sd, hourly observation probability,
#: effect of severity in sd units, low clip, high clip).
_VITALS: dict[str, tuple[float, float, float, float, float, float, float]] = {
    "Diastolic blood pressure": (59.0, 10.0, 6.0, 0.85, -0.6, 20.0, 140.0),
    "Fraction inspired oxygen": (0.35, 0.12, 0.05, 0.15, 0.8, 0.21, 1.0),
    "Glucose": (128.0, 35.0, 20.0, 0.12, 0.4, 40.0, 500.0),
    "Heart Rate": (86.0, 14.0, 6.0, 0.9, 0.6, 30.0, 200.0),
    "Height": (170.0, 10.0, 0.0, 0.02, 0.0, 140.0, 205.0),
    "Mean blood pressure": (77.0, 11.0, 6.0, 0.85, -0.7, 30.0, 160.0),
    "Oxygen saturation": (97.0, 1.5, 1.0, 0.9, -0.7, 70.0, 100.0),
    "Respiratory rate": (19.0, 4.0, 2.5, 0.85, 0.6, 5.0, 50.0),
    "Systolic blood pressure": (118.0, 18.0, 9.0, 0.85, -0.6, 50.0, 230.0),
    "Temperature": (36.8, 0.5, 0.3, 0.3, 0.4, 33.0, 41.0),
    "Weight": (81.0, 18.0, 0.5, 0.04, 0.0, 35.0, 200.0),
    "pH": (7.39, 0.05, 0.03, 0.1, -0.6, 6.9, 7.7),
}
_EYE = {1: "1 No Response", 2: "2 To pain", 3: "3 To speech", 4: "4 Spontaneously"}
_MOTOR = {
    1: "1 No Response",
    2: "2 Abnorm extensn",
    3: "3 Abnorm flexion",
    4: "4 Flex-withdraws",
    5: "5 Localizes Pain",
    6: "6 Obeys Commands",
}
_VERBAL = {1: "1 No Response", 2: "2 Incomp sounds", 3: "3 Inapprop words", 4: "4 Confused", 5: "5 Oriented"}


def _smooth_noise(rng: np.random.Generator, n: int, t: int, phi: float = 0.9) -> np.ndarray:
    """Unit-variance AR(1) paths ``(n, t)``: hour-to-hour correlation ``phi``."""
    eps = rng.standard_normal((n, t))
    out = np.empty((n, t))
    out[:, 0] = eps[:, 0]
    scale = np.sqrt(1 - phi**2)
    for k in range(1, t):
        out[:, k] = phi * out[:, k - 1] + scale * eps[:, k]
    return out


def _simulate_stays(rng: np.random.Generator, n: int, hours: int, mortality: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw hourly values ``(n, hours, 17)`` (NaN = not observed) and mortality labels ``(n,)``."""
    y = (rng.random(n) < mortality).astype(np.int64)
    # a latent severity path: worse on average for those who die, drifting over the stay
    drift = np.linspace(0, 1, hours)[None, :] * (0.8 * y[:, None] - 0.2)
    severity = (rng.normal(0.0, 0.7, (n, 1)) + 0.9 * y[:, None]) + 0.5 * _smooth_noise(rng, n, hours, 0.95) + drift
    values = np.full((n, hours, len(CHANNELS)), np.nan)
    for channel, (normal, between, within, p_obs, effect, low, high) in _VITALS.items():
        base = normal + between * rng.standard_normal((n, 1))
        path = base + within * _smooth_noise(rng, n, hours) + effect * between * severity
        seen = rng.random((n, hours)) < p_obs
        values[..., CHANNELS.index(channel)] = np.where(seen, np.clip(path, low, high), np.nan)
    gcs = np.clip(np.round(14.5 - 3.0 * np.clip(severity, 0, None) + 0.6 * _smooth_noise(rng, n, hours)), 3, 15)
    eye = np.clip(np.round(gcs * 4 / 15), 1, 4)
    verbal = np.clip(np.round(gcs * 5 / 15), 1, 5)
    motor = np.clip(gcs - eye - verbal, 1, 6)
    total = eye + verbal + motor
    seen = rng.random((n, hours)) < 0.25
    for channel, score, names in (
        ("Glascow coma scale eye opening", eye, _EYE),
        ("Glascow coma scale verbal response", verbal, _VERBAL),
        ("Glascow coma scale motor response", motor, _MOTOR),
        ("Glascow coma scale total", total, {s: str(s) for s in range(3, 16)}),
    ):
        lookup = np.full(16, np.nan)
        for s, label in names.items():
            lookup[s] = CATEGORIES[channel].index(label)
        code = lookup[score.astype(np.int64)]
        values[..., CHANNELS.index(channel)] = np.where(seen, code, np.nan)
    refill = (rng.random((n, hours)) < 0.05 + 0.25 * (severity > 1.0)).astype(float)
    values[..., CHANNELS.index("Capillary refill rate")] = np.where(rng.random((n, hours)) < 0.1, refill, np.nan)
    return values, y


def make_icu_series(
    *,
    size: int = 0,
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 400,
    hours: int = HOURS,
    mortality: float = 0.13,
    seed: int = 0,
) -> Dataset:
    """Synthetic ICU stays in the MIMIC-III in-hospital-mortality layout (``hours`` × 76), seeded.

    Each stay has a latent severity path (AR(1), hour-to-hour correlation 0.95; higher and rising for stays
    that end in death) that moves the 12 vitals and labs (each an AR(1) path around a per-patient baseline,
    observed hourly with a channel-specific probability: vitals ~0.85, labs ~0.1, height/weight rarely), the
    Glasgow coma scale items (observed ~every 4 h) and capillary refill; the benchmark's discretizer
    (:func:`discretize`) then makes the 76 columns. Mortality is ``mortality`` (0.13 as in the benchmark).
    Not patient data: the info record is ``synthetic=True``.

    Parameters
    ----------
    size
        Ignored (an image option).
    n_train, n_val, n_test
        Stays per split.
    hours
        Hourly steps per stay (48 in the benchmark).
    mortality
        Probability of the positive label.
    seed
        Everything is deterministic in ``seed``.
    """
    if min(n_train, n_val, n_test) < 1 or hours < 2 or not 0 < mortality < 1:
        raise DataError(
            f"icu-synthetic needs n_train, n_val, n_test >= 1, hours >= 2 and 0 < mortality < 1 "
            f"(got {n_train}, {n_val}, {n_test}, {hours}, {mortality})"
        )
    rng = np.random.default_rng(seed)
    raw, labels = {}, {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        raw[split], labels[split] = _simulate_stays(rng, n, hours, mortality)
    return _series_dataset(
        "icu-synthetic",
        raw,
        labels,
        synthetic=True,
        description=f"synthetic ICU stays in the MIMIC-III benchmark layout ({hours} h x 76), not patient data",
    )


# -- the real benchmark's episode CSVs -------------------------------------------------------------------------------
def read_episode(path: str | Path, *, hours: int = HOURS) -> np.ndarray:
    """One benchmark episode CSV (``Hours`` + the 17 channels) as raw hourly values ``(hours, 17)``.

    Rows are binned by ``int(Hours)`` (1-hour bins from admission to the ICU); in a bin the last value
    observed wins; rows before 0 or after ``hours`` are dropped; empty cells are missing.

    Raises
    ------
    DataError
        For a missing file, a header without the benchmark's columns, or a value that does not parse
        (an unknown category or a non-number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"episode file {str(path)!r} does not exist")
    out = np.full((hours, len(CHANNELS)), np.nan)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("Hours", *CHANNELS) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{str(path)!r} is not a MIMIC-III benchmark episode: no column(s) {missing[:3]}")
        for line, row in enumerate(reader, start=2):
            t = float(row["Hours"])
            if not 0 <= t < hours:
                continue
            for k, channel in enumerate(CHANNELS):
                if row[channel] not in ("", None):
                    out[int(t), k] = _code(channel, row[channel], f"{path.name}:{line}")
    return out


def _code(channel: str, value: str, where: str) -> float:
    """A cell's numeric value (category index for categorical channels)."""
    if channel in CATEGORIES:
        if value not in CATEGORIES[channel]:
            raise DataError(f"{where}: {channel!r} has the value {value!r}, not one of the benchmark's categories")
        return float(CATEGORIES[channel].index(value))
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{where}: {channel!r} has the value {value!r}, which is not a number") from None


#: split -> (listfile, episode folder) of the benchmark's in-hospital-mortality task
_LISTFILES = {
    "train": ("train_listfile.csv", "train"),
    "val": ("val_listfile.csv", "train"),
    "test": ("test_listfile.csv", "test"),
}


def _read_split(root: Path, split: str, hours: int) -> tuple[np.ndarray, np.ndarray]:
    listfile, folder = _LISTFILES[split]
    path = root / listfile
    if not path.is_file():
        raise DataError(
            f"{str(path)!r} is missing; point data.options.root at the benchmark's in-hospital-mortality folder"
        )
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"stay", "y_true"} <= set(rows[0]):
        raise DataError(f"{str(path)!r} needs the columns stay,y_true and at least one row")
    values = np.stack([read_episode(root / folder / r["stay"], hours=hours) for r in rows])
    return values, np.array([int(float(r["y_true"])) for r in rows], dtype=np.int64)


def load_mimic3_ihm(*, size: int = 0, root: str = "", hours: int = HOURS) -> Dataset:
    """The real MIMIC-III benchmark in-hospital-mortality task (credentialed PhysioNet access needed).

    Parameters
    ----------
    size
        Ignored (an image option).
    root
        The benchmark's ``in-hospital-mortality`` folder: ``train_listfile.csv``, ``val_listfile.csv``,
        ``test_listfile.csv`` (``stay,y_true``) and the episode CSVs in ``train/`` and ``test/``.
    hours
        Hourly steps (48).
    """
    if not root:
        raise DataError("mimic3-ihm needs data.options.root = <the benchmark's in-hospital-mortality folder>")
    base = Path(root).expanduser()
    raw, labels = {}, {}
    for split in ("train", "val", "test"):
        raw[split], labels[split] = _read_split(base, split, hours)
    log.info("read %s MIMIC-III episodes from %s", {k: len(v) for k, v in labels.items()}, base)
    return _series_dataset(
        "mimic3-ihm",
        raw,
        labels,
        description="MIMIC-III benchmark in-hospital mortality (Harutyunyan et al. 2019)",
        license="PhysioNet Credentialed Health Data License 1.5.0",
    )
