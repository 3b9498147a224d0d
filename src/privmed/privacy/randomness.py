"""Where the random draws a DP guarantee rests on come from: the Gaussian noise and the Poisson sampling.

ε holds only against an adversary who cannot predict these draws. An adversary who can regenerate them
subtracts the noise (and knows which examples were in each batch) and is left with the clipped gradients
themselves. privmed therefore never derives them from the run's config, never sends them, never writes them
to a log, a checkpoint or a results file. Every :class:`DPRandomness` serves both kinds of draws, and three
are registered in :data:`RANDOMNESS`, chosen by two settings of ``[privacy]``
(:func:`randomness_name`):

``"os-entropy"`` (the default)
    A ``torch.Generator`` seeded with 64 bits from the operating system's entropy (:mod:`secrets`), fresh for
    every client, round and run: unpredictable from anything the server or a holder of ``results.json``
    has. Fast (torch's own Gaussian and uniform draws). Not a cryptographically secure generator (torch's
    CPU generator is a Mersenne twister) and no defence against floating-point attacks.
``"secure"`` (``privacy.secure_rng = true``)
    A cryptographically secure generator: the ChaCha20 keystream (RFC 8439, from ``cryptography``) under a
    fresh 256-bit key from ``os.urandom``. The Gaussian noise is made robust against the floating-point
    attacks on noise addition in two ways. (1) As Opacus' ``secure_mode``: the sum of four Box–Muller
    Gaussians in float64, halved (Holohan & Braghin, "Secure random sampling in differential privacy",
    ESORICS 2021, with n = 2), which closes the holes in the output's support that Mironov's attack reads
    ("On significance of the least significant bits for differential privacy", CCS 2012). (2) Because that
    alone still lets precision-based attacks read the input from how the addition rounds (Haney et al.,
    "Precision-based attacks and interval refining", 2022; Opacus issue #616), the noised value is computed
    in float64 and snapped to a data-independent power-of-two grid of step ≈ std / 2¹², thousands of float64
    ulps wide, so that what leaves is a grid point whose probability is the integral of the density over its
    cell: the bits in which rounding could depend on the input are discarded. This is a defence against the
    known attacks, not a proof; an exact discrete Gaussian (Canonne, Kamath & Steinke 2020) would be one.
    Its cost per step is measured in ``bench/dpsgd_cost.py``.
``"replay"`` (``privacy.reproducible_noise = true``)
    A ``torch.Generator`` seeded from ``train.seed`` and the draw's purpose, round and partition, for tests
    and benchmark replays only: **anyone who holds the config can regenerate the noise, so such a run is not
    private against them** (the CLI and ``results.json`` say so, :func:`describe`).

``train.seed`` still makes everything else reproducible (initial weights, partitions, augmentation, the
order of non-private batches).
"""

from __future__ import annotations

import math
import os
import secrets
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from torch import Tensor

from privmed.errors import ConfigError

#: Parts of a replay key: ints and short strings (``("noise", round, partition)``).
KeyPart = int | str

_MASK_53 = (1 << 53) - 1

#: Bits of a grid step below the noise std for the secure noise: step = 2**(floor(log2(std)) - GRID_BITS).
GRID_BITS = 12


class DPRandomness(ABC):
    """A source of the draws a DP mechanism relies on: uniforms for Poisson sampling, Gaussian noise."""

    #: the name it is registered under in :data:`RANDOMNESS`
    name: str = ""

    @abstractmethod
    def uniform(self, size: int) -> Tensor:
        """``size`` independent uniforms in ``[0, 1)`` (float64)."""

    @abstractmethod
    def add_gaussian(self, value: Tensor, *, std: float) -> Tensor:
        """``value`` plus i.i.d. N(0, std²) noise on every entry, as a new tensor of ``value``'s dtype."""

    def bernoulli(self, size: int, rate: float) -> Tensor:
        """A boolean mask whose entries are ``True`` independently with probability ``rate`` (Poisson sampling)."""
        return self.uniform(size) < rate


