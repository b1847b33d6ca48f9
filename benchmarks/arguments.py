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


def refuse_bad_configs(parser: argparse.ArgumentParser, recipes: list[str], flags: dict | None = None,
                       overrides: list[str] | None = None) -> None:
    """Exit 2 through ``parser.error`` with the config's own paragraph where a recipe, a
    ``--set`` or the env id (``flags``: dotted keys) cannot make a run, before anything is
    measured: the measuring would end in a traceback, or in a child's."""
    from parallel_rl.config import ConfigError, build_config
    from parallel_rl.envs import choose_backend

    for recipe in recipes:
        try:
            choose_backend(build_config(recipe, dict(flags or {}), list(overrides or [])).env)
        except ConfigError as exc:
            parser.error(str(exc))
