"""Config layering, overrides and validation messages."""

import pytest

from parallel_rl.config import (
    Config,
    ConfigError,
    build_config,
    from_dict,
    load_yaml,
    save_yaml,
    set_override,
)


def test_layers_recipe_flags_overrides():
    cfg = build_config("paac_classic", {"actors.num_envs": 8, "seed": 7}, ["algo.gamma=0.995", "optim.lr=3e-4"])
    assert cfg.env.id == "CartPole-v1"  # from the recipe
    assert cfg.actors.num_envs == 8 and cfg.seed == 7  # named flags
    assert cfg.algo.gamma == 0.995 and cfg.optim.lr == 3e-4  # --set, YAML-parsed


def test_default_recipe_is_paac_atari():
    cfg = build_config()
    assert cfg.env.id == "Pong-v5" and cfg.algo.name == "paac" and cfg.model.encoder == "nips_cnn"
    assert cfg.effective_lr == pytest.approx(0.0007 * cfg.actors.num_envs)


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'algo.gamma'"):
        set_override(Config(), "algo.gama=0.9")
    with pytest.raises(ConfigError, match="Did you mean 'rollout_length'"):
        from_dict({"algo": {"rollout_lenght": 5}})


@pytest.mark.parametrize(
    "assignment, fragment",
    [
        ("algo.gamma=abc", "expected a number"),
        ("actors.num_envs=2.5", "expected an integer"),
        ("model.layer_norm=maybe", "expected true or false"),
        ("model.encoder=resnet", "Valid choices: auto, mlp, nips_cnn, nature_cnn"),
        ("algo=3", "names the section"),
        ("algo.gamma", "malformed"),
    ],
)
def test_bad_values_name_value_and_choices(assignment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        set_override(Config(), assignment)


def test_validate_shows_arithmetic():
    cfg = Config()
    cfg.total_steps = 10
    with pytest.raises(ConfigError, match=r"32\) x algo.rollout_length \(5\) = 160"):
        cfg.validate()


def test_resolved_config_round_trips(tmp_path):
    cfg = build_config("paac_classic", overrides=["algo.entropy_coef=0.05"])
    save_yaml(cfg, tmp_path / "config.yaml")
    assert from_dict(load_yaml(tmp_path / "config.yaml")) == cfg


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        build_config(str(bad))


@pytest.mark.parametrize("recipe, key", [("qrdqn_classic", "algo.loss_scale=5"), ("simbav2_pendulum", "algo.loss_scale=5"),
                                         ("simbav2_pendulum", "algo.reward_clip=1")])
def test_keys_an_algorithm_ignores_are_refused_with_its_alternative(recipe, key):
    with pytest.raises(ConfigError, match=key.split("=")[0].replace(".", r"\.")):
        build_config(recipe, overrides=[key])
