"""The interventions as network options: multi-skip residual torso, LayerNorm placement,
and the Q-network whose epsilon reaches actor processes with the weights."""

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parallel_rl.algos.pqn import PQN
from parallel_rl.config import ModelConfig, build_config
from parallel_rl.envs import EnvSpec
from parallel_rl.nn import ActorCritic, MultiSkipBlock, MultiSkipTorso, QNetwork
from parallel_rl.runtime.slots import SharedWeights

ATARI = EnvSpec("Fake-v5", "envpool", (4, 84, 84), np.dtype(np.uint8), gym.spaces.Discrete(6), True)
VECTOR = EnvSpec("Fake-v1", "envpool", (4,), np.dtype(np.float32), gym.spaces.Discrete(2), False)


def _linear(layer: nn.Linear, x):
    return F.linear(x, layer.weight, layer.bias)


def _norm(layer: nn.LayerNorm, x):
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)


def _randomise(module: nn.Module, seed: int) -> None:
    # non-trivial LayerNorm gains and biases, so a misplaced norm cannot go unnoticed
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_multiskip_block_is_the_formula():
    torch.manual_seed(0)
    block = MultiSkipBlock(8, layer_norm=True)
    _randomise(block, 1)
    x, g = torch.randn(3, 8), torch.randn(3, 8)
    lin1, ln1, lin2, ln2 = [m for m in block.modules() if isinstance(m, (nn.Linear, nn.LayerNorm))]
    # F = LN . Linear . ReLU . LN . Linear . ReLU, applied right to left
    f = _norm(ln2, _linear(lin2, torch.relu(_norm(ln1, _linear(lin1, torch.relu(x))))))
    torch.testing.assert_close(block(x, g), x + f + g)


def test_multiskip_torso_adds_the_projected_features_into_every_block():
    torch.manual_seed(0)
    torso = MultiSkipTorso(5, 8, blocks=3, layer_norm=True)
    _randomise(torso, 2)
    features = torch.randn(4, 5)
    g = _norm(torso.project[1], _linear(torso.project[0], features))
    hidden = g
    for block in torso.blocks:
        hidden = hidden + block.residual(hidden) + g
    expected = torch.relu(_norm(torso.out[1], _linear(torso.out[0], hidden)))
    torch.testing.assert_close(torso(features), expected)
    assert torso.out_dim == 8


def _layers(module: nn.Module) -> list[nn.Module]:
    """Leaf modules in forward order (every container here is a Sequential or ModuleList)."""
    return [m for m in module.modules() if not list(m.children())]


@pytest.mark.parametrize("torso, depth", [("mlp", 3), ("multiskip", 2)])
@pytest.mark.parametrize("network", [ActorCritic, QNetwork])
def test_layer_norm_after_every_conv_and_hidden_linear(network, torso, depth):
    model = ModelConfig(encoder="nature_cnn", torso=torso, width=32, depth=depth, layer_norm=True)
    net = network(ATARI, model)
    conv = _layers(net.encoder)
    for i, layer in enumerate(conv):
        if isinstance(layer, nn.Conv2d):
            norm = conv[i + 1]
            assert isinstance(norm, nn.LayerNorm), f"{layer} is followed by {norm}"
            assert norm.normalized_shape[0] == layer.out_channels and len(norm.normalized_shape) == 3  # over C, H, W
    hidden = _layers(net.torso)
    linears = [i for i, layer in enumerate(hidden) if isinstance(layer, nn.Linear)]
    assert len(linears) == (depth if torso == "mlp" else 2 * depth + 2)
    for i in linears:
        assert isinstance(hidden[i + 1], nn.LayerNorm) and hidden[i + 1].normalized_shape == (32,)
    heads = [m for name, m in net.named_children() if name not in ("encoder", "torso")]
    assert heads and all(isinstance(m, nn.Linear) for m in heads)  # outputs are not normalised


