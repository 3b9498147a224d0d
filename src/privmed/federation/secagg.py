"""SecAgg+ secure aggregation: Flower's ``SecAggPlusWorkflow`` and ``secaggplus_mod``, checked and observed.

Secure aggregation lets the server learn the sum of the clients' vectors and nothing else: each client adds
pairwise masks, agreed with its neighbours by Diffie-Hellman, that cancel in the sum, plus a private mask whose
seed it secret-shares (Shamir) so that the server can remove it once the client's masked vector has arrived.
If a client drops out after the key exchange, its neighbours' shares of its key recover the pairwise masks it
would have cancelled. The original protocol (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017) has every client talk to every other; SecAgg+ (Bell et al.,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020) limits each client to a small
neighbourhood of ``num_shares`` clients, which is what Flower implements and this module runs.

What privmed adds around Flower's code (which it does not change):

- :func:`plan_secagg` checks the settings against the federation before any client starts (threshold below
  the clients sampled per round, odd ``num_shares`` no larger than that, no quantisation overflow, a
  ``max_weight`` no client exceeds, initial weights inside the clipping range) and picks ``max_weight``;
- :func:`aggregation_error_bound` bounds the difference between the SecAgg+ aggregate and plain FedAvg;
- :class:`SecAggWorkflow` times the four stages (server work apart from waiting for clients), records which
  clients survived and the round's error bound, and turns a round that Flower halts (too many dropouts) into
  a recorded round failure after which the run goes on;
- :class:`ClippingGuard` (a client mod inside ``secaggplus_mod``) refuses to upload parameters that SecAgg+
  would silently clip, naming the tensor and the clipping range it needs;
- :class:`UploadRecorder` (a client mod outside ``secaggplus_mod``) saves what the server receives.

Flower's quantisation, for reference: client *i* with ``n_i`` examples sends ``q_i = round(n_i / max_weight
* Q)`` and its parameters times ``d_i = q_i / Q``, clipped to ``[-c, c]`` and stochastically rounded to a grid
of step ``2c / Q`` (``c`` = ``clipping_range``, ``Q`` = ``quantization_range``), all modulo ``2**32``. The server
divides the unmasked sum by ``sum(d_i)``: a FedAvg weighted by ``d_i`` (≈ ``n_i``) with rounding noise.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from privmed.config import Config, SecAggConfig
from privmed.errors import ConfigError
from privmed.federation import registry, task
from privmed.federation.sampling import sampled_clients
from privmed.federation.wiretap import ReplyTap

log = logging.getLogger(__name__)

#: Flower's default (and largest allowed) modulus: masked vectors live in ``[0, 2**32)``.
MODULUS_RANGE = 2**32
#: Float32 rounding of the scaled, shifted parameters before Flower's stochastic rounding, in units of
#: ``Q * 2**-24`` grid steps: three float32 operations and two float32-rounded factors (the weight and the
#: quantiser), at most half an ulp each: 3.5, rounded up with a margin.
_FLOAT32_STEPS = 5.0
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


# -- settings --------------------------------------------------------------------------------------
def largest_client_weight(cfg: Config, partition_sizes: Sequence[int]) -> int:
    """The largest ``num_examples`` a client reports: its partition size, or 1 under client-level DP.

    privmed's client-level DP mod sends weight 1 (every client counts the same), see
    :mod:`privmed.federation.dp`.
    """
    if cfg.privacy.mode == "client":
        return 1
    return max(int(s) for s in partition_sizes)


def weight_factor(num_examples: float, max_weight: float, quantization_range: int) -> float:
    """``d = round(n / max_weight · Q) / Q``: the weight Flower's SecAgg+ gives a client (rounded to ``1 / Q``)."""
    return round(num_examples / max_weight * quantization_range) / quantization_range


