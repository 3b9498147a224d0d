"""Sample-level DP over the whole federation, with the noise split across clients under SecAgg+.

``privacy.mode = "distributed"``: every round is **one DP-SGD step on the union of all clients' data**
(DP-FedSGD; the Gaussian mechanism on a sum, with the noise added in shares by the clients, as in Truex et
al., "A Hybrid Approach to Privacy-Preserving Federated Learning", AISec 2019, and Kairouz et al., "The
Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021):

1. The server fixes a Poisson rate q = ``train.batch_size`` / N (N = the training examples of all clients,
   so ``train.batch_size`` is the expected batch of the whole federation per round) and calibrates σ so
   that ``federation.rounds`` steps at rate q meet the target (ε, δ) for every example of the union.
2. Each of the m sampled clients Poisson-samples its n_i examples at rate q, clips every example's gradient
   to C, adds Gaussian noise of std σ·C/√m (its share) to the sum S_i, takes **one** step from the global
   model, ``w_i = w − η·(S_i + z_i)/(q·n_i)``, and replies with weight n_i (:func:`distributed_dp_wrapper`).
3. SecAgg+ gives the server only the weighted average of the k survivors,
   ``Σ n_i·w_i / Σ n_i = w − η·Σ(S_i + z_i)/(q·Σ n_i)``: a DP-SGD step on a Poisson batch of the union
   with noise std σ·C·√(k/m) (σ·C when nobody drops out). One example moves Σ S_i by at most C, so this is
   the sampled Gaussian mechanism of centralised DP-SGD; FedAvgM's server momentum and the EMA of the
   global model are post-processing. :class:`DistributedDP` accounts one step per aggregated round at
   (σ·√(min(k, m)/m), q) and reports ε every round.

Compared with ``privacy.mode = "sample"`` (DP-SGD inside every client, each calibrated for its own n_i
examples), the server-side noise is ~√m times smaller for the same ε: the reason this mode exists
(``docs/dp-secagg-study.md``).

What the guarantee assumes, and what it does not cover:

- **SecAgg+ is required.** Without it the server sees every client's step with only σ·C/√m of noise;
  the configuration is refused.
- **One local step per round** (``federation.local_epochs = 1``): after several local steps the clients'
  trajectories are not a Gaussian mechanism on a sum.
- An honest-but-curious server that does not collude with clients. Clients that collude with the server
  can subtract their own noise shares: with c colluders the others' noise is σ·C·√((k − c)/m).
- Dropouts shrink the noise (fewer shares); the ledger accounts the noise that was actually added, so ε can
  end above the target when clients drop out (a warning says so).
- Client sampling (``fraction_fit`` < 1) only lowers a given example's chance of being used; accounting at
  rate q ignores that extra amplification, which is conservative.
- The noise and the Poisson sampling are drawn from fresh OS entropy on every client in every round
  (:mod:`privmed.privacy.randomness`; a cryptographically secure generator with ``privacy.secure_rng``):
  the server cannot regenerate them from the config, the round and the partition id.
- SecAgg+'s quantisation (stochastic rounding to its grid, weights rounded to 1/Q) is outside the Gaussian
  analysis.
- Only SGD (``train.optimizer = "sgd"``): the client's one step must be linear in its noised gradient sum,
  or the weighted average of the steps is not the accounted Gaussian sum (Adam's first step is about
  lr·sign(S + z)).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from flwr.common import FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from privmed.config import Config
from privmed.errors import ConfigError, PrivacyError
from privmed.federation import registry, task
from privmed.federation.dp import (
    PUBLIC_METRICS,
    ServerLedgerDP,
    add_fit_config,
    check_no_client_evaluation,
    check_sample_mode,
    split_noise_multiplier,
)
from privmed.federation.sampling import sampled_clients
from privmed.privacy import make_private, noise_for_target
from privmed.privacy.randomness import describe, dp_randomness
from privmed.privacy.validation import PrivacyWarning, check_privacy_config, delta_warning

log = logging.getLogger(__name__)

MODE = "distributed"
#: Fit-config keys :class:`DistributedDP` sends.
KEY_SAMPLE_RATE = "dp_sample_rate"
KEY_NOISE_SHARE = "dp_noise_share"


def check_distributed(cfg: Config) -> None:
    """Refuse the settings under which the distributed-noise guarantee would not hold (exit 2, with why)."""
    if not cfg.secagg.enabled:
        raise ConfigError(
            "privacy.mode = 'distributed' splits the noise across clients, so each client's own step carries only "
            "sigma*C/sqrt(m) of it: without SecAgg+ the server would see every step with that little noise; set "
            "secagg.enabled = true (or use privacy.mode = 'sample', DP-SGD inside every client)"
        )
    if cfg.federation.local_epochs != 1:
        raise ConfigError(
            f"federation.local_epochs = {cfg.federation.local_epochs}: privacy.mode = 'distributed' takes exactly one "
            "DP-SGD step per client and round (several local steps would not sum to a Gaussian mechanism); set "
            "federation.local_epochs = 1 and raise federation.rounds instead"
        )
    if cfg.federation.strategy not in ("fedavg", "fedavgm"):
        raise ConfigError(
            f"federation.strategy = {cfg.federation.strategy!r}: privacy.mode = 'distributed' needs 'fedavg' or "
            "'fedavgm' (the example-weighted average of the clients' steps is the DP-SGD step; server momentum "
            "only post-processes it)"
        )
    if cfg.train.optimizer.lower() != "sgd":
        raise ConfigError(
            f"train.optimizer = {cfg.train.optimizer!r}: privacy.mode = 'distributed' needs 'sgd', whose one step is "
            "linear in the client's noised gradient sum, so that the weighted average of the clients' steps is the "
            "accounted DP-SGD step; an adaptive optimizer's step is not (Adam's first step is about lr*sign(S + z)); "
            "set train.optimizer = 'sgd' (server momentum: federation.strategy = 'fedavgm')"
        )
    check_sample_mode(cfg)
    check_no_client_evaluation(cfg)


def distributed_dp_wrapper(local: task.LocalTraining, cfg: Config, partition_id: int) -> task.LocalTraining:
    """Wrap one client's local training into one DP-SGD step with its share of the noise.

    Poisson-samples the client's data at the federation's rate q and adds noise σ·C/√m, both sent by
    :class:`DistributedDP`; the optimizer divides the noised sum by the expected batch q·n_i, so the server's
    example-weighted average is the federation's DP-SGD step.

    Raises
    ------
    PrivacyError
        When the server did not send the rate and noise share (it does not run ``privacy.mode = 'distributed'``).
    """
    check_distributed(cfg)
    if KEY_SAMPLE_RATE not in local.instructions or KEY_NOISE_SHARE not in local.instructions:
        raise PrivacyError(
            "privacy.mode = 'distributed': the server sent no sampling rate and noise share; run the server with "
            "the same privacy.mode"
        )
    rate = float(local.instructions[KEY_SAMPLE_RATE])
    share = float(local.instructions[KEY_NOISE_SHARE])
    server_round = int(local.instructions.get("server_round", 0))
    randomness = dp_randomness(cfg.privacy, seed=cfg.train.seed, key=("dp-distributed", server_round, partition_id))
    model, optimizer, loader = make_private(
        local.model,
        local.optimizer,
        local.loader,
        noise_multiplier=share,
        max_grad_norm=cfg.privacy.max_grad_norm,
        sample_rate=rate,
        steps=1,
        grad_sample_mode=cfg.privacy.grad_sample_mode,
        views_per_example=cfg.train.augment_multiplicity,
        randomness=randomness,
    )
    return task.LocalTraining(
        model,
        optimizer,
        loader,
        {**local.metrics, "noise_share": share, "sample_rate": rate},
        state=local.state,
        instructions=local.instructions,
        finalizers=list(local.finalizers),
        public_metrics=PUBLIC_METRICS,
    )


class DistributedDP(ServerLedgerDP):
    """Server side of ``privacy.mode = "distributed"``: calibrates σ for the union, sends q and the noise
    shares, and keeps the run's ledger (:class:`~privmed.federation.dp.ServerLedgerDP`).

    Parameters
    ----------
    strategy
        The FedAvg / FedAvgM strategy to wrap (it averages the replies weighted by their examples).
    cfg
        The run's config.
    partition_sizes
        Training examples per client; their sum N gives q = ``train.batch_size`` / N.
    """

    def __init__(self, strategy: Strategy, cfg: Config, *, partition_sizes: list[int]) -> None:
        check_distributed(cfg)
        privacy = cfg.privacy
        self.total_examples = int(sum(partition_sizes))
        check_privacy_config(privacy, dataset_size=self.total_examples)
        batch = cfg.train.batch_size
        if not 1 <= batch <= self.total_examples:
            raise ConfigError(
                f"train.batch_size = {batch}: under privacy.mode = 'distributed' it is the expected batch drawn from "
                f"all {self.total_examples} training examples of the federation each round; choose "
                f"1..{self.total_examples}"
            )
        super().__init__(strategy, accountant=privacy.accountant, delta=privacy.delta)
        self.sample_rate = batch / self.total_examples
        self.rounds = cfg.federation.rounds
        self.m = sampled_clients(cfg)
        self.clip = privacy.max_grad_norm
        self.target_epsilon = privacy.epsilon
        self.accountant = privacy.accountant
        schedule = f"{self.rounds} rounds, one step each at q = {self.sample_rate:.4g}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)  # check_privacy_config has warned once
            self.sigma, self.epsilon_planned = noise_for_target(
                target_epsilon=privacy.epsilon,
                target_delta=privacy.delta,
                sample_rate=self.sample_rate,
                steps=self.rounds,
                accountant=privacy.accountant,
                noise_multiplier=privacy.noise_multiplier,
                schedule=schedule,
            )
        self.share = self.sigma / math.sqrt(self.m)
        self.randomness = describe(privacy)
        self.warnings = [w for w in [delta_warning(privacy.delta, self.total_examples)] if w]
        log.info(
            "distributed DP-SGD: sigma %.3f over the union of %d examples (%s), C = %.3g; each of %d clients adds "
            "noise share sigma/sqrt(%d) = %.3f; planned epsilon %.3f at delta %.3g",
            self.sigma,
            self.total_examples,
            schedule,
            self.clip,
            self.m,
            self.m,
            self.share,
            self.epsilon_planned,
            self.delta,
        )

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        add_fit_config(instructions, {KEY_SAMPLE_RATE: self.sample_rate, KEY_NOISE_SHARE: self.share})
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if parameters is None:
            return None, metrics
        survivors = len(results)
        sigma_eff = split_noise_multiplier(self.sigma, survivors=survivors, sampled=self.m)
        epsilon = self.account_round(noise_multiplier=sigma_eff, sample_rate=self.sample_rate)
        if sigma_eff < self.sigma:
            log.warning(
                "round %d: %d of %d clients survived, so the aggregate carried noise sigma %.3f instead of %.3f; "
                "accounted as such (epsilon so far %.3f)",
                server_round,
                survivors,
                self.m,
                sigma_eff,
                self.sigma,
                epsilon,
            )
        if epsilon > self.target_epsilon * 1.0001:
            log.warning(
                "epsilon %.3f is above the target %.3g (dropouts reduced the noise)", epsilon, self.target_epsilon
            )
        return parameters, {**metrics, "epsilon": epsilon, "noise_multiplier": sigma_eff}

    def summary(self) -> dict[str, Any]:
        """σ, q, the noise shares and the plan, for the results JSON."""
        return {
            "mode": MODE,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_multiplier": self.sigma,
            "noise_share": self.share,
            "max_grad_norm": self.clip,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.sample_rate * self.total_examples,
            "total_examples": self.total_examples,
            "sampled_clients": self.m,
            "planned_steps": self.rounds,
            "epsilon_planned": self.epsilon_planned,
            # (σ actually added, q, steps): public, and what composes with a later mechanism on the same
            # examples (privmed.privacy.epsilon_composed), e.g. HF-GAN's D with the augmented classifier
            "ledger": self.ledger.to_dict(),
            "randomness": self.randomness,
            "warnings": list(self.warnings),
        }


def _strategy(strategy: Strategy, cfg: Config) -> Strategy:
    if cfg.privacy.mode != MODE:
        return strategy
    _, parts = task.load_federated_data(cfg)
    return DistributedDP(strategy, cfg, partition_sizes=[int(p.size) for p in parts])


registry.TRAINING_WRAPPERS[MODE] = distributed_dp_wrapper
registry.STRATEGY_WRAPPERS["dp-distributed"] = _strategy