@pytest.mark.parametrize("torso", ["mlp", "multiskip"])
def test_no_layer_norm_when_switched_off(torso):
    net = ActorCritic(ATARI, ModelConfig(encoder="nips_cnn", torso=torso, width=16, depth=2, layer_norm=False))
    assert not any(isinstance(m, nn.LayerNorm) for m in net.modules())
    assert sum(isinstance(m, nn.Linear) for m in net.torso.modules()) == (2 if torso == "mlp" else 6)


def test_width_and_depth_knobs_reach_the_network():
    net = QNetwork(VECTOR, ModelConfig(encoder="mlp", torso="multiskip", width=48, depth=5))
    assert len(net.torso.blocks) == 5
    assert all(m.out_features == 48 for m in net.torso.modules() if isinstance(m, nn.Linear))
    assert net(torch.zeros(3, 4)).shape == (3, 2)


def test_epsilon_travels_with_the_weights_to_actor_replicas():
    cfg = build_config("pqn_classic")
    learner = PQN(VECTOR, cfg, torch.device("cpu"))
    actor = PQN.make_policy(VECTOR, cfg)  # what an actor process builds: the Policy alone
    learner.set_progress(cfg.algo.epsilon_fraction / 2)  # halfway down the schedule
    halfway = (cfg.algo.epsilon_start + cfg.algo.epsilon_end) / 2
    assert float(learner.policy().epsilon) == pytest.approx(halfway)
    shared = SharedWeights(learner.policy())
    shared.publish(learner.policy(), 1)
    assert shared.fetch(actor) == 1
    assert float(actor.epsilon) == pytest.approx(halfway)
    learner.set_progress(1.0)
    assert float(learner.policy().epsilon) == pytest.approx(cfg.algo.epsilon_end)


def test_epsilon_greedy_log_probabilities():
    torch.manual_seed(0)
    cfg = build_config("pqn_classic")
    algo = PQN(VECTOR, cfg, torch.device("cpu"))
    algo.policy().epsilon.fill_(0.5)
    obs = torch.randn(4000, 4)
    actions, log_probs = algo.policy().act(obs)
    best = algo.net(obs).argmax(-1)
    greedy = actions == best
    # greedy action: 1 - eps + eps/2 = 0.75; the other one: eps/2 = 0.25
    torch.testing.assert_close(log_probs[greedy], torch.full_like(log_probs[greedy], np.log(0.75)))
    torch.testing.assert_close(log_probs[~greedy], torch.full_like(log_probs[~greedy], np.log(0.25)))
    assert greedy.float().mean().item() == pytest.approx(0.75, abs=0.03)
    greedy_actions, greedy_log_probs = algo.policy().act(obs, greedy=True)
    assert torch.equal(greedy_actions, best) and not greedy_log_probs.any()


def test_fan_in_uniform_init_is_paacs():
    """PAAC's code: every weight and bias of the NIPS network U(+-1/sqrt(fan_in)), heads too,
    fan_in = in_channels x kernel^2 for a convolution (4 x 8 x 8 = 256 for the first)."""
    torch.manual_seed(0)
    net = ActorCritic(ATARI, ModelConfig(encoder="nips_cnn", width=256, layer_norm=False, init="fan_in_uniform"))
    expected_fan_in = {"encoder.net.0": 4 * 8 * 8, "encoder.net.2": 16 * 4 * 4, "torso.net.0": 32 * 9 * 9,
                       "policy": 256, "value": 256}
    layers = {name: m for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert sorted(layers) == sorted(expected_fan_in)
    for name, layer in layers.items():
        bound = expected_fan_in[name] ** -0.5
        for tensor in (layer.weight.detach(), layer.bias.detach()):
            assert float(tensor.abs().max()) <= bound
            if tensor.numel() >= 32:  # enough draws to see the spread (the value head has one bias)
                assert float(tensor.abs().max()) > 0.9 * bound  # the whole interval, not a narrower init
                assert float(tensor.std()) == pytest.approx(bound / 3**0.5, rel=0.25)  # a uniform's std
