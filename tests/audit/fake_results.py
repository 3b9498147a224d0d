"""A small audit results payload (no training) for the report tests."""

from __future__ import annotations

from typing import Any


def fake_results(*, violation: bool = False) -> dict[str, Any]:
    """An audit's results as :func:`privmed.audit.pipeline.summarize` writes them, with made-up numbers."""
    rounds = [
        {"round": r, "val": {"accuracy": 0.5 + r / 40, "auc": 0.6 + r / 30}, "test": {"auc": 0.6 + r / 32},
         "epsilon": 0.8 * r}
        for r in range(1, 11)
    ]  # fmt: skip
    hist = {"edges": [0.0, 1.0, 2.0, 3.0], "in": [5, 10, 20], "out": [20, 10, 5]}
    lb = 9.5 if violation else 1.2
    return {
        "kind": "audit",
        "formal_epsilon": 8.0,
        "target_epsilon": 8.0,
        "delta": 1e-5,
        "privacy_mode": "distributed",
        "secagg": True,
        "break_noise": "off" if violation else "none",
        "canaries": 1000,
        "confidence": 0.95,
        "confidence_each": 0.99,
        "bounds": {
            "white-box": {
                "epsilon_lb": lb,
                "beta": 0.01,
                "delta": 1e-5,
                "m": 1000,
                "k_in": 50,
                "k_out": 50,
                "correct": 90,
                "method": "one-run",
                "score_histogram": hist,
            },
            "white-box, noise check": {
                "epsilon_lb": 0.0,
                "beta": 0.01,
                "delta": 1e-5,
                "ratio_ub": 1.02,
                "p_value": 0.3,
                "n": 5000,
                "method": "chi-square",
            },
        },
        "estimates": {"one-shot": {"epsilon_estimate": 6.5, "method": "one-shot", "statistic": "sum"}},
        "verdict": {"violations": ["white-box"] if violation else [], "ok": not violation},
        "stages": {
            "train": {"title": "training", "status": "done", "seconds": 60.0},
            "attacks": {"title": "attacks", "status": "skipped", "reason": "not available in this run"},
            "hfgan": {"title": "HF-GAN", "status": "skipped", "reason": "not available in this run"},
        },
        "federation": {
            "dataset": {"display_name": "phantom", "synthetic": True},
            "model": {"name": "cnn"},
            "rounds": rounds,
            "final": rounds[-1],
            "partition_sizes": [100, 200, 300],
        },
        "label_histograms": [[50, 50], [150, 50], [10, 290]],
        "total_seconds": 90.0,
        "config": {"data": {"seed": 0}, "train": {"seed": 0}},
        "config_source": "quickstart",
        "machine": {"cpu_count": 2},
    }
