"""Run configuration: TOML files with one table per stage, checked strictly.

A config file has the tables ``[data]``, ``[model]``, ``[train]``, ``[federation]``, ``[privacy]``,
``[secagg]``, ``[audit]`` (``privmed audit``'s canaries) and ``[malicious]`` (threat-model experiments); each
maps to a dataclass below. Unknown tables or keys are refused with the list of valid ones, so a typo never
silently falls back to a default. Presets live in the repository's ``configs/`` folder and can be named without
the path (``privmed train smoke``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privmed.errors import ConfigError

#: Where presets live: ``<repo>/configs`` for a source checkout.
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class DataConfig:
    """Which dataset, and how it is split across clients."""

    name: str = "phantom"
    size: int = 28
    #: loader options, e.g. ``{root = "...", download = true}`` or ``{classes = 4, channels = 3}``
    options: dict[str, Any] = field(default_factory=dict)
    partitioner: str = "iid"
    #: partitioner options, e.g. ``{alpha = 0.5}`` for ``dirichlet``
    partition_options: dict[str, Any] = field(default_factory=dict)
    num_clients: int = 10
    min_examples: int = 1
    seed: int = 0


@dataclass
class ModelConfig:
    """Which network. ``width`` is the base width (DPResNet: 64 is ResNet-9 64-128-256-512, 32 the slim
    32-64-128-256); ``None`` takes the model's default."""

    name: str = "cnn"
    width: int | None = None
    #: start a federated run from another run's weights instead of a fresh initialisation: a run folder (its last
    #: complete checkpoint) or a weights ``.npz`` file (:mod:`privmed.federation.init_from`); "" = fresh
    init_from: str = ""