def aggregation_error_bound(
    weights: Sequence[float], *, max_weight: float, clipping_range: float, quantization_range: int
) -> float:
    """A bound on ``max |SecAgg+ aggregate - FedAvg|`` per coordinate, for clients with these weights.

    Three terms, with ``K`` clients, grid step ``s = 2c / Q``, ``d_i`` from :func:`weight_factor` and
    ``D = sum(d_i)``; it holds when no parameter was clipped (:class:`ClippingGuard` makes sure), which also
    bounds every parameter by ``|p_i| <= c / d_i``, and compares both aggregates as Flower computes them (in
    float64, before a model casts them to float32):

    - rounding to the grid: each client is off by less than one step plus the float32 rounding before it,
      and the server divides the sum by ``D``: ``K (1 + 5 Q 2**-24) s / D``;
    - weights rounded to ``1 / Q``: ``c / (2 Q D) · sum_i (1 + K w_i / W) / d_i`` with ``w_i = n_i / max_weight``;
    - float64 arithmetic of the server and of FedAvg: ``(K + 3) 2**-50 c K / min(d_i)`` (negligible).

    Parameters
    ----------
    weights
        The ``num_examples`` of the clients whose vectors are summed (the survivors of a round).
    max_weight, clipping_range, quantization_range
        SecAgg+'s settings.

    Returns
    -------
    float
        The bound (``inf`` when a client's weight rounds to zero).
    """
    k = len(weights)
    if k == 0:
        return 0.0
    q, c = quantization_range, clipping_range
    d = [weight_factor(n, max_weight, q) for n in weights]
    if min(d) <= 0:
        return math.inf
    total_d = sum(d)
    w = [n / max_weight for n in weights]
    total_w = sum(w)
    step = 2.0 * c / q
    rounding = k * (1.0 + _FLOAT32_STEPS * q * 2.0**-24) * step / total_d
    weighting = c / (2.0 * q * total_d) * sum((1.0 + k * wi / total_w) / di for wi, di in zip(w, d, strict=True))
    floating = (k + 3) * 2.0**-50 * c * k / min(d)
    return rounding + weighting + floating


@dataclass(frozen=True)
class SecAggPlan:
    """SecAgg+ settings for one run, checked against the federation (see :func:`plan_secagg`)."""

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    modulus_range: int
    max_weight: float
    max_weight_auto: bool
    timeout: float | None
    sampled_clients: int
    #: the num_examples of every partition (for the error bounds)
    partition_sizes: tuple[int, ...]
    #: the num_examples clients report (1 each under client-level DP)
    client_weights: tuple[int, ...]

    @property
    def quantization_step(self) -> float:
        """The grid step ``2c / Q`` of one client's scaled parameters."""
        return 2.0 * self.clipping_range / self.quantization_range

    def bound(self, weights: Sequence[float]) -> float:
        """:func:`aggregation_error_bound` for clients with these ``num_examples``."""
        return aggregation_error_bound(
            weights,
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
        )

    def summary(self) -> dict[str, Any]:
        """Settings, quantisation step and a-priori error bounds, for the results JSON."""
        ordered = sorted(self.client_weights)
        out = asdict(self)
        out.pop("partition_sizes")
        out.pop("client_weights")
        return {
            "protocol": "SecAgg+ (Bell et al. 2020), Flower SecAggPlusWorkflow + secaggplus_mod",
            **out,
            "dropouts_tolerated": self.num_shares - self.reconstruction_threshold,
            "quantization_step": self.quantization_step,
            # the smallest clients give the largest bound: full participation, and only `threshold` left
            "max_abs_error_bound": self.bound(ordered[: self.sampled_clients]),
            "max_abs_error_bound_at_threshold": self.bound(ordered[: self.reconstruction_threshold]),
        }


