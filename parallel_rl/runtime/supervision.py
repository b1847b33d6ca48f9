"""Process supervision: the one place parallel-rl starts, describes, stops and reaps child
processes (actor processes, evaluation's render probe).

Children are started with the ``spawn`` method (a fresh interpreter: no forked torch,
EnvPool or ZeroMQ state) and with the stop signals blocked until they ignore SIGINT
(``signals.ignore_in_child``), so a Ctrl-C while a child is still importing torch cannot
kill it with a traceback. Heartbeats are their users' business; what a child's exit means
is said here, once.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess

from . import signals

STOP_GRACE_S = 3.0
_SPAWN = multiprocessing.get_context("spawn")


def start(target: Callable, args: tuple, name: str, daemon: bool = True,
          on_created: Callable[[BaseProcess], None] | None = None) -> BaseProcess:
    """A started child running ``target(*args)``; ``on_created`` receives it before it starts,
    so an interrupt right after the start cannot lose track of it."""
    process = _SPAWN.Process(target=target, args=args, name=name, daemon=daemon)
    if on_created is not None:
        on_created(process)
    # multiprocessing's resource tracker, started on first use, unblocks both signals in the
    # calling thread once it is up: have it running before blocking them
    resource_tracker.ensure_running()
    with signals.blocked():
        process.start()
    return process


def run_to_exit(target: Callable, args: tuple, name: str) -> int:
    """Run ``target(*args)`` in a child and wait for it; its exit code (negative: killed by
    that signal), for work that may abort the whole process it runs in."""
    process = start(target, args, name, daemon=False)
    process.join()
    return process.exitcode


def describe_exit(name: str, process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"{name} (pid {process.pid}) was killed by {signal.Signals(-code).name}"
    return f"{name} (pid {process.pid}) exited with code {code}"


def stop(processes: Sequence[BaseProcess], ask: Callable[[int], None], grace_s: float = STOP_GRACE_S) -> None:
    """``ask(i)`` each live process to stop, wait up to ``grace_s`` for all, kill the rest."""
    for i, process in enumerate(processes):
        if process.is_alive():
            ask(i)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    kill(processes, grace_s)


def kill(processes: Sequence[BaseProcess], grace_s: float = STOP_GRACE_S) -> None:
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(grace_s)


def reap_children() -> None:
    """Join every child process this process started, multiprocessing's resource tracker
    included, so that nothing of a command outlives it (not even as a zombie).

    The tracker would otherwise exit only after this process did, when it sees its pipe
    close; stopping it here is what the standard library does for its own tests. Everything
    it tracks has been released by then (shared memory is unlinked when a pool closes)."""
    children = multiprocessing.active_children()
    for child in children:
        child.join(STOP_GRACE_S)
    # everything asked its children to stop before this; one that has not ended by now (a stop
    # cut short by a second Ctrl-C) is killed rather than waited on forever
    kill(children)
    stop_tracker = getattr(resource_tracker._resource_tracker, "_stop", None)  # private: present in 3.11 to 3.14
    if stop_tracker is not None:
        stop_tracker()
