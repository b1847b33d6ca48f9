"""Replay of frame-stacked observations with every frame stored once.

An Atari observation stacks the newest 4 frames, so storing whole observations would
keep every frame 4 times (and once more as the next observation). Here each env's
stream of agent steps is stored in order, one row per step: the newest frame of the
observation the step started from, the action, the reward and flags. Stacks and n-step
returns are rebuilt when a minibatch is sampled:

- A stack is the newest frame of the last ``frame_stack`` rows of its env. At a reset
  EnvPool fills the whole stack with the first frame (with ``episodic_life`` a lost
  life continues the stack instead); a row whose observed stack holds one frame
  repeated is marked a *stack start*, and older slots of later stacks repeat its frame.
  The rule is data-driven, so it reproduces the env's stacks in both cases.
- The rollout's auto-reset steps (see ``envs.py``) store the final observation of the
  episode that just ended: that row is the next observation of the episode's last
  transition and is itself no transition, so it is never sampled.
- The n-step return from row t sums ``gamma^k r_{t+k}`` up to ``n_step`` rows, stopping
  after a termination (no bootstrap) or a truncation (bootstrap from the final
  observation, the next row).
- Rows are sampled only when the ``frame_stack - 1`` rows before them and the
  ``n_step`` rows after them are stored, so nothing overwritten or not yet written is
  ever read. Unwritten memory holds the sentinel of ``runtime/slots.py`` regardless.
- A break in an env's stream (a restarted actor's lost rollout) is
  detected by comparing each rollout's first observation with the previous rollout's
  ``next_obs``: the row before the break becomes a truncation (its successor is the
  last stored row), the last row is not sampled, and neither are the first
  ``frame_stack - 1`` rows after the break (their stacks reach across it).

With ``frame_stack = 1`` (vector observations) rows hold whole observations. Sampling is
uniform, or proportional to priority^alpha (a sum tree over all rows) with
importance-sampling weights (Schaul et al. 2016). :func:`frame_layout` defines the storage
once; :meth:`FrameReplay.planned_bytes` reports its size for any capacity without
allocating it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sentinels import sentinel
from .uniform import choose_storage, torch_dtype

# bits of the per-row ``flags``
TERMINATED, TRUNCATED, STACK_START, SAMPLEABLE = 1, 2, 4, 8
MIN_PRIORITY = 1e-6  # keeps a zero-loss transition sampleable
CANDIDATES_PER_DRAW, SPARE_CANDIDATES = 4, 64  # see FrameReplay._sample_uniform


def frame_layout(rows_per_env: int, num_envs: int, frame_shape: tuple[int, ...], frame_dtype: torch.dtype,
                 prioritized: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of every stored tensor: rows are [rows_per_env, num_envs] (time-major)."""
    rows = (rows_per_env, num_envs)
    layout = {
        "frames": ((*rows, *frame_shape), frame_dtype),
        "actions": (rows, torch.int32),
        "rewards": (rows, torch.float32),  # as the algorithm stored them (clipped for QR-DQN)
        "flags": (rows, torch.uint8),
    }
    if prioritized:
        layout["priority_tree"] = ((2 * tree_size(rows_per_env * num_envs),), torch.float64)
    return layout


def tree_size(leaves: int) -> int:
    """Leaves of the sum tree: the next power of two (the root is node 1, leaf i is node size + i)."""
    return 1 << max(0, math.ceil(math.log2(max(leaves, 1))))