def plan_secagg(cfg: Config, partition_sizes: Sequence[int]) -> SecAggPlan:
    """Check ``[secagg]`` against the federation and fix ``max_weight``.

    Raises
    ------
    ConfigError
        A threshold the sampled clients cannot meet, a share count Flower cannot use, a clipping or
        quantisation range that cannot work, a ``max_weight`` some client exceeds.
    """
    sa = cfg.secagg
    k = sampled_clients(cfg)
    _check_shares(cfg, k)
    _check_ranges(sa, k)
    max_weight, weights = _check_max_weight(cfg, partition_sizes)
    _check_dropout_safety(sa)
    return SecAggPlan(
        num_shares=sa.num_shares,
        reconstruction_threshold=sa.reconstruction_threshold,
        clipping_range=float(sa.clipping_range),
        quantization_range=sa.quantization_range,
        modulus_range=MODULUS_RANGE,
        max_weight=max_weight,
        max_weight_auto=sa.max_weight == 0,
        timeout=float(sa.timeout) if sa.timeout > 0 else None,
        sampled_clients=k,
        partition_sizes=tuple(int(s) for s in partition_sizes),
        client_weights=tuple(weights),
    )


def _check_shares(cfg: Config, k: int) -> None:
    """Threshold and share count that Flower's SecAgg+ can use with ``k`` clients sampled per round."""
    t, shares = cfg.secagg.reconstruction_threshold, cfg.secagg.num_shares
    sampling = (
        f"data.num_clients = {cfg.data.num_clients}, federation.fraction_fit = {cfg.federation.fraction_fit:g}, "
        f"federation.min_fit_clients = {cfg.federation.min_fit_clients}"
    )
    if t >= k:
        raise ConfigError(
            f"secagg.reconstruction_threshold = {t} must be less than the {k} clients sampled per round "
            f"({sampling}): Flower's SecAgg+ needs threshold < num_shares <= clients; lower the threshold "
            "or sample more clients"
        )
    if t < 2:
        raise ConfigError(
            f"secagg.reconstruction_threshold = {t} must be at least 2 (Flower reads 1 as 'all shares'); "
            f"choose 2 to {k - 1}"
        )
    if shares <= t:
        raise ConfigError(
            f"secagg.num_shares = {shares} must be greater than secagg.reconstruction_threshold = {t} "
            f"(Flower's SecAgg+ needs threshold < num_shares); raise num_shares (at most {k}) or lower the threshold"
        )
    if shares > k:
        raise ConfigError(
            f"secagg.num_shares = {shares} exceeds the {k} clients sampled per round ({sampling}); use at most {k}"
        )
    if shares % 2 == 0 and shares != k:
        raise ConfigError(
            f"secagg.num_shares = {shares} must be odd (each client shares with num_shares - 1 neighbours, half "
            f"on each side) or equal to the {k} clients sampled per round; use {shares - 1} or {shares + 1}"
        )


def _check_ranges(sa: SecAggConfig, k: int) -> None:
    """Clipping and quantisation ranges that work, and a quantised sum of ``k`` clients below the modulus."""
    if not (math.isfinite(sa.clipping_range) and sa.clipping_range > 0):
        raise ConfigError(f"secagg.clipping_range must be a positive number, got {sa.clipping_range}")
    q = sa.quantization_range
    if q < 2:
        raise ConfigError(f"secagg.quantization_range must be at least 2 levels, got {q}; the usual is 2**22 = {2**22}")
    if k * q >= MODULUS_RANGE:
        raise ConfigError(
            f"secagg.quantization_range = {q} with {k} clients per round overflows the 2**32 modulus "
            f"(the sum of {k} values below {q} must stay below 2**32); use at most {(MODULUS_RANGE - 1) // k}"
        )
    if sa.timeout < 0:
        raise ConfigError(f"secagg.timeout must be >= 0 seconds (0 = run.round-timeout), got {sa.timeout}")


