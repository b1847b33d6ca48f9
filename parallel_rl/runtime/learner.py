"""The learner loop: next batch -> update -> publish, one record per update.

It only trains. Logging, checkpoints, time limits and signals belong to whoever iterates
it (the runner), so a benchmark or a test drives exactly the loop a run does.

A delivery is learned from in pieces of ``source.segment_length`` steps per env (the
algorithm's ``segment_length`` for the envs of this rank, which acting counts on too), with
the weights published after each: a whole rollout for the on-policy algorithms, a few steps
for the replay-based ones, whose acting would otherwise run on weights as old as every
gradient step of a rollout (``algo.publish_interval``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .. import distributed
from ..algos.base import NonFiniteUpdates
from ..config import Config
from ..contracts import Algorithm, BatchSource, Delivery, UpdateResult


@dataclass
class UpdateRecord:
    step: int  # the run's agent steps, this update's batch included
    updates: int  # updates made, this one included: the version now published
    delivery: Delivery  # the batch and what its production reports (episodes, stage timings, lag)
    result: UpdateResult
    lr: float  # the learning rate this update used
    seconds: float  # the update alone


@dataclass
class UpdateWindow:
    """Whether the algorithm's state may be ahead of the step and update counts its caller
    holds: ``learn`` opens it as an update starts, the caller closes it once it has taken that
    update's record. A checkpoint written while it is open (an exception raised inside an
    update: a second Ctrl-C, an out-of-memory error) would pair the new weights and optimizer
    state, perhaps half-stepped, with the counts from before them."""

    open: bool = False


def learn(algo: Algorithm, source: BatchSource, cfg: Config, step: int, updates: int,
          should_stop: Callable[[], bool], window: UpdateWindow | None = None) -> Iterator[UpdateRecord]:
    """Train from ``step`` (after ``updates`` updates) until ``cfg.total_steps`` or ``should_stop()``.

    Raises NonFiniteUpdates once ``cfg.max_nonfinite_updates`` updates in a row were skipped,
    after yielding the last of them (so it is logged)."""
    length = source.segment_length
    ranks = distributed.world().size  # ``step`` counts the agent steps of every rank
    skipped_in_a_row = 0
    while step < cfg.total_steps:
        if ranks == 1 and should_stop():
            return
        delivery = source.next_batch(updates, should_stop)
        # one exchange per update: every rank's episodes, and whether any rank is stopping
        # (also one stopped while waiting for its batch), so all stop after the same update
        returns, lengths, stopping = distributed.exchange(delivery.returns if delivery else [], delivery.lengths if delivery else [],
                                                          delivery is None or should_stop())
        if stopping:
            return
        delivery.returns, delivery.lengths = returns, lengths
        for index, piece in enumerate(delivery.split(length)):
            # several ranks stop only where the exchange agreed on it: a rank stopping here on
            # its own would leave the others waiting in this piece's gradient average
            if index and (step >= cfg.total_steps or (ranks == 1 and should_stop())):
                return  # the rest of the delivery is dropped unlearned, and not counted
            began = time.perf_counter()
            lr = algo.set_progress(step / cfg.total_steps)
            if window is not None:
                window.open = True
            result = algo.update(piece.batch)
            updates += 1
            source.published(updates)
            step += piece.batch.num_steps * ranks
            skipped_in_a_row = skipped_in_a_row + 1 if result.skipped else 0
            yield UpdateRecord(step, updates, piece, result, lr, time.perf_counter() - began)
            if skipped_in_a_row >= cfg.max_nonfinite_updates:
                raise NonFiniteUpdates(
                    f"{skipped_in_a_row} updates in a row had a NaN or infinite loss or gradient and were skipped "
                    f"(max_nonfinite_updates = {cfg.max_nonfinite_updates}), so the run was stopped at step {step:,}. "
                    "Skipped updates leave the weights and optimizer state untouched: the final checkpoint holds "
                    "those from before the first of them. A lower learning rate (optim.lr), a gradient clip "
                    "(algo.max_grad_norm) or reward clipping (algo.reward_clip) usually helps."
                )
