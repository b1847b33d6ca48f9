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
    # the step measured to learn Pong by 15M frames (docs/results.md), whatever the envs
    assert cfg.effective_lr == pytest.approx(0.001) and cfg.optim.eps == pytest.approx(1e-5)
    paper = build_config("paac_atari_paper")
    assert paper.effective_lr == pytest.approx(0.0007 * paper.actors.num_envs) and paper.optim.name == "rmsprop_tf"


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match="Did you mean 'algo.gamma'"):
        set_override(Config(), "algo.gama=0.9")
    with pytest.raises(ConfigError, match="Did you mean 'algo.rollout_length'"):
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


@pytest.mark.parametrize(("recipe", "assignment", "fragment"), [
    # torch raised inside Adam's step: its first step, lr / (1 - 0.9), is no float32 from 3.4e37
    ("paac_classic", "optim.lr=1e38", r"optim.lr = 1e\+38 is invalid: the optimizers step in float32"),
    # EnvPool draws the no-ops from [0, noop_max - 1], an empty range at 0
    ("paac_atari", "env.noop_max=0", "env.noop_max = 0 is invalid: .* the fewest is 1"),
    # accepted, it reported the first working actor process as stalled (exit 1)
    ("paac_classic", "actors.heartbeat_timeout_s=1e-9", "a heartbeat every 0.5 s, so a timeout under 1 s"),
])
def test_values_the_libraries_cannot_run_are_refused_before_the_run(recipe, assignment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(recipe, {}, [assignment])
    build_config(recipe, {}, [assignment.replace("1e38", "1e37").replace("=0", "=1").replace("=1e-9", "=1")])


def test_a_choice_that_yaml_reads_as_a_boolean_is_the_choice_written(tmp_path):
    """YAML 1.1 reads `off` as false: `--set perf.amp=off` and `amp: off` in a file still mean
    the choice "off", and the saved config round-trips it."""
    assert build_config("ppo_atari", overrides=["perf.amp=off"]).perf.amp == "off"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("algo:\n  name: ppo\nperf:\n  amp: off\n")
    cfg = build_config(str(recipe))
    assert cfg.perf.amp == "off"
    save_yaml(cfg, tmp_path / "config.yaml")
    assert from_dict(load_yaml(tmp_path / "config.yaml")).perf.amp == "off"
    with pytest.raises(ConfigError, match=r"perf.amp = True is not a valid choice. \(YAML reads on/off.*Valid choices: auto, off, bf16"):
        set_override(Config(), "perf.amp=on")  # no choice reads as true
    # where a boolean is itself a choice, YAML's reading stands
    assert build_config("ppo_atari", overrides=["perf.channels_last=off", "perf.compile=no"]).perf.channels_last is False
    assert build_config("ppo_atari", overrides=["perf.compile=no"]).perf.compile is False


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


# ---------------------------------------------------------------------------- per-algorithm sections


@pytest.mark.parametrize("recipe, key, algorithm", [
    ("paac_classic", "algo.update_epochs=3", "paac"),  # PPO's key
    ("ppo_classic", "algo.epsilon_start=0.5", "ppo"),  # PQN's
    ("pqn_classic", "algo.tau=0.01", "pqn"),  # SAC's
    ("simbav2_pendulum", "algo.num_quantiles=10", "sac"),  # QR-DQN's
])
def test_a_key_of_another_algorithm_is_refused_naming_the_chosen_ones_keys(recipe, key, algorithm):
    with pytest.raises(ConfigError) as error:
        build_config(recipe, overrides=[key])
    message = str(error.value)
    assert f"'algo.{key.split('=')[0].split('.')[1]}' for algo.name = '{algorithm}'" in message
    assert "Valid keys: algo." in message and "algo.rollout_length" in message


def test_switching_algorithm_keeps_the_recipes_keys_and_checks_them_against_the_new_one():
    cfg = build_config("paac_atari", overrides=["algo.name=impala", "algo.rho_bar=0.9"])
    assert type(cfg.algo).__name__ == "IMPALAConfig"
    assert (cfg.algo.entropy_coef, cfg.algo.value_coef, cfg.algo.rho_bar) == (0.01, 0.5, 0.9)  # the recipe's PAAC keys kept (not the defaults 0.02, 0.25)
    with pytest.raises(ConfigError, match="'algo.entropy_coef' for algo.name = 'pqn'"):
        build_config("paac_atari", overrides=["algo.name=pqn"])  # PQN has no entropy bonus
    with pytest.raises(ConfigError, match="algo.name = 'dqn' is not an algorithm.*Valid choices: impala, paac, ppo, pqn, qrdqn, sac"):
        build_config("paac_classic", overrides=["algo.name=dqn"])


def test_a_flat_algo_section_of_an_older_run_is_migrated_with_a_notice(tmp_path):
    from parallel_rl.config import from_saved

    cfg = build_config("paac_classic")
    saved = cfg.to_dict()
    # before per-algorithm sections every run saved every algorithm's keys, e.g. PPO's and SAC's
    saved["algo"].update({"update_epochs": 4, "clip_coef": 0.1, "tau": 0.005, "num_quantiles": 200})
    migrated, notice = from_saved(saved)
    assert migrated == cfg
    assert notice and "dropped the 4 algo keys paac never used (clip_coef, num_quantiles, tau, update_epochs)" in notice
    assert from_saved(cfg.to_dict()) == (cfg, None)
    with pytest.raises(ConfigError, match="algo.entropy_coeff"):  # a key no algorithm has is still an error
        from_saved({**cfg.to_dict(), "algo": {**cfg.to_dict()["algo"], "entropy_coeff": 0.1}})


def test_config_reference_lists_each_algorithms_keys_with_their_owners():
    from parallel_rl.config import describe

    rows = {key: text for key, _, text in describe()}
    assert rows["algo.gamma"].startswith("Discount")  # every algorithm has it: no owner list
    assert rows["algo.rho_bar"].startswith("[impala] ")
    assert rows["algo.entropy_coef"].startswith("[impala, paac, ppo] ")
    assert rows["algo.utd_ratio"].startswith("[qrdqn, sac] ")


def test_step_counts_may_pass_32_bits_and_every_other_integer_may_not():
    """A long run counts agent steps past 2**31; every other integer reaches EnvPool, ALE or
    torch as a 32-bit one, where a larger value would fail deep inside them."""
    cfg = build_config("paac_classic", {"total_steps": 5 * 10**9}, ["optim.anneal_steps=5e9", "checkpoint.interval_steps=3e9"])
    assert cfg.total_steps == 5 * 10**9 and cfg.optim.anneal_steps == 5 * 10**9
    with pytest.raises(ConfigError, match=r"env.max_episode_steps = 2147483648 is out of range"):
        build_config("paac_classic", overrides=["env.max_episode_steps=2147483648"])
    with pytest.raises(ConfigError, match=r"total_steps = 9223372036854775808 is out of range"):
        build_config("paac_classic", {"total_steps": 2**63})


def test_an_unknown_key_lists_the_chosen_algorithms_own_keys():
    with pytest.raises(ConfigError) as refused:
        build_config("paac_classic", overrides=["algo.nested.x=1"])
    assert "algo.entropy_coef" in str(refused.value) and "algo.value_coef" in str(refused.value), str(refused.value)


def test_a_key_named_twice_in_a_config_file_is_refused_not_silently_overwritten(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("env:\n  id: CartPole-v1\nalgo:\n  name: paac\n  gamma: 0.9\n  gamma: 0.99\n")
    with pytest.raises(ConfigError, match=r"line 6.*the key 'gamma' appears twice"):
        build_config(str(recipe))
    recipe.write_text("env:\n  id: CartPole-v1\n? [a, b]\n: c\n")  # a key the duplicate check cannot hash (found by fuzzing)
    with pytest.raises(ConfigError, match="unhashable key"):
        build_config(str(recipe))
    recipe.write_text("env:\n  id: CartPole-v1\nalgo:\n  name: paac\n  gamma: 0.9\n")
    assert build_config(str(recipe)).algo.gamma == 0.9
