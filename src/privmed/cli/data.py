"""`privmed data` (being written)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("data", help="(not yet available)")
