"""`privmed train` (being written)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("train", help="(not yet available)")
