"""Acting's random numbers: one stream per env, whatever the split of the envs into calls,
and the right distributions."""

import math

import pytest
import torch

from parallel_rl import acting_noise


def draws(env_seeds, splits, steps=3, width=5):
    """Each env's uniform draws over ``steps`` act calls, the envs split into calls at ``splits``."""
    streams = acting_noise.EnvStreams(torch.tensor(env_seeds))
    bounds = [0, *splits, len(env_seeds)]
    out = []
    for _ in range(steps):
        parts = []
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            with streams.acting(slice(start, stop)):
                parts.append(torch.cat([acting_noise.uniform(stop - start, width, device=torch.device("cpu")),
                                        acting_noise.uniform(stop - start, device=torch.device("cpu")).unsqueeze(1)], 1))
        out.append(torch.cat(parts))
    return torch.stack(out, 1)  # [env, step, width + 1]


def test_an_envs_numbers_depend_on_its_seed_and_step_alone():
    together = draws([10, 11, 12, 13], [])
    assert torch.equal(together, draws([10, 11, 12, 13], [1, 3]))
    assert torch.equal(together[2:], draws([12, 13], []))  # the same envs stepped elsewhere (another rank)
    assert not torch.equal(together[:, 0], together[:, 1])  # each step draws anew
    assert not torch.equal(together[0], together[1])  # each env its own stream
    assert not torch.equal(together[..., 0], together[..., 5])  # each draw of a call its own numbers


def test_the_numbers_are_uniform_and_the_samplers_follow_their_distributions():
    streams = acting_noise.EnvStreams(torch.arange(4096))
    cpu = torch.device("cpu")
    with streams.acting(slice(None)):
        u = acting_noise.uniform(4096, 64, device=cpu)
        z = acting_noise.normal(4096, 16, device=cpu)
        logits = torch.tensor([0.0, 1.0, 2.0]).expand(4096, 3)
        picks = torch.cat([acting_noise.gumbel_argmax(logits) for _ in range(8)])
        ints = acting_noise.integers(4096, 6, cpu)
    assert 0 < u.min() and u.max() < 1
    assert u.mean() == pytest.approx(0.5, abs=0.003) and u.var() == pytest.approx(1 / 12, abs=0.001)
    hist = torch.histc(u, bins=16, min=0, max=1) / u.numel()
    assert (hist - 1 / 16).abs().max() < 0.003
    assert z.mean() == pytest.approx(0.0, abs=0.02) and z.std() == pytest.approx(1.0, abs=0.02)
    assert (z.abs() > 1.96).float().mean() == pytest.approx(0.05, abs=0.005)
    frequencies = torch.bincount(picks, minlength=3) / picks.numel()
    assert torch.allclose(frequencies, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0), atol=0.01)
    counts = torch.bincount(ints, minlength=6)
    assert len(counts) == 6 and (counts / 4096 - 1 / 6).abs().max() < 0.025
    assert abs(torch.corrcoef(torch.stack([u[:, 0], u[:, 1]]))[0, 1]) < 4 / math.sqrt(4096)


def test_the_topmost_draw_stays_below_one(monkeypatch):
    """All 24 bits set: (2**24 - 1 + 0.5) / 2**24 rounds to 1.0 in float32, where a Gumbel
    draw is infinite."""
    monkeypatch.setattr(acting_noise, "_mix", lambda x: x * 0 + (2**32 - 1))
    with acting_noise.EnvStreams(torch.arange(2)).acting(slice(None)):
        u = acting_noise.uniform(2, 3, device=torch.device("cpu"))
        assert (u < 1).all() and torch.isfinite(acting_noise.gumbel_argmax(torch.zeros(2, 3)).float()).all()
        assert torch.isfinite(-torch.log(-torch.log(acting_noise.uniform(2, 3, device=torch.device("cpu"))))).all()


def test_outside_acting_the_numbers_come_from_torchs_generator():
    torch.manual_seed(5)
    first = acting_noise.uniform(3, 2, device=torch.device("cpu"))
    torch.manual_seed(5)
    assert torch.equal(first, acting_noise.uniform(3, 2, device=torch.device("cpu")))


def test_a_call_must_draw_one_row_per_env():
    streams = acting_noise.EnvStreams(torch.arange(4))
    with streams.acting(slice(0, 2)), pytest.raises(ValueError, match="3 rows .* 2 envs"):
        acting_noise.uniform(3, device=torch.device("cpu"))


def test_torchs_generator_inside_acting_is_seeded_by_the_call_and_the_callers_is_restored():
    """An algorithm written outside the package may sample with torch.distributions: inside
    acting that draws from a generator seeded by the call's envs and step, so two runs of one
    seed act alike in any process, and the caller's generator (the learner's) moves not at all."""

    def sampled(streams, envs):
        with streams.acting(envs):
            return torch.rand(envs.stop - envs.start, 3)

    torch.manual_seed(7)
    expected_next = torch.rand(2)
    torch.manual_seed(7)
    first, second = acting_noise.EnvStreams(torch.arange(4)), acting_noise.EnvStreams(torch.arange(4))
    run_a = [sampled(first, slice(0, 2)), sampled(first, slice(2, 4)), sampled(first, slice(0, 2))]
    assert torch.equal(torch.rand(2), expected_next)
    torch.manual_seed(123)  # another process's generator state
    run_b = [sampled(second, slice(0, 2)), sampled(second, slice(2, 4)), sampled(second, slice(0, 2))]
    assert all(torch.equal(a, b) for a, b in zip(run_a, run_b, strict=True))
    assert not torch.equal(run_a[0], run_a[1]) and not torch.equal(run_a[0], run_a[2])  # other envs, next step


def test_rewound_acting_leaves_the_steps_and_the_seeds_as_they_were():
    streams, fresh = acting_noise.EnvStreams(torch.arange(4)), acting_noise.EnvStreams(torch.arange(4))
    with streams.rewound_after(), streams.acting(slice(0, 4)):
        acting_noise.uniform(4, device=torch.device("cpu"))
    for envs in (slice(0, 4), slice(0, 4)):
        with streams.acting(envs):
            ours = (acting_noise.uniform(4, device=torch.device("cpu")), torch.rand(4))
        with fresh.acting(envs):
            theirs = (acting_noise.uniform(4, device=torch.device("cpu")), torch.rand(4))
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert streams.steps.tolist() == [2] * 4


def test_the_numbers_are_those_every_seeded_run_so_far_acted_on():
    """Literal draws of three streams, one at step 2**32 + 1 and one seed past 2**32, as the
    hash gave them when it ran as torch ops on the acting device: the same numbers from any
    implementation, so recorded runs, resumed checkpoints and the learning tests' seeds keep
    their trajectories. (Env seed 0 at step 0 hashes to 0, the smallest draw.)"""
    streams = acting_noise.EnvStreams(torch.tensor([0, 7, 2**33 + 5]))
    streams.steps[:] = [0, 3, 2**32 + 1]
    with streams.acting(slice(0, 3)):
        u = acting_noise.uniform(3, 2, device=torch.device("cpu"))
        picks = acting_noise.integers(3, 6, torch.device("cpu"))
    assert [x.hex() for x in u.flatten().tolist()] == ["0x1.0000000000000p-25", "0x1.69f7980000000p-4", "0x1.47b3780000000p-4",
                                                       "0x1.8f90900000000p-1", "0x1.72dfa00000000p-1", "0x1.764e800000000p-1"]
    assert picks.tolist() == [2, 5, 0]
    assert u.dtype == torch.float32 and streams.steps.tolist() == [1, 4, 2**32 + 2]
