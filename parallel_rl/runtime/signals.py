"""Stop signals (SIGINT, SIGTERM): how every parallel-rl process reacts to them.

- The CLI turns either signal into :class:`Interrupted` until a runner takes over, so a
  signal during configuration or start-up ends in the exit code below, not a traceback.
- The runner records the first signal and stops after the current update with a final
  checkpoint; a second signal raises :class:`Interrupted` at once (no final checkpoint if it
  lands inside an update: see ``learner.UpdateWindow``). Once stopping, it does
  not count actor processes that die meanwhile as failures (a SIGTERM sent to the whole process
  group ends them too).
- Actor processes ignore SIGINT: Ctrl-C reaches the whole process group, and the runner
  stops its actor processes itself. They are started with the stop signals blocked, so a Ctrl-C
  while a child is still importing torch cannot kill it with a traceback either; the child
  unblocks them once SIGINT is ignored (the standard library starts its resource tracker
  the same way). SIGTERM keeps its default action in actor processes, which Python's own exit
  handler relies on to end daemonic children.

Exit codes follow the shell's convention, 128 + the signal number: 130 for SIGINT and 143
for SIGTERM, whether the signal stopped a run or interrupted anything before it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal that has to end what is running now; ``signum`` picks the exit code."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    return 128 + signum


def signal_of_exit_code(code: int) -> int | None:
    """The stop signal a process ending with ``code`` stopped for (None: it did not)."""
    return code - 128 if code - 128 in STOP_SIGNALS else None


def raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextmanager
def handled(handler: Callable) -> Iterator[None]:
    """Route both stop signals to ``handler`` inside the block (a no-op off the main thread,
    where Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: a handler installed outside Python, which cannot be restored
                signal.signal(sig, old)


@contextmanager
def blocked() -> Iterator[None]:
    """Hold the stop signals pending in this thread while a child process is started: the
    child inherits the mask; the parent receives what arrived once the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_in_child() -> None:
    """First thing in a child started by ``supervision.start``: ignore SIGINT (one that arrived
    meanwhile is discarded), then unblock both signals."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