def _check_max_weight(cfg: Config, partition_sizes: Sequence[int]) -> tuple[float, list[int]]:
    """``(max_weight, every client's weight)``: no client above ``max_weight``, none quantised to weight 0."""
    sa = cfg.secagg
    largest = largest_client_weight(cfg, partition_sizes)
    if sa.max_weight < 0 or not math.isfinite(sa.max_weight):
        raise ConfigError(f"secagg.max_weight must be >= 0 (0 = automatic), got {sa.max_weight}")
    max_weight = float(sa.max_weight) if sa.max_weight > 0 else float(largest)
    what = (
        "the weight every client sends under client-level DP"
        if cfg.privacy.mode == "client"
        else ("the largest client's number of examples")
    )
    if max_weight < largest:
        raise ConfigError(
            f"secagg.max_weight = {sa.max_weight:g} is below {what} ({largest}): Flower's SecAgg+ would overflow; "
            f"set it to at least {largest}, or 0 for automatic"
        )
    weights = [1] * cfg.data.num_clients if cfg.privacy.mode == "client" else [int(s) for s in partition_sizes]
    smallest = min(weights)
    if weight_factor(smallest, max_weight, sa.quantization_range) <= 0:
        raise ConfigError(
            f"secagg.max_weight = {max_weight:g} is so large that a client with {smallest} examples gets weight 0 "
            f"at quantization_range = {sa.quantization_range}; lower max_weight (0 = automatic)"
        )
    return max_weight, weights


def _check_dropout_safety(sa: SecAggConfig) -> None:
    """Bell et al. 2020's threshold > num_shares / 2, unless the user trusts the server about dropouts."""
    t, shares = sa.reconstruction_threshold, sa.num_shares
    if 2 * t <= shares:
        why = (
            f"secagg.reconstruction_threshold = {t} is at most half of num_shares = {shares}: a server that lies about "
            "which clients dropped out can collect both a client's mask-key shares and its private-mask shares and "
            "unmask its update (Bell et al. 2020 assume threshold > num_shares / 2)"
        )
        if not sa.allow_low_threshold:
            raise ConfigError(
                f"{why}; raise the threshold to at least {shares // 2 + 1}, or set secagg.allow_low_threshold = true "
                "to accept a server trusted not to lie about dropouts"
            )
        log.warning("%s; accepted because secagg.allow_low_threshold = true", why)


def clipped_tensor(arrays: Sequence[np.ndarray], factor: float, clipping_range: float) -> tuple[int, float] | None:
    """The first array whose values times ``factor`` leave ``[-clipping_range, clipping_range]``.

    Returns
    -------
    tuple of (int, float) or None
        Its index and its largest ``|value|``, or ``None`` when nothing would be clipped.
    """
    for index, array in enumerate(arrays):
        if array.size == 0:
            continue
        largest = float(np.max(np.abs(array)))
        if not math.isfinite(largest) or largest * factor > clipping_range:
            return index, largest
    return None


def clipping_message(name: str, largest: float, factor: float, clipping_range: float, *, where: str) -> str:
    """The error for a tensor that SecAgg+ would clip: which, how large, and the range it needs."""
    needed = largest * factor
    return (
        f"SecAgg+ would silently clip {where} tensor {name!r}: max |value| {largest:.6g} x weight factor "
        f"{factor:.6g} = {needed:.6g} exceeds secagg.clipping_range = {clipping_range:g}; set "
        f"secagg.clipping_range to at least {needed * 1.01:.4g} (the quantisation step 2 * clipping_range / "
        "quantization_range grows with it)"
    )


