"""`python -m app import FILE` (filled in by the staff-tools work)."""

import argparse


def run(args: argparse.Namespace) -> int:
    raise SystemExit("import is not implemented yet")
