"""The ε of a real image over HF-GAN's D *and* the classifier trained with G_i's images.

A real image of client i is used twice: in D's DP training (every round it may enter D's batch: the run's
ledger, ``results["privacy_details"]["ledger"]``) and in the DP classifier's training at its client (client i's
DP-SGD steps, reported as public metrics). The synthetic images are post-processing of D (they add nothing), so
the image's ε is the composition of the two mechanisms. Composed in one accountant (RDP, Mironov 2017; PRV, Gopi
et al. 2021) it is tighter than the sum of the two ε's (basic composition, Dwork & Roth 2014, Thm 3.16), which
is reported beside it. Threat model: whoever sees D's releases (the server; under SecAgg+ only the noised
aggregate) and the classifier's (the server and anyone given the final model).
"""

from __future__ import annotations

from typing import Any

from privmed.privacy import epsilon_composed


def latest_client_reports(results: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per partition, the DP metrics of the last round it reported them in (a client left out of the final
    round keeps the ledger of its last round, not none)."""
    out: dict[int, dict[str, Any]] = {}
    for rnd in results.get("rounds") or []:
        for row in rnd.get("clients", []):
            if "dp_steps" in row:
                out[int(row["partition_id"])] = row
    return out


def classifier_histories(clf: dict[str, Any]) -> dict[str, list[tuple[float, float, int]]] | None:
    """Per client ``[(σ, q, steps)]`` of the classifier run, from public information only (None: unsupported)."""
    mode = clf.get("privacy")
    if mode == "none":
        return {}
    if mode == "sample":  # each client's own DP-SGD ledger, as its public metrics last reported it
        return {
            str(pid): [(float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["dp_steps"]))]
            for pid, r in latest_client_reports(clf).items()
        }
    ledger = (clf.get("privacy_details") or {}).get("ledger")
    if mode == "distributed" and ledger:  # one run-wide ledger: every example alike
        return {"all": [tuple(e) for e in ledger["history"]]}
    return None


def d_history(gan_results: dict[str, Any]) -> list[tuple[float, float, int]] | None:
    """D's ledger ``[(σ, q, steps)]`` of an HF-GAN run (None: non-private or not known).

    Runs made before the ledger was written to ``privacy_details`` are read from their plan (σ, q) and their
    rounds, but only when every round completed with every sampled client (no dropout lowered the noise).
    """
    details = gan_results.get("privacy_details") or {}
    if details.get("ledger"):
        return [tuple(e) for e in details["ledger"]["history"]]
    rounds = gan_results.get("rounds") or []
    sampled = details.get("sampled_clients")
    if "noise_multiplier" not in details or not rounds or sampled is None:
        return None
    if any(r.get("round_failed") or r.get("clients") != sampled for r in rounds):
        return None
    return [(float(details["noise_multiplier"]), float(details["sample_rate"]), len(rounds))]


def compose_with_d(
    gan_results: dict[str, Any], histories: dict[str, list[tuple[float, float, int]]] | None
) -> dict[str, Any] | None:
    """ε of a real image over D's ledger and its client's classifier ledger (``histories``; None: not known).

    Returns
    -------
    dict or None
        ``{"delta", "rdp", "prv", "sum", "note"}``; each accountant's entry is ``{"per_group", "max"}``
        (:func:`privmed.privacy.epsilon_composed`), the groups being the classifier's clients.
    """
    shared = d_history(gan_results)
    if shared is None or histories is None:
        return None
    delta = float(gan_results["delta"])
    out = epsilon_composed(shared, histories or {"all": []}, delta=delta)
    return {
        "delta": delta,
        **out,
        "note": "a real image's epsilon over D's training and the classifier's, composed in each accountant "
        "(sum: basic composition, for reference); the synthetic images are post-processing of D",
    }


def real_image_epsilon(gan_results: dict[str, Any], clf_results: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`compose_with_d` with the ledgers of a classifier run's results (``privmed gan --classifier``)."""
    return compose_with_d(gan_results, classifier_histories(clf_results))
