"""Algorithms by name: the built-in ones register themselves, others are named by import path.

``algo.name`` is either a registered name (``paac``) or ``module:Class`` for an algorithm
defined outside the package (the module must be importable, e.g. on ``PYTHONPATH``). The
built-in algorithms are found by importing ``parallel_rl.algos`` by name, on first lookup,
so this module imports nothing of the package: the config can resolve names without an
import cycle, and actor processes resolve an import path exactly as the learner did.
"""

from __future__ import annotations

import importlib

BUILTIN_PACKAGE = "parallel_rl.algos"

_REGISTERED: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` (an Algorithm, see contracts.py) known as ``cls.name``."""
    name = cls.name
    if name in _REGISTERED and _REGISTERED[name] is not cls:
        raise ValueError(f"two algorithms are registered as {name!r}: {_REGISTERED[name].__qualname__} and {cls.__qualname__}")
    _REGISTERED[name] = cls
    return cls


def _load_builtins() -> None:
    importlib.import_module(BUILTIN_PACKAGE)


def registered_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTERED)


class UnknownAlgorithm(LookupError):
    """``name`` is neither registered nor an importable ``module:Class``; the message says why."""


def lookup(name: str) -> type:
    """The algorithm class for ``name``: a registered name or ``module:Class``."""
    _load_builtins()
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" not in name:
        raise UnknownAlgorithm(f"no algorithm is registered as {name!r}")
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownAlgorithm(f"cannot import module {module_name!r} ({exc}); is its folder on PYTHONPATH?") from None
    except Exception as exc:  # the module itself failed while importing: name it, not a traceback
        raise UnknownAlgorithm(f"importing module {module_name!r} raised {type(exc).__name__}: {exc}") from None
    cls = getattr(module, attribute, None)
    missing = [a for a in ("config_class", "make_policy", "update", "max_policy_lag") if not hasattr(cls, a)]
    if cls is None or missing:
        what = f"has no attribute {attribute!r}" if cls is None else f"{attribute} lacks {', '.join(missing)}"
        raise UnknownAlgorithm(f"module {module_name!r} {what}: an algorithm class is needed (see parallel_rl/contracts.py)")
    return cls


__all__ = ["UnknownAlgorithm", "lookup", "register", "registered_names"]