def check_initial_weights(plan: SecAggPlan, arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """Refuse initial global weights that the client with the largest weight factor would get clipped."""
    factor = max(weight_factor(w, plan.max_weight, plan.quantization_range) for w in plan.client_weights)
    found = clipped_tensor(arrays, factor, plan.clipping_range)
    if found is not None:
        index, largest = found
        raise ConfigError(
            clipping_message(names[index], largest, factor, plan.clipping_range, where="the initial global model's")
        )


def tensor_names(cfg: Config) -> list[str]:
    """The names of the arrays :func:`privmed.train.get_weights` returns, in order (``state_dict`` keys)."""
    dataset, _ = task.load_federated_data(cfg)
    return list(task.new_model(cfg, dataset.info).state_dict())


# -- server ----------------------------------------------------------------------------------------
class _TimedGrid:
    """A Grid proxy that adds up the time spent in ``send_and_receive`` (waiting for the clients)."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.wait_seconds = 0.0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        started = time.perf_counter()
        try:
            return list(self.inner.send_and_receive(messages, timeout=timeout))
        finally:
            self.wait_seconds += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SecAggWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ fit workflow, observed: stage times, survivors, error bound, round failures.

    Flower runs the stages and stops ("Secure aggregation halted") when a stage leaves some client with
    fewer live neighbours than the threshold; the global model then stays as it was. This class records
    that as a failed round with the reason (see :meth:`round_report`), and the run goes on.

    Parameters
    ----------
    plan
        Checked settings from :func:`plan_secagg`.
    """

    def __init__(self, plan: SecAggPlan) -> None:
        super().__init__(
            num_shares=plan.num_shares,
            reconstruction_threshold=plan.reconstruction_threshold,
            max_weight=plan.max_weight,
            clipping_range=plan.clipping_range,
            quantization_range=plan.quantization_range,
            modulus_range=plan.modulus_range,
            timeout=plan.timeout,
        )
        self.plan = plan
        self.current: dict[str, Any] = {}
        self.worst_bound = 0.0

    def __call__(self, grid: Grid, context: Context) -> None:
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        self.current = {"round": int(cfg[WorkflowKey.CURRENT_ROUND]), "status": "running", "stages": {}}
        super().__call__(grid, context)

    def _stage(self, name: str, run: Callable[..., bool], grid: Grid, context: Any, state: Any) -> bool:
        timed = _TimedGrid(grid)
        started = time.perf_counter()
        if name == "unmask":  # the survivors are known from their (parameter-less) FitRes
            survivors = sorted(
                int(res.metrics["partition_id"]) for _, res in state.legacy_results if "partition_id" in res.metrics
            )
            self.current["survivor_partitions"] = survivors
            # their weights from the plan (public sizes), not from the replies: under DP the clear weight is 1
            self.current["max_abs_error_bound"] = self.plan.bound([self.plan.client_weights[pid] for pid in survivors])
        ok = bool(run(timed, context, state))
        total = time.perf_counter() - started
        self.current["stages"][name] = {
            "seconds": total,
            "client_wait_seconds": timed.wait_seconds,
            "server_seconds": total - timed.wait_seconds,
            "active_clients": len(state.active_node_ids),
        }
        if name == "setup":
            self.current["sampled_clients"] = len(state.sampled_node_ids)
            self.current["num_shares"] = state.num_shares
        if not ok:
            self.current.update(status="failed", failed_stage=name, reason=self._reason(name, state))
            log.warning("round %d: SecAgg+ halted: %s", self.current["round"], self.current["reason"])
        elif name == "unmask":
            self.current["status"] = "aggregated"
            self.worst_bound = max(self.worst_bound, self.current["max_abs_error_bound"])
        return ok

    def _reason(self, stage: str, state: Any) -> str:
        sampled = len(state.sampled_node_ids)
        active = len(state.active_node_ids)
        t = self.plan.reconstruction_threshold
        if stage == "setup" and sampled < 2:
            return f"only {sampled} client(s) sampled; SecAgg+ needs at least 2"
        if stage == "unmask":
            return (
                f"not enough key shares to unmask: a client's secret needs reconstruction_threshold = {t} shares "
                f"and {active} of {sampled} sampled clients sent theirs; the global model is unchanged"
            )
        verb = {
            "setup": "sent public keys",
            "share_keys": "sent encrypted key shares",
            "collect_masked_vectors": "uploaded masked vectors",
        }[stage]
        return (
            f"only {active} of {sampled} sampled clients {verb} ({sampled - active} dropped out at stage {stage}); "
            f"every client needs reconstruction_threshold = {t} live neighbours among its num_shares = "
            f"{state.num_shares}, so SecAgg+ cannot unmask: the round was not aggregated and the global model "
            "is unchanged"
        )

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        """Flower's setup stage, timed."""
        return self._stage("setup", super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        """Flower's share-keys stage, timed."""
        return self._stage("share_keys", super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        """Flower's collect-masked-vectors stage (the clients train here), timed."""
        return self._stage("collect_masked_vectors", super().collect_masked_vectors_stage, grid, context, state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        """Flower's unmask stage (ends with the strategy's ``aggregate_fit``), timed."""
        return self._stage("unmask", super().unmask_stage, grid, context, state)

    def round_report(self) -> dict[str, Any]:
        """For the round's record: ``secagg`` (stages, survivors, bound) and ``round_failed`` / ``round_failure``."""
        failed = self.current.get("status") != "aggregated"
        reason = self.current.get("reason") if failed else None
        if failed and reason is None:
            reason = "SecAgg+ did not finish the round"
        return {"secagg": dict(self.current), "round_failed": failed, "round_failure": reason}

    def summary(self) -> dict[str, Any]:
        """The run's SecAgg+ settings and error bounds, for ``results["secagg"]``."""
        return {**self.plan.summary(), "max_abs_error_bound_observed": self.worst_bound}


def build_workflow(cfg: Config) -> SecAggWorkflow:
    """The SecAgg+ fit workflow for ``cfg``, after every check that needs no client (see :func:`plan_secagg`)."""
    dataset, parts = task.load_federated_data(cfg)
    plan = plan_secagg(cfg, [int(p.size) for p in parts])
    check_initial_weights(plan, task.initial_weights(cfg, dataset.info), tensor_names(cfg))
    return SecAggWorkflow(plan)


# -- clients ---------------------------------------------------------------------------------------
class ClippingGuard:
    """Client mod, inside ``secaggplus_mod``: refuse to upload parameters SecAgg+ would silently clip.

    Reads the clipping range, quantisation range and ``max_weight`` the server sent (SecAgg+'s own state in
    the node's context) and checks the fit reply's parameters times the client's weight factor. A violation
    raises :class:`~privmed.errors.ConfigError` naming the tensor: the client fails this round (a dropout)
    and the reason reaches the server's round record.

    Parameters
    ----------
    cfg
        The run's config (for the tensor names in the message).
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self, message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(message, context)
        if message.metadata.message_type != MessageType.TRAIN or reply.has_error() or not reply.content.array_records:
            return reply
        state = context.state.config_records.get(RECORD_KEY_STATE)
        if state is None or "clipping_range" not in state:
            return reply
        fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        factor = weight_factor(fit_res.num_examples, float(state["max_weight"]), int(state["target_range"]))
        clipping_range = float(state["clipping_range"])
        arrays = parameters_to_ndarrays(fit_res.parameters)
        found = clipped_tensor(arrays, factor, clipping_range)
        if found is not None:
            index, largest = found
            names = tensor_names(self.cfg)
            name = names[index] if len(names) == len(arrays) else f"#{index}"
            raise ConfigError(clipping_message(name, largest, factor, clipping_range, where="this client's"))
        return reply


class UploadRecorder(ReplyTap):
    """Client mod, outside ``secaggplus_mod``: save each masked vector as the server receives it.

    Writes ``masked-r<round>-p<partition>.npz`` (the arrays of the upload, the weight factor first) into
    ``folder``. For audits and tests (the statistical check that a masked upload looks like uniform noise).
    """

    def write(self, message: Message, reply: Message, folder: Path, partition: object) -> None:
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if message.metadata.message_type != MessageType.TRAIN or configs is None:
            return
        if SecAggKey.MASKED_PARAMETERS not in configs:
            return
        arrays = [bytes_to_ndarray(b) for b in configs[SecAggKey.MASKED_PARAMETERS]]  # type: ignore[union-attr]
        np.savez(folder / f"masked-r{message.metadata.group_id}-p{partition}.npz", *arrays)


def client_mods(cfg: Config) -> list[registry.Mod]:
    """``[secaggplus_mod, ClippingGuard]`` when ``secagg.enabled`` (outermost of the run's mods), else none."""
    if not cfg.secagg.enabled:
        return []
    return [secaggplus_mod, ClippingGuard(cfg)]


def _fit_workflow(cfg: Config) -> registry.Workflow:
    return build_workflow(cfg)


registry.FIT_WORKFLOWS["secagg+"] = _fit_workflow
registry.MOD_FACTORIES["secagg+"] = client_mods