class TorchRandomness(DPRandomness):
    """Draws from a ``torch.Generator`` (Mersenne twister) with the given 64-bit seed.

    Parameters
    ----------
    seed
        The generator's seed; privmed gives it fresh OS entropy (``"os-entropy"``) or, only on request, a
        seed derived from the config (``"replay"``).
    name
        The registry name, for reports.
    """

    def __init__(self, seed: int, *, name: str) -> None:
        self.name = name
        self.generator = torch.Generator().manual_seed(seed)

    def uniform(self, size: int) -> Tensor:
        return torch.rand(size, generator=self.generator, dtype=torch.float64)

    def add_gaussian(self, value: Tensor, *, std: float) -> Tensor:
        if std == 0:
            return value.clone()
        noise = torch.normal(0.0, std, size=value.shape, generator=self.generator, dtype=value.dtype)
        return value + noise.to(value.device)


class SecureRandomness(DPRandomness):
    """A cryptographically secure source: ChaCha20 under a fresh key from ``os.urandom`` (see the module doc).

    Gaussian noise is the halved sum of four float64 Box–Muller draws, added in float64 and snapped to a
    power-of-two grid of step ``2**(floor(log2(std)) - GRID_BITS)`` before the cast back to the value's dtype.
    """

    name = "secure"

    def __init__(self) -> None:
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), mode=None)
        self._stream = cipher.encryptor()

    def _words(self, size: int) -> Tensor:
        """``size`` uniformly random 64-bit words from the keystream (the encryption of zeros)."""
        out = bytearray(8 * size)
        self._stream.update_into(bytes(8 * size), out)
        return torch.frombuffer(out, dtype=torch.int64) if size else torch.empty(0, dtype=torch.int64)

    def uniform(self, size: int) -> Tensor:
        # 53 bits of each word, times 2**-53: every float64 multiple of 2**-53 in [0, 1) equally likely
        return (self._words(size) & _MASK_53).to(torch.float64) * 2.0**-53

    def standard_normal(self, size: int) -> Tensor:
        """``size`` N(0, 1) draws: the halved sum of four Box–Muller Gaussians each (Holohan & Braghin 2021)."""
        pairs = 2 * size  # four normals per output, two per Box-Muller pair
        u = self.uniform(2 * pairs)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[:pairs]))  # 1 - u in (0, 1]: log is finite
        angle = (2.0 * math.pi) * u[pairs:]
        normals = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])
        return normals.view(4, size).sum(dim=0) / 2.0

    def add_gaussian(self, value: Tensor, *, std: float) -> Tensor:
        if std == 0:
            return value.clone()
        noised = value.detach().to(torch.float64).flatten().cpu() + std * self.standard_normal(value.numel())
        step = 2.0 ** (math.floor(math.log2(std)) - GRID_BITS)
        snapped = torch.round(noised / step) * step  # exact: division and product by a power of two
        return snapped.view(value.shape).to(dtype=value.dtype, device=value.device)


def key_seed(key: Sequence[KeyPart]) -> int:
    """A 64-bit seed from a replay key (ints, and strings through CRC-32): NumPy's ``SeedSequence``."""
    entropy = [part if isinstance(part, int) else zlib.crc32(part.encode()) for part in key]
    if any(part < 0 for part in entropy):
        raise ValueError(f"replay key parts must be non-negative, got {list(key)}")
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def _os_entropy(key: Sequence[KeyPart]) -> DPRandomness:
    return TorchRandomness(secrets.randbits(64), name="os-entropy")


def _secure(key: Sequence[KeyPart]) -> DPRandomness:
    return SecureRandomness()


def _replay(key: Sequence[KeyPart]) -> DPRandomness:
    return TorchRandomness(key_seed(key), name="replay")


#: Sources by name: ``(replay key) -> DPRandomness``. Only ``"replay"`` reads the key; the others ignore it
#: and draw fresh OS entropy on every call.
RANDOMNESS: Mapping[str, Callable[[Sequence[KeyPart]], DPRandomness]] = MappingProxyType(
    {"os-entropy": _os_entropy, "secure": _secure, "replay": _replay}
)

#: ``(privacy.secure_rng, privacy.reproducible_noise)`` -> source name.
_BY_SETTINGS: Mapping[tuple[bool, bool], str] = MappingProxyType(
    {(False, False): "os-entropy", (True, False): "secure", (False, True): "replay"}
)

