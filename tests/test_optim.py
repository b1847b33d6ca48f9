"""Optimizers: TensorFlow-semantics RMSProp pinned to values worked out by hand."""

import pytest
import torch

from parallel_rl.config import build_config
from parallel_rl.optim import RMSpropTF, anneal_lr, make_optimizer


def test_rmsprop_tf_first_steps_match_hand_computed_values():
    # w = 1, a constant gradient g = 0.5, lr 0.01, alpha 0.99, eps 0.1 (PAAC's):
    #   ms1 = 0.99 * 1 + 0.01 * 0.25 = 0.9925        w1 = 1 - 0.01 * 0.5 / sqrt(1.0925)  = 0.99521635...
    #   ms2 = 0.99 * 0.9925 + 0.0025 = 0.985075     w2 = w1 - 0.005 / sqrt(1.085075)     = 0.99041636...
    #   ms3 = 0.99 * 0.985075 + 0.0025 = 0.97772425 w3 = w2 - 0.005 / sqrt(1.07772425)   = 0.98560003...
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = RMSpropTF([w], lr=0.01, alpha=0.99, eps=0.1)
    expected = [(0.9925, 0.9952163512676506), (0.985075, 0.9904163635556035), (0.97772425, 0.9856000342097345)]
    for square_avg, weight in expected:
        w.grad = torch.tensor([0.5], dtype=torch.float64)
        optimizer.step()
        assert optimizer.state[w]["square_avg"].item() == pytest.approx(square_avg, rel=1e-12)
        assert w.item() == pytest.approx(weight, rel=1e-12)


def test_torch_rmsprop_steps_differ_as_the_docs_say():
    """torch's RMSprop (mean square from 0, eps outside the root) moves the same weight
    0.01 * 0.5 / (sqrt(0.0025) + 0.1) = 0.0333 in its first step: about 7x TensorFlow's 0.00478."""
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = torch.optim.RMSprop([w], lr=0.01, alpha=0.99, eps=0.1)
    w.grad = torch.tensor([0.5], dtype=torch.float64)
    optimizer.step()
    assert w.item() == pytest.approx(1 - 0.005 / 0.15, rel=1e-12)


def test_rmsprop_tf_is_chosen_by_name_and_round_trips_its_state():
    cfg = build_config("paac_classic", overrides=["optim.name=rmsprop_tf", "optim.eps=0.1"])
    net = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(net.parameters(), cfg)
    assert isinstance(optimizer, RMSpropTF)
    net(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    copy = RMSpropTF(net.parameters(), lr=1.0)
    copy.load_state_dict(optimizer.state_dict())
    for p in net.parameters():
        assert torch.equal(copy.state[p]["square_avg"], optimizer.state[p]["square_avg"])


@pytest.mark.parametrize("anneal_steps, final_scale, expected", [
    (0, 0.0, [0.0224, 0.0112, 0.0, 0.0]),            # to 0 over the run (1000 steps)
    (4000, 0.0, [0.0224, 0.0196, 0.0168, 0.014]),    # PAAC: over 4x the run, so 3/4 of the LR is left at its end
    (0, 0.5, [0.0224, 0.0168, 0.0112, 0.0112]),      # SimbaV2's decay to half the LR
])
def test_lr_schedule_spans_anneal_steps_and_ends_at_final_scale(anneal_steps, final_scale, expected):
    cfg = build_config("paac_atari_paper", overrides=["total_steps=1000", f"optim.anneal_steps={anneal_steps}",
                                                f"optim.final_lr_scale={final_scale}"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for fraction, lr in zip([0.0, 0.5, 1.0, 1.5], expected, strict=True):
        assert anneal_lr([optimizer], cfg, fraction) == pytest.approx(lr)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr)
