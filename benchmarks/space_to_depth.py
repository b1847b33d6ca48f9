"""The Nature CNN's first convolution recast as space-to-depth, against the plain one.

    python benchmarks/space_to_depth.py            # eager
    python benchmarks/space_to_depth.py --compile  # torch.compile of the whole update

The first convolution (8x8 kernel, stride 4, 4 input channels) is the same arithmetic as a
2x2 stride-1 convolution over the frame cut into 4x4 blocks stacked as 64 channels. That form
has a faster weight gradient on oneDNN's CPU kernels, but the rearranged frames are a fresh
copy every minibatch. This times both for what the update pays: the first convolution's
weight gradient alone, and a whole update (forward, backward, Adam) of `ppo_atari`'s
actor-critic, built by the package as a run builds it (channels-last, as
`perf.channels_last: auto` runs it on a CPU), at PPO's minibatch of 256. Medians of ``--repeats`` calls (12) after 3 warm-ups; both forms are checked to give the
same outputs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

BATCH, FRAMES, SIDE, BLOCK = 256, 4, 84, 4
CELLS = SIDE // BLOCK  # 21: the 84x84 frame as 21x21 blocks of 4x4


def ppo_atari_network(space_to_depth: bool) -> nn.Module:
    """``ppo_atari``'s actor-critic as a run builds it on a CPU (channels-last), seeded; with
    ``space_to_depth`` its encoder runs the first convolution over 4x4 blocks, the 8x8 weights
    rearranged to 2x2 over 64 channels on every call."""
    import gymnasium as gym
    import numpy as np

    from parallel_rl.algos import make_policy
    from parallel_rl.config import build_config
    from parallel_rl.envs import EnvSpec

    cfg = build_config("ppo_atari", {"device": "cpu", "perf.compile": False, "perf.amp": "off"})  # float32: the forms must agree exactly
    spec = EnvSpec("Pong-v5", "synthetic", (FRAMES, SIDE, SIDE), np.dtype(np.uint8), gym.spaces.Discrete(6), True)
    torch.manual_seed(0)
    net = make_policy(spec, cfg, torch.device("cpu")).net
    if space_to_depth:
        encoder = net.encoder
        first, rest = encoder.net[0], encoder.net[1:]

        def forward(frames: torch.Tensor) -> torch.Tensor:
            n = frames.shape[0]
            # blocks as channels, in one pass over the uint8 frames: (n, 21, 21, frame, dy, dx)
            blocks = torch.empty((n, CELLS, CELLS, FRAMES, BLOCK, BLOCK), dtype=torch.float32)
            blocks.copy_(frames.view(n, FRAMES, CELLS, BLOCK, CELLS, BLOCK).permute(0, 2, 4, 1, 3, 5))
            x = blocks.view(n, CELLS, CELLS, FRAMES * BLOCK * BLOCK).permute(0, 3, 1, 2).mul_(1 / 255)
            weight = first.weight.view(first.out_channels, FRAMES, 2, BLOCK, 2, BLOCK).permute(0, 1, 3, 5, 2, 4)
            weight = weight.reshape(first.out_channels, FRAMES * BLOCK * BLOCK, 2, 2).contiguous(memory_format=torch.channels_last)
            return rest(F.conv2d(x, weight, first.bias))

        encoder.forward = forward
    return net


def median_ms(call, repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times)


def first_conv_weight_grad_ms(layout: torch.memory_format, repeats: int) -> float:
    frames = torch.rand(BATCH, FRAMES, SIDE, SIDE).contiguous(memory_format=layout)
    weight = torch.randn(32, FRAMES, 8, 8).contiguous(memory_format=layout)
    grad_out = torch.randn(BATCH, 32, 20, 20).contiguous(memory_format=layout)
    return median_ms(lambda: torch.ops.aten.convolution_backward(grad_out, frames, weight, [32], [4, 4], [0, 0], [1, 1],
                                                                  False, [0, 0], 1, [False, True, True]), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="torch.compile the update's forward and backward")
    parser.add_argument("--repeats", type=int, default=12, help="timed calls per figure, after 3 warm-ups (default 12)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    frames = torch.randint(0, 256, (BATCH, FRAMES, SIDE, SIDE), dtype=torch.uint8)
    plain, recast = ppo_atari_network(False), ppo_atari_network(True)
    with torch.no_grad():
        difference = max((a - b).abs().max().item() for a, b in zip(plain(frames), recast(frames), strict=True))
    if difference > 1e-4:
        raise SystemExit(f"the two forms differ by {difference}: the recast is wrong")
    print(f"first convolution's weight gradient, batch {BATCH}: NCHW {first_conv_weight_grad_ms(torch.contiguous_format, args.repeats):.1f} ms, "
          f"NHWC {first_conv_weight_grad_ms(torch.channels_last, args.repeats):.1f} ms")
    print(f"| first convolution | update, batch {BATCH}{' (compiled)' if args.compile else ''} (ms) | forward alone (ms) |")
    print("|---|---:|---:|")
    for name, net in (("8x8 stride 4 (plain)", plain), ("space-to-depth, 2x2 over 64 channels", recast)):
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

        def loss_backward(frames: torch.Tensor, net: nn.Module = net) -> torch.Tensor:
            logits, value = net(frames)
            loss = logits.logsumexp(-1).mean() + value.square().mean()
            loss.backward()
            return loss

        step = torch.compile(loss_backward) if args.compile else loss_backward

        def update(step=step, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            step(frames)
            optimizer.step()

        def forward(net: nn.Module = net) -> None:
            with torch.no_grad():
                net(frames)

        print(f"| {name} | {median_ms(update, args.repeats):.1f} | {median_ms(forward, args.repeats):.1f} |", flush=True)


if __name__ == "__main__":
    main()
