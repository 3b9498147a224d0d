"""Helpers shared by the subcommands."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def console() -> Console:
    """The console for human output (stderr, so stdout stays clean for JSON)."""
    return Console(stderr=True)


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
