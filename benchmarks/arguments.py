"""Checks of the benchmark scripts' own arguments (imported from the scripts beside it)."""

from __future__ import annotations

import argparse


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Exit 2 through ``parser.error`` naming every one of ``names`` (argparse destinations:
    repeats, rounds, seconds) that is not above 0, NaN included: a count of 0 left a median
    of nothing, a traceback."""
    bad = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in names if not getattr(args, name) > 0]
    if bad:
        parser.error(f"{', '.join(bad)}: counts must be 1 or more and seconds positive")