#: What each source means for the guarantee, for the CLI and the results files.
DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "os-entropy": "noise and Poisson sampling from a torch generator seeded with fresh OS entropy for every "
        "client, round and run: never derived from the config, never sent, logged or checkpointed",
        "secure": "noise and Poisson sampling from a cryptographically secure generator (ChaCha20 keyed from "
        "os.urandom), the noise hardened against floating-point attacks (sum of four Box-Muller draws, snapped "
        "to a power-of-two grid)",
        "replay": "noise and Poisson sampling derived from the config (train.seed, round, partition): "
        "reproducible on purpose",
    }
)

#: Said by the CLI and written to results.json when the noise is reproducible.
REPLAY_WARNING = (
    "privacy.reproducible_noise = true: the DP noise and the Poisson sampling of this run are derived from its "
    "config (train.seed), which results.json contains; anyone who holds the config can regenerate and subtract "
    "them, so this run is NOT differentially private against them. Use it for tests and benchmark replays only."
)


def randomness_name(privacy: Any) -> str:
    """The :data:`RANDOMNESS` entry for a ``[privacy]`` table (``secure_rng``, ``reproducible_noise``).

    Raises
    ------
    ConfigError
        When both are set (a secure generator cannot be replayed).
    """
    settings = (bool(getattr(privacy, "secure_rng", False)), bool(getattr(privacy, "reproducible_noise", False)))
    if settings not in _BY_SETTINGS:
        raise ConfigError(
            "privacy.secure_rng = true and privacy.reproducible_noise = true contradict each other: a secure "
            "generator draws fresh entropy that nobody can replay; set reproducible_noise = false (or secure_rng "
            "= false for a test replay)"
        )
    return _BY_SETTINGS[settings]


def dp_randomness(privacy: Any, *, seed: int, key: Sequence[KeyPart]) -> DPRandomness:
    """A fresh source for one set of DP draws (one client in one round, one epoch, the server's noise).

    Parameters
    ----------
    privacy
        The ``[privacy]`` table; its ``secure_rng`` and ``reproducible_noise`` choose the source.
    seed
        ``train.seed``; read only by the ``"replay"`` source.
    key
        What the draws are for (e.g. ``("noise", round, partition)``); read only by ``"replay"``, which must
        give different purposes different streams.
    """
    return RANDOMNESS[randomness_name(privacy)]((seed, *key))


def fresh_randomness() -> DPRandomness:
    """The default source: a torch generator seeded with fresh OS entropy (``"os-entropy"``)."""
    return RANDOMNESS["os-entropy"](())


def seeded_randomness(seed: int) -> DPRandomness:
    """A replayable source with this seed, for tests and benchmarks that must reproduce their noise."""
    return RANDOMNESS["replay"]((seed,))


def describe(privacy: Any) -> dict[str, Any]:
    """Which source a run uses and what that means, for ``results.json`` (with the warning when replayable)."""
    name = randomness_name(privacy)
    out: dict[str, Any] = {
        "source": name,
        "description": DESCRIPTIONS[name],
        "private_against_config_holders": name != "replay",
    }
    if name == "replay":
        out["warning"] = REPLAY_WARNING
    return out


class NoiseFromRandomness:
    """Mixin for Opacus' DP optimizers: add the Gaussian noise with a :class:`DPRandomness` instead of Opacus'
    ``_generate_noise`` (same std σ·C on every clipped sum; the source decides how it is drawn).

    Put it before the Opacus optimizer class in the bases, and pass ``randomness=`` to the constructor.
    """

    def __init__(self, *args: Any, randomness: DPRandomness, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.randomness = randomness

    def add_noise(self) -> None:
        """Store ``summed_grad`` plus N(0, (σC)²) in every parameter's ``grad`` (what Opacus' ``add_noise`` does)."""
        from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

        std = self.noise_multiplier * self.max_grad_norm  # type: ignore[attr-defined]
        for p in self.params:  # type: ignore[attr-defined]
            _check_processed_flag(p.summed_grad)
            p.grad = self.randomness.add_gaussian(p.summed_grad, std=std).view_as(p)
            _mark_as_processed(p.summed_grad)