@dataclass
class TrainConfig:
    """Local (or centralised) optimisation; plain torch."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    seed: int = 0
    #: random flips / shifts on training images (no torchvision needed)
    augment: bool = False
    #: augmentation multiplicity: train on this many augmented views of every example and average their
    #: gradients (needs ``augment``; under DP-SGD it needs ``privacy.grad_sample_mode = "bk"``)
    augment_multiplicity: int = 1
    #: learning-rate schedule over the run (epochs when centralised, rounds when federated): a key of
    #: :data:`privmed.train.LR_SCHEDULES` (``"constant"``, ``"cosine"``)
    lr_schedule: str = "constant"


@dataclass
class FederationConfig:
    """Flower FedAvg / FedProx settings and the simulation resources."""

    rounds: int = 5
    #: ``"fedavg"``, ``"fedprox"`` or ``"fedavgm"`` (FedAvg with server momentum, Hsu et al. 2019)
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    #: ``"fedavgm"``: server learning rate and momentum applied to the averaged update
    server_lr: float = 1.0
    server_momentum: float = 0.0
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    fraction_evaluate: float = 0.0
    min_evaluate_clients: int = 0
    local_epochs: int = 1
    #: evaluate (and select by validation) an exponential moving average of the global model over rounds
    #: with this decay; 0 evaluates the latest global model. Post-processing: free under DP.
    ema_decay: float = 0.0
    #: write update records (what the server received) for these rounds: "1,2", "1-3", "all"; "" = off
    #: (:mod:`privmed.federation.record`; under SecAgg+ only the aggregate exists)
    record: str = ""
    #: partition ids to record ("0,3"); "" = every client
    record_clients: str = ""
    #: simulation engine resources: CPUs per simulated client and CPUs given to Ray
    client_num_cpus: float = 1.0
    num_cpus: int = 2


@dataclass
class PrivacyConfig:
    """Differential privacy. ``mode`` is ``"none"``, ``"sample"`` (DP-SGD per client: every example of a
    client is protected), ``"client"`` (client-level DP: a client's whole contribution is protected) or
    ``"distributed"`` (one DP-SGD step per round over the union of the clients' examples, the noise split
    across clients under SecAgg+: :mod:`privmed.federation.dp_distributed`; ``train.batch_size`` is then the
    expected batch of the whole federation).

    ``epsilon`` and ``delta`` are the target for the whole run; ``max_grad_norm`` is C, the per-example
    gradient clipping norm (``"sample"``) or the update clipping norm (``"client"``).
    """

    mode: str = "none"
    epsilon: float = 6.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    #: set to override calibration; otherwise sigma is calibrated to (epsilon, delta) for the whole run
    noise_multiplier: float | None = None
    accountant: str = "rdp"
    #: ``"sample"``: how per-example gradients are clipped: ``"hooks"``, ``"ew"``, ``"functorch"`` (Opacus'
    #: per-sample gradients) or ``"bk"`` (book-keeping with ghost norms, :mod:`privmed.privacy.bookkeeping`)
    grad_sample_mode: str = "hooks"
    #: ``"client"``: who adds the noise; ``"central"`` (the server, to the aggregate) or ``"split"`` (every
    #: sampled client adds its share, so the server never sees an un-noised aggregate: use with SecAgg+)
    client_noise: str = "central"
    #: draw the DP noise and the Poisson sampling from a cryptographically secure generator (ChaCha20 keyed
    #: from the OS) with a defence against floating-point attacks (:mod:`privmed.privacy.randomness`); slower
    secure_rng: bool = False
    #: derive the DP noise and sampling from ``train.seed`` so that a run can be replayed exactly. Tests and
    #: benchmark replays only: such a run is NOT private against anyone who holds its config
    reproducible_noise: bool = False


@dataclass
class SecAggConfig:
    """Flower's SecAgg+ (legacy API), checked and reported by :mod:`privmed.federation.secagg`.

    Every client secret-shares its keys with ``num_shares`` neighbours (itself included; odd, or all the
    clients sampled per round); ``reconstruction_threshold`` shares recover a secret, so a round survives
    while every client keeps that many live neighbours (up to ``num_shares - reconstruction_threshold``
    dropouts). Each client's parameters times ``num_examples / max_weight`` are clipped to
    ``[-clipping_range, clipping_range]`` and quantised to ``quantization_range`` levels; privmed refuses
    parameters that would be clipped.
    """

    enabled: bool = False
    num_shares: int = 3
    reconstruction_threshold: int = 2
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    #: the largest weight a client may send; 0 = the largest a client does send (its number of examples,
    #: 1 under client-level DP), which keeps the quantisation error smallest
    max_weight: float = 0.0
    #: seconds to wait for each SecAgg+ stage's replies; 0 = ``run.round-timeout``
    timeout: float = 0.0
    #: accept ``reconstruction_threshold <= num_shares / 2`` (Bell et al. assume more than half: with at most
    #: half, a server that lies about dropouts can collect both kinds of shares of a client and unmask it)
    allow_low_threshold: bool = False


@dataclass
class MaliciousConfig:
    """A malicious server, for threat-model experiments only (``docs/attacks-malicious.md``).

    ``model`` names a key of :data:`privmed.federation.malicious.TAMPERED_MODELS` (``"imprint"``: Robbing the
    Fed's binning block in front of the global model); ``""`` is an honest server. In round ``round``
    (``0``: every round) the server sends the tampered model instead of the global one, keeps what comes back,
    and continues training from the global model's part of the aggregate. ``options`` go to the tampered
    model's builder (imprint: ``bins``, ``stats``, ``mean``, ``std``, ``gain``, ``scale``, ``seed``).
    ``record_dir`` (when set) receives the update records of the tampered rounds.
    """

    model: str = ""
    round: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    record_dir: str = ""


@dataclass
class AuditConfig:
    """``privmed audit`` (:mod:`privmed.audit`): gradient canaries and the empirical ε bound.

    ``canaries`` = 0 leaves training untouched (``privmed federate``). The canaries' inclusion coins are
    never in the config: ``privmed audit`` draws them from OS entropy into ``work_dir``, which only the
    auditor (and, in simulation, the canary-holding clients) read.
    """

    #: gradient (Dirac) canaries, each included with probability 1/2 (0 = no audit)
    canaries: int = 0
    #: failure probability of the lower bounds (confidence 1 - beta)
    beta: float = 0.05
    #: the auditor's folder (secret coins, what the server saw); set by ``privmed audit``
    work_dir: str = ""
    #: FOR TESTING THE AUDIT ONLY: break the noise after calibration ("none", "off", "tenth")
    break_noise: str = "none"
    #: also run the auditor that regenerates the noise from the config and subtracts it
    replay_noise: bool = True
    #: the white-box auditor also knows the training data (DP's adversary) and subtracts the real examples'
    #: clipped gradients at the canaries (privmed.audit.known_data)
    known_data: bool = False
    #: input-space example canaries (random images with random labels, each included with probability 1/2) for
    #: the black-box (final-model-only) audit, privacy.mode = "distributed" (privmed.audit.example_canaries; 0 = none)
    example_canaries: int = 0
    #: federated canary clients for privacy.mode = "client" (Andrew et al. 2024; 0 = none)
    canary_clients: int = 0
    #: attacks (``privmed attack list``), comma-separated, on what the server saw: honest-but-curious ones invert
    #: the records of ``attack_round``; malicious ones (``imprint``) get a one-round run with the tampered model
    attacks: str = ""
    #: settings per attack, e.g. ``{ inverting-gradients = { iterations = 300 } }``
    attack_settings: dict[str, Any] = field(default_factory=dict)
    #: the round whose recorded update the honest-but-curious attacks invert
    attack_round: int = 1
    #: one axis to sweep, ``{ key = "privacy.epsilon", values = [2, 4, 8] }``: an audit per value, cached by
    #: config hash (:mod:`privmed.audit.sweep`)
    sweep: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    malicious: MaliciousConfig = field(default_factory=MaliciousConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    #: where this config came from, for results files
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "federation": FederationConfig,
    "privacy": PrivacyConfig,
    "secagg": SecAggConfig,
    "malicious": MaliciousConfig,
    "audit": AuditConfig,
}


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Check a value against the type of its default; ints are accepted where floats are expected."""
    if default is None or isinstance(default, dict):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"[{section}] {key} = {value!r} has the wrong type; expected {type(default).__name__}")
    return value


#: Tables that another command reads from the same file (``privmed gan``'s ``[gan]``,
#: :mod:`privmed.gan.config`); :func:`from_dict` leaves them to it.
EXTENSION_TABLES: frozenset[str] = frozenset({"gan"})


def from_dict(raw: dict[str, Any], *, source: str = "") -> Config:
    """Build a :class:`Config` from nested dicts, refusing unknown tables and keys (:data:`EXTENSION_TABLES` aside)."""
    cfg = Config(source=source)
    for section, values in raw.items():
        if section in EXTENSION_TABLES:
            continue
        if section not in _SECTION_TYPES:
            raise ConfigError(
                f"unknown config table [{section}] in {source or 'config'}; valid tables: {', '.join(_SECTION_TYPES)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table, got {values!r}")
        obj = getattr(cfg, section)
        valid = {f.name for f in dataclasses.fields(obj)}
        for key, value in values.items():
            if key not in valid:
                raise ConfigError(
                    f"unknown key {key!r} in [{section}] of {source or 'config'}; valid keys: "
                    f"{', '.join(sorted(valid))}"
                )
            setattr(obj, key, _coerce(section, key, value, getattr(obj, key)))
    return cfg


def resolve_path(name_or_path: str | Path) -> Path:
    """A config path, or the name of a preset in ``configs/`` (``smoke`` -> ``configs/smoke.toml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if len(path.parts) == 1:  # a bare name; preset names may contain dots ("pneumonia-10c-a0.5")
        name = path.name.removesuffix(".toml")
        preset = PRESET_DIR / f"{name}.toml"
        if preset.is_file():
            return preset
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.toml")) if PRESET_DIR.is_dir() else []
    raise ConfigError(
        f"config {str(name_or_path)!r} not found; give a TOML file path or a preset name "
        f"({', '.join(presets) or 'none installed'})"
    )


def load_config(name_or_path: str | Path, *, overrides: list[str] | None = None) -> Config:
    """Load a TOML config (or preset) and apply ``section.key=value`` overrides (TOML values)."""
    path = resolve_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the line it names") from None
    return from_dict(apply_overrides(raw, overrides or []), source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str], *, example: str = "train.epochs=3") -> dict[str, Any]:
    """``raw`` (a config as nested dicts) with ``section.key=value`` overrides (TOML values; a bare word is taken
    as a string) set in place; returns it. A malformed override is one error naming ``example``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. {example}")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # a bare word is taken as a string
        raw.setdefault(section, {})[name] = parsed
    return raw
