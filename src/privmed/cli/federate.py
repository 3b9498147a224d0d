"""`privmed federate` (being written)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("federate", help="(not yet available)")