def layout_bytes(layout: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    return sum(math.prod(shape) * torch.empty(0, dtype=dtype).element_size() for shape, dtype in layout.values())


def n_step_targets(rewards: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                   gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n-step returns over [B, n] rows that start at the sampled transition.

    Returns ``(returns, steps, discounts)``: ``returns = sum_{k<steps} gamma^k r_k``, where
    ``steps`` is n or the number of rows up to and including the first episode end; the
    target bootstraps from the observation ``steps`` rows on with ``discounts``:
    ``gamma^steps``, or 0 after a termination. A truncation stops the sum and bootstraps
    from the final observation. Termination wins when both flags are set.
    """
    batch, horizon = rewards.shape
    returns = torch.zeros(batch, dtype=torch.float32, device=rewards.device)
    discount = torch.ones_like(returns)
    steps = torch.zeros(batch, dtype=torch.long, device=rewards.device)
    running = torch.ones(batch, dtype=torch.bool, device=rewards.device)
    ended_by_termination = torch.zeros_like(running)
    for k in range(horizon):
        returns += torch.where(running, discount * rewards[:, k], 0.0)
        steps += running.long()
        discount = torch.where(running, discount * gamma, discount)
        ended_by_termination |= running & terminated[:, k]
        running &= ~(terminated[:, k] | truncated[:, k])
    return returns, steps, torch.where(ended_by_termination, 0.0, discount)


@dataclass
class FrameSample:
    """A minibatch of n-step transitions, on the learner's device."""

    obs: torch.Tensor  # [B, *obs_shape], stacks rebuilt
    actions: torch.Tensor  # [B] int64
    returns: torch.Tensor  # [B] float32: discounted reward sum over `steps` rows
    discounts: torch.Tensor  # [B] float32: gamma^steps, 0 after a termination
    next_obs: torch.Tensor  # [B, *obs_shape]: the observation `steps` rows on (bootstrap)
    weights: torch.Tensor  # [B] float32: importance-sampling weights (1 with uniform sampling)
    index: torch.Tensor  # [B] int64: row ids for update_priorities


class FrameReplay:
    """Ring buffer of ``capacity // num_envs`` rows per env, all envs written in lockstep.

    ``add`` takes one time-major rollout [T, N] (the rollout's fields, see ``algos.base.Batch``);
    ``sample`` returns n-step transitions with rebuilt stacks.
    """

    def __init__(self, obs_shape: tuple[int, ...], obs_dtype, frame_stack: int, num_envs: int, capacity: int,
                 n_step: int, gamma: float, device: torch.device, prioritized: bool = False,
                 priority_exponent: float = 0.5, importance_exponent: float = 0.5, seed: int = 0):
        self.obs_shape = tuple(obs_shape)
        self.frame_stack = frame_stack
        if frame_stack > 1 and self.obs_shape[0] != frame_stack:
            raise ValueError(f"observations {self.obs_shape} do not stack {frame_stack} frames on their first axis")
        self.frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape
        self.num_envs = num_envs
        self.rows = capacity // num_envs
        if self.rows < frame_stack + n_step:
            raise ValueError(f"capacity {capacity} gives {self.rows} rows per env for {num_envs} envs; "
                             f"frame_stack + n_step = {frame_stack + n_step} are needed")
        self.n_step, self.gamma = n_step, gamma
        self.device = device
        self.prioritized = prioritized
        self.priority_exponent, self.importance_exponent = priority_exponent, importance_exponent
        layout = frame_layout(self.rows, num_envs, self.frame_shape, torch_dtype(obs_dtype), prioritized)
        self.nbytes = layout_bytes(layout)
        self.storage_device = choose_storage(self.nbytes, device)
        self.data: dict[str, torch.Tensor] = {}
        for name, (shape, dtype) in layout.items():
            tensor = torch.empty(shape, dtype=dtype, device=self.storage_device)
            if name == "priority_tree":
                tensor.zero_()
            else:  # pre-faults the pages; a read of never-written rows would show the sentinel
                tensor.fill_(sentinel(dtype))
            self.data[name] = tensor
        self.leaves = tree_size(self.rows * num_envs)
        # in tree units (priority ** alpha): what new rows get; a tensor on the storage device,
        # so that raising it after an update asks nothing of a GPU
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.storage_device)
        self.cursor = 0  # the row written next
        self.size = 0  # rows stored per env
        self.blind = torch.zeros(num_envs, dtype=torch.long, device=self.storage_device)  # rows not to sample after a break
        self.last_next_obs: torch.Tensor | None = None
        self.breaks = torch.zeros((), dtype=torch.long, device=self.storage_device)  # envs whose stream broke, in all
        self.generator = torch.Generator(device=self.storage_device)
        self.generator.manual_seed(seed)

    # ------------------------------------------------------------------ size
    @classmethod
    def planned_bytes(cls, obs_shape: tuple[int, ...], obs_dtype, frame_stack: int, capacity: int,
                      num_envs: int = 1, prioritized: bool = False) -> int:
        """Bytes the storage of ``capacity`` rows takes, computed without allocating it."""
        frame_shape = tuple(obs_shape[1:]) if frame_stack > 1 else tuple(obs_shape)
        return layout_bytes(frame_layout(capacity // num_envs, num_envs, frame_shape, torch_dtype(obs_dtype), prioritized))

    @property
    def capacity(self) -> int:
        return self.rows * self.num_envs

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / self.capacity

    def __len__(self) -> int:
        """Rows stored: one per agent step, final observations included."""
        return self.size * self.num_envs

    def holds_a_whole_window(self) -> bool:
        """Whether some row has a whole stack behind it and an n-step window ahead."""
        return self.size >= self.frame_stack + self.n_step

    def can_sample(self) -> bool:
        """Whether ``sample`` may be called: once per update, as it reads the prioritized tree's
        total (a host sync on a GPU); within the update that total stays above 0."""
        return self.holds_a_whole_window() and (not self.prioritized or float(self.data["priority_tree"][1]) > 0)

    # ------------------------------------------------------------------ writing
    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
            truncated: torch.Tensor, autoreset: torch.Tensor, next_obs: torch.Tensor) -> None:
        """Store one rollout: [T, N] steps (``obs`` [T, N, *obs_shape]) and ``next_obs`` [N, *obs_shape]."""
        dev = self.storage_device
        obs, next_obs = obs.to(dev), next_obs.to(dev)
        horizon = obs.shape[0]
        if horizon > self.rows:
            raise ValueError(f"a rollout of {horizon} steps does not fit in {self.rows} rows per env")
        if self.last_next_obs is not None:
            self._break_streams((obs[0] != self.last_next_obs).flatten(1).any(1))
        self.last_next_obs = next_obs.clone()

        autoreset = autoreset.to(dev)
        flags = terminated.to(dev).to(torch.uint8) * TERMINATED | truncated.to(dev).to(torch.uint8) * TRUNCATED
        steps = torch.arange(horizon, device=dev).unsqueeze(1)
        sampleable = ~autoreset & (steps >= self.blind.unsqueeze(0))
        flags |= sampleable.to(torch.uint8) * SAMPLEABLE
        self.blind = (self.blind - horizon).clamp(min=0)
        if self.frame_stack > 1:
            repeated = (obs[:, :, :-1] == obs[:, :, -1:]).flatten(2).all(2)
            flags |= repeated.to(torch.uint8) * STACK_START

        rows = (self.cursor + torch.arange(horizon, device=dev)) % self.rows
        self.data["frames"][rows] = obs[:, :, -1] if self.frame_stack > 1 else obs
        self.data["actions"][rows] = actions.to(dev, torch.int32)
        self.data["rewards"][rows] = rewards.to(dev, torch.float32)
        self.data["flags"][rows] = flags
        self.cursor = (self.cursor + horizon) % self.rows
        self.size = min(self.rows, self.size + horizon)
        if self.prioritized:
            self._refresh_priorities(rows, horizon)

    def _break_streams(self, broken: torch.Tensor) -> None:
        """The envs where ``broken`` ([N] bool) continue from a state that does not follow their
        last row. Masks, not indexing by ``broken``: nothing here waits for a GPU."""
        self.breaks += broken.sum()
        if self.size == 0:
            return
        flags = self.data["flags"]
        last = (self.cursor - 1) % self.rows
        flags[last] &= torch.where(broken, ~SAMPLEABLE & 0xFF, 0xFF).to(torch.uint8)
        if self.size >= 2:
            flags[(last - 1) % self.rows] |= (broken.to(torch.uint8) * TRUNCATED)
        self.blind = torch.where(broken, self.frame_stack - 1, self.blind)

    def _oldest(self) -> int:
        return (self.cursor - self.size) % self.rows

    def _sample_window(self) -> tuple[int, int]:
        """Logical rows (0 = oldest) that may be sampled: [first, last]."""
        return self.frame_stack - 1, self.size - 1 - self.n_step

    def _refresh_priorities(self, written: torch.Tensor, horizon: int) -> None:
        dev, envs = self.storage_device, torch.arange(self.num_envs, device=self.storage_device)
        first, last = self._sample_window()
        oldest = self._oldest()
        # overwritten rows and rows whose stacks now reach past the oldest row leave the tree
        gone = torch.cat([written, (oldest + torch.arange(first, device=dev)) % self.rows])
        self._set_leaves((gone.unsqueeze(1) * self.num_envs + envs).flatten(), torch.zeros((), dtype=torch.float64, device=dev))
        # rows whose n-step window is now complete enter it at the highest priority seen
        start = max(first, last - horizon + 1)
        if start <= last:  # none while the replay holds less than a stack and an n-step window
            rows = (oldest + torch.arange(start, last + 1, device=dev)) % self.rows
            sampleable = (self.data["flags"][rows] & SAMPLEABLE) != 0
            self._set_leaves((rows.unsqueeze(1) * self.num_envs + envs).flatten(),
                             sampleable.flatten().to(torch.float64) * self.max_priority)

    def _set_leaves(self, leaves: torch.Tensor, values: torch.Tensor) -> None:
        tree = self.data["priority_tree"]
        node = leaves + self.leaves
        tree[node] = values
        for _ in range(self.leaves.bit_length() - 1):
            # siblings share a parent: it is written once per child, each time with the same sum
            # (``torch.unique`` would write it once, at the cost of a host sync on a GPU)
            node = node // 2
            tree[node] = tree[2 * node] + tree[2 * node + 1]

    # ------------------------------------------------------------------ reading
    def stacked_obs(self, rows: torch.Tensor, envs: torch.Tensor) -> torch.Tensor:
        """The observations of ring ``rows`` of ``envs`` ([B] each), stacks rebuilt: [B, *obs_shape]."""
        frames = self.data["frames"]
        if self.frame_stack == 1:
            return frames[rows, envs]
        back = torch.arange(self.frame_stack - 1, device=rows.device)
        starts = (self.data["flags"][(rows.unsqueeze(1) - back) % self.rows, envs.unsqueeze(1)] & STACK_START) != 0
        # distance to the nearest stack start within reach; older slots repeat its frame
        reach = torch.where(starts.any(1), starts.to(torch.uint8).argmax(1), self.frame_stack - 1)
        age = torch.arange(self.frame_stack - 1, -1, -1, device=rows.device)  # slot 0 is the oldest frame
        source = (rows.unsqueeze(1) - torch.minimum(age.unsqueeze(0), reach.unsqueeze(1))) % self.rows
        return frames[source, envs.unsqueeze(1)]

    def logical_rows(self, logical: torch.Tensor) -> torch.Tensor:
        """Ring rows of logical positions (0 = the oldest row stored)."""
        return (self._oldest() + logical) % self.rows

    def sample(self, batch_size: int) -> FrameSample:
        """``batch_size`` transitions drawn with replacement among the sampleable rows:
        uniformly, or in proportion to their priorities. Call only where ``can_sample`` said
        so: a prioritized tree with no mass left is not checked again here (that would ask a GPU
        at every gradient step)."""
        if not self.holds_a_whole_window():
            raise RuntimeError(f"the replay holds {self.size} rows per env and cannot be sampled yet "
                               f"(it needs frame_stack + n_step = {self.frame_stack + self.n_step})")
        if self.prioritized:
            rows, envs, weights = self._sample_prioritized(batch_size)
        else:
            rows, envs, weights = self._sample_uniform(batch_size)
        return self.gather(rows, envs, weights)

    def gather(self, rows: torch.Tensor, envs: torch.Tensor, weights: torch.Tensor | None = None) -> FrameSample:
        """The n-step transitions that start at ring ``rows`` of ``envs`` (sampleable ones: see ``sample``)."""
        rows, envs = rows.to(self.storage_device), envs.to(self.storage_device)
        if weights is None:
            weights = torch.ones(len(rows), device=self.storage_device)
        ahead = (rows.unsqueeze(1) + torch.arange(self.n_step, device=rows.device)) % self.rows
        flags = self.data["flags"][ahead, envs.unsqueeze(1)]
        returns, steps, discounts = n_step_targets(
            self.data["rewards"][ahead, envs.unsqueeze(1)], (flags & TERMINATED) != 0, (flags & TRUNCATED) != 0, self.gamma)
        sample = FrameSample(
            obs=self.stacked_obs(rows, envs),
            actions=self.data["actions"][rows, envs].long(),
            returns=returns,
            discounts=discounts,
            next_obs=self.stacked_obs((rows + steps) % self.rows, envs),
            weights=weights.float(),
            index=rows * self.num_envs + envs,
        )
        if self.storage_device != self.device:
            sample = FrameSample(**{k: v.to(self.device, non_blocking=True) for k, v in vars(sample).items()})
        return sample

    def _sample_uniform(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uniform over sampleable rows, without a host sync (this runs at every gradient step):
        candidates drawn from the window, the first ``batch_size`` sampleable ones kept in draw
        order, so each is uniform over the sampleable rows. Outside a break in the stream at most
        every other row is unsampleable (an auto-reset row ends each episode of at least one
        step), so with ``CANDIDATES_PER_DRAW`` per draw plus ``SPARE_CANDIDATES`` a shortfall lies
        at least 8 standard deviations out; should one happen, the sampleable candidates are
        reused (each still uniform), and a draw with none at all gets weight 0 rather than a
        wrong transition."""
        first, last = self._sample_window()
        dev, candidates = self.storage_device, CANDIDATES_PER_DRAW * batch_size + SPARE_CANDIDATES
        rows = self.logical_rows(torch.randint(first, last + 1, (candidates,), device=dev, generator=self.generator))
        envs = torch.randint(self.num_envs, (candidates,), device=dev, generator=self.generator)
        keep = (self.data["flags"][rows, envs] & SAMPLEABLE) != 0
        kept_first = torch.argsort((~keep).to(torch.uint8), stable=True)
        chosen = kept_first[torch.arange(batch_size, device=dev) % keep.sum().clamp(min=1)]
        return rows[chosen], envs[chosen], keep[chosen].float()

    def _sample_prioritized(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stratified proportional sampling: one draw in each of batch_size equal slices of the total."""
        tree, dev = self.data["priority_tree"], self.storage_device
        total = tree[1]
        offsets = torch.rand(batch_size, dtype=torch.float64, device=dev, generator=self.generator)
        mass = (torch.arange(batch_size, device=dev) + offsets) / batch_size * total
        node = torch.ones(batch_size, dtype=torch.long, device=dev)
        for _ in range(self.leaves.bit_length() - 1):
            left = tree[2 * node]
            go_right = (mass >= left) & (tree[2 * node + 1] > 0)  # rounding must not lead into an empty subtree
            mass = torch.where(go_right, mass - left, mass)
            node = 2 * node + go_right.long()
        leaves = node - self.leaves
        probs = tree[node] / total
        weights = (probs / probs.min()).pow(-self.importance_exponent)  # largest weight 1
        return leaves // self.num_envs, leaves % self.num_envs, weights

    def update_priorities(self, index: torch.Tensor, losses: torch.Tensor, stepped: torch.Tensor | None = None) -> None:
        """Set the sampled rows' priorities to their latest losses (raised to priority_exponent).

        ``stepped``: a bool tensor, whether the optimizer took the step these losses came from;
        where it did not (a non-finite loss or gradient), every priority stays as it was. A
        tensor rather than a Python bool, so that the caller need not wait for a GPU to decide."""
        index = index.to(self.storage_device)
        values = (losses.detach().to(self.storage_device, torch.float64).abs() + MIN_PRIORITY).pow(self.priority_exponent)
        highest = torch.maximum(self.max_priority, values.max())
        if stepped is not None:
            stepped = stepped.to(self.storage_device)
            values = torch.where(stepped, values, self.data["priority_tree"][index + self.leaves])
            highest = torch.where(stepped, highest, self.max_priority)
        # a row drawn twice in one minibatch keeps one of its losses
        self._set_leaves(index, values)
        self.max_priority = highest


__all__ = ["FrameReplay", "FrameSample", "frame_layout", "n_step_targets"]
