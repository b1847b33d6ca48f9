"""Environment factory: backends, preprocessing, episode counting across auto-reset."""

import numpy as np
import pytest

from parallel_rl.config import ConfigError, EnvConfig, build_config
from parallel_rl.envs import EpisodeTracker, make_env


def test_tracker_counts_across_next_step_autoreset():
    tracker = EpisodeTracker(2)
    F, T = False, True
    steps = [  # (reward, terminated, truncated) for env 0 and env 1
        ([1, 1], [F, F], [F, F]),
        ([1, 1], [T, F], [F, F]),  # env 0 ends: return 2, length 2
        ([0, 1], [F, F], [F, T]),  # env 0 auto-resets (not counted); env 1 truncated: 3, 3
        ([5, 0], [F, F], [F, F]),  # env 1 auto-resets
        ([5, 2], [T, T], [F, F]),  # env 0: 10 over 2 steps; env 1: 2 over 1 step
    ]
    autoresets = []
    for reward, term, trunc in steps:
        autoresets.append(tracker.update(np.array(reward, np.float32), np.array(term), np.array(trunc)).tolist())
    returns, lengths = tracker.pop()
    assert returns == [2.0, 3.0, 10.0, 2.0]
    assert lengths == [2, 3, 2, 1]
    assert autoresets == [[F, F], [F, F], [T, F], [F, T], [F, F]]


def test_cartpole_envpool_episodes_counted():
    env = make_env(EnvConfig(id="CartPole-v1", max_episode_steps=20), num_envs=4, seed=0, num_threads=1)
    assert env.spec.backend == "envpool" and env.spec.obs_shape == (4,) and env.spec.num_actions == 2
    env.reset()
    for _ in range(200):
        env.step(np.zeros(4, np.int64))
    returns, lengths = env.tracker.pop()
    env.close()
    assert returns and all(r == length for r, length in zip(returns, lengths, strict=True))  # CartPole: +1 per step
    assert max(lengths) <= 20


def test_gymnasium_fallback_same_interface():
    env = make_env(EnvConfig(id="CartPole-v1", backend="gymnasium", max_episode_steps=15), num_envs=3, seed=0)
    assert env.spec.backend == "gymnasium"
    obs = env.reset()
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    for _ in range(60):
        result = env.step(np.ones(3, np.int64))
    assert result.obs.shape == (3, 4)
    returns, lengths = env.tracker.pop()
    env.close()
    assert returns and max(lengths) <= 15 and returns == [float(n) for n in lengths]


def test_atari_paac_preprocessing():
    env = make_env(EnvConfig(id="Pong-v5", max_episode_steps=30), num_envs=2, seed=0, num_threads=1)
    assert env.spec.is_atari and env.spec.obs_shape == (4, 84, 84) and env.spec.obs_dtype == np.uint8
    config = env._env.config
    assert config["repeat_action_probability"] == 0.0 and config["noop_max"] == 30
    assert config["frame_skip"] == 4 and not config["reward_clip"] and not config["episodic_life"]
    env.close()


def test_dmc_dict_observations_are_flattened():
    env = make_env(EnvConfig(id="CheetahRun-v1"), num_envs=2, seed=0, num_threads=1)
    obs = env.reset()
    assert env.spec.obs_shape == (17,) and obs.shape == (2, 17) and obs.dtype == np.float32
    assert not env.spec.discrete
    env.close()


def test_envpool_blackjack_trains_on_its_integer_observations(tmp_path):
    """Its observations are an int32 Box; taken as they came, the first forward pass failed
    (int matrix times float weights) after every check had passed."""
    from parallel_rl.runtime.runner import Runner

    cfg = build_config("paac_classic", {"env.id": "Blackjack-v1", "total_steps": 400}, ["logging.console=false"])
    assert Runner(cfg, tmp_path / "run").run().final_step >= 400


def test_unknown_env_names_nearest():
    with pytest.raises(ConfigError, match="Pong-v5"):
        make_env(EnvConfig(id="Pongg-v5"), 1, 0)


def test_observations_of_every_space_become_one_vector_per_env():
    import gymnasium as gym

    from parallel_rl.envs import ObservationFlattener

    one_hot = ObservationFlattener(gym.spaces.Discrete(4, start=1), "toy")
    assert one_hot.shape == (4,) and one_hot.dtype == np.float32
    np.testing.assert_array_equal(one_hot(np.array([1, 4])), [[1, 0, 0, 0], [0, 0, 0, 1]])

    blackjack = gym.spaces.Tuple((gym.spaces.Discrete(32), gym.spaces.Discrete(11), gym.spaces.Discrete(2)))
    flat = ObservationFlattener(blackjack, "Blackjack-v1")
    assert flat.shape == (45,)
    out = flat((np.array([15, 31]), np.array([10, 0]), np.array([0, 1])))
    assert out.shape == (2, 45) and out.sum(axis=1).tolist() == [3.0, 3.0]
    assert out[0, 15] == out[0, 32 + 10] == out[0, 43] == 1.0  # the layout of gymnasium.spaces.flatten
    np.testing.assert_array_equal(out[1], gym.spaces.flatten(blackjack, (31, 0, 1)))

    mixed = gym.spaces.Dict({"b": gym.spaces.Discrete(2), "a": gym.spaces.Box(-1, 1, (2,), np.float64)})
    flat = ObservationFlattener(mixed, "toy")
    assert flat.shape == (4,) and flat.dtype == np.float32
    np.testing.assert_allclose(flat({"a": np.array([[0.5, -0.5]]), "b": np.array([1])}), [[0.5, -0.5, 0, 1]])

    frames = ObservationFlattener(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), "Pong-v5")
    assert frames.shape == (4, 84, 84) and frames.dtype == np.uint8

    # integer vectors (EnvPool's Blackjack-v1 gives its counts as an int32 Box) are numbers to an MLP
    counts = ObservationFlattener(gym.spaces.Box(0, 32, (3,), np.int32), "Blackjack-v1")
    assert counts.shape == (3,) and counts.dtype == np.float32
    assert counts(np.array([[15, 10, 0]], np.int32)).dtype == np.float32

    with pytest.raises(ConfigError, match="Text"):
        ObservationFlattener(gym.spaces.Text(5), "toy")


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_episodic_life_ends_learning_episodes_at_each_life_but_reports_whole_games(backend):
    """Breakout has 5 lives: with episodic life every life lost terminates (a learning
    boundary), while the reported episodes are the games, each scoring all its lives.
    EnvPool spends a reset step after each life lost; ALE plays straight on."""
    env = make_env(EnvConfig(id="Breakout-v5", backend=backend, episodic_life=True, fire_reset=True), num_envs=2, seed=3)
    rng = np.random.default_rng(0)
    env.reset()
    lives_lost = np.zeros(2, int)
    game_return, game_length = np.zeros(2), np.zeros(2, int)
    expected_returns, expected_lengths, reported_returns, reported_lengths = [], [], [], []
    for _ in range(4000):
        step = env.step(rng.integers(env.spec.num_actions, size=2))
        live = ~step.autoreset
        game_return += step.reward * live
        game_length += live
        for i in np.flatnonzero(step.terminated & live):
            lives_lost[i] += 1
            if lives_lost[i] == 5:  # the fifth life lost ends the game
                expected_returns.append(game_return[i])
                expected_lengths.append(game_length[i])
                lives_lost[i], game_return[i], game_length[i] = 0, 0.0, 0
        returns, lengths = env.tracker.pop()
        reported_returns += returns
        reported_lengths += lengths
    env.close()
    assert len(expected_returns) >= 4  # several games, 5 learning episodes each
    assert sorted(reported_returns) == sorted(expected_returns)
    assert sorted(reported_lengths) == sorted(expected_lengths)
    assert sum(expected_returns) > 0  # the scores are not trivially zero


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_a_life_lost_on_the_episode_limits_step_ends_the_game(backend):
    """ALE reports a life lost on the step that reaches the episode limit as terminated, not
    truncated, and resets the game on the next step: taken for a life lost within the game,
    the game was never reported and the next game's score was added to it. With a limit of
    21 steps random Breakout loses its first life near the limit in many games."""
    limit = 21
    env = make_env(EnvConfig(id="Breakout-v5", backend=backend, episodic_life=True, fire_reset=True,
                             max_episode_steps=limit), num_envs=32, seed=5)
    rng = np.random.default_rng(0)
    env.reset()
    lengths, life_lost_at_the_limit = [], 0
    for _ in range(250):
        step = env.step(rng.integers(env.spec.num_actions, size=32))
        game_done = env.tracker.game_done
        life_lost_at_the_limit += int(np.sum(game_done & step.terminated & (env.tracker.lengths == limit)))
        lengths += env.tracker.pop()[1]
    env.close()
    assert len(lengths) >= 32 * 250 // (limit + 1) - 32 and max(lengths) == limit
    if backend == "ale":  # the case arose (EnvPool reports such a step as truncated)
        assert life_lost_at_the_limit >= 5


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_after_a_life_lost_the_ball_is_served_and_the_serve_is_no_transition(backend):
    """With episodic life and FIRE reset, EnvPool spends the step after a life lost resetting
    and presses FIRE: an agent that never presses FIRE still plays Breakout to its end. ALE
    played on, its ball waiting for a serve that never came until the time limit. The step
    after each life lost is a reset step on both: no transition, the learner's mask."""
    env = make_env(EnvConfig(id="Breakout-v5", backend=backend, episodic_life=True, fire_reset=True),
                   num_envs=4, seed=2)
    env.reset()
    lives_lost = games = 0
    after_a_life_lost = np.zeros(4, bool)
    for _ in range(600):
        step = env.step(np.zeros(4, np.int64))  # NOOP alone
        assert np.array_equal(step.autoreset[after_a_life_lost], np.ones(after_a_life_lost.sum(), bool))
        life_lost = step.terminated & ~step.autoreset & ~env.tracker.game_done
        lives_lost += int(life_lost.sum())
        games += int(env.tracker.game_done.sum())
        after_a_life_lost = life_lost
    env.close()
    assert games >= 4 and lives_lost >= 4 * games  # each game played through its 5 lives


@pytest.mark.parametrize("env_id", ["Pong-v5", "Breakout-v5"])
def test_ale_backend_has_the_spaces_of_envpool(env_id):
    specs = [make_env(EnvConfig(id=env_id, backend=backend), num_envs=2, seed=0).spec for backend in ("envpool", "ale")]
    envpool_spec, ale_spec = specs
    assert (ale_spec.backend, envpool_spec.backend) == ("ale", "envpool")
    assert ale_spec.obs_shape == envpool_spec.obs_shape == (4, 84, 84) and ale_spec.obs_dtype == envpool_spec.obs_dtype == np.uint8
    assert ale_spec.action_space == envpool_spec.action_space  # the minimal action set of the game
    assert ale_spec.max_episode_steps == envpool_spec.max_episode_steps == 27_000 and ale_spec.is_atari



@pytest.mark.parametrize("env_id, fire_reset, frames", [("Breakout-v5", True, {1, 2, 3}), ("Pong-v5", False, {0, 1, 2, 3})])
def test_ale_backend_starts_games_after_as_many_no_ops_as_envpool(env_id, fire_reset, frames):
    """EnvPool starts a game after 1 to noop_max frames (no-ops, the last of them FIRE where
    the game has it and fire_reset is on). ALE's vector env, given our settings, plays the same
    1 to noop_max with FIRE, and 0 to noop_max no-ops without it."""
    from ale_py.vector_env import AtariVectorEnv

    from parallel_rl.envs import _ale_kwargs, ale_games

    cfg = EnvConfig(id=env_id, backend="ale", noop_max=3, fire_reset=fire_reset)
    env = AtariVectorEnv(ale_games()[env_id], 64, num_threads=1, **_ale_kwargs(cfg))
    try:
        _, info = env.reset(seed=0)
        assert set(np.asarray(info["episode_frame_number"]).tolist()) == frames
    finally:
        env.close()

def random_play(env_id: str, backend: str, steps: int, episodic_life: bool) -> tuple[np.ndarray, np.ndarray, int]:
    env = make_env(EnvConfig(id=env_id, backend=backend, episodic_life=episodic_life), num_envs=16, seed=1, num_threads=2)
    rng = np.random.default_rng(0)
    env.reset()
    terminations = 0
    for _ in range(steps):
        step = env.step(rng.integers(env.spec.num_actions, size=16))
        terminations += int((step.terminated & ~step.autoreset).sum())
    returns, lengths = env.tracker.pop()
    env.close()
    return np.array(returns), np.array(lengths), terminations


def agree(a: np.ndarray, b: np.ndarray) -> bool:
    """The two means are within 4 standard errors of their difference."""
    error = np.sqrt(a.var() / len(a) + b.var() / len(b))
    return abs(a.mean() - b.mean()) <= 4 * error


@pytest.mark.slow  # about a minute of Atari stepping
@pytest.mark.parametrize("env_id, steps, episodic_life", [("Pong-v5", 3000, False), ("Breakout-v5", 4000, True)])
def test_ale_and_envpool_play_the_same_game(env_id, steps, episodic_life):
    """A random policy scores the same and lives as long on both backends: same frame skip,
    max-pooling, no-ops, FIRE at reset and episode limit (observations are not compared
    bit for bit: the two resize the screen with different filters)."""
    played = {backend: random_play(env_id, backend, steps, episodic_life) for backend in ("envpool", "ale")}
    (pool_returns, pool_lengths, pool_terms), (ale_returns, ale_lengths, ale_terms) = played["envpool"], played["ale"]
    assert min(len(pool_returns), len(ale_returns)) >= 40  # whole games on both
    assert agree(pool_returns, ale_returns), (pool_returns.mean(), ale_returns.mean())
    assert agree(pool_lengths, ale_lengths), (pool_lengths.mean(), ale_lengths.mean())
    if episodic_life:  # five learning episodes per game on both
        assert pool_terms / len(pool_returns) == pytest.approx(5, abs=0.5) and ale_terms / len(ale_returns) == pytest.approx(5, abs=0.5)


def test_a_run_registers_only_the_envpool_families_it_needs():
    """`import envpool` registers every family (jumanji's imports matplotlib: seconds of each
    process's start-up); a CartPole run registers classic control alone, and listing every
    id still sees them all."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from parallel_rl.config import EnvConfig\n"
        "from parallel_rl.envs import choose_backend, envpool_ids, make_env\n"
        "assert choose_backend(EnvConfig(id='CartPole-v1')) == 'envpool'\n"
        "env = make_env(EnvConfig(id='CartPole-v1'), num_envs=2, seed=0, num_threads=1)\n"
        "assert env.reset().shape == (2, 4)\n"
        "env.close()\n"
        "assert 'envpool.classic_control.registration' in sys.modules\n"
        "assert 'envpool.atari.registration' not in sys.modules and 'matplotlib' not in sys.modules\n"
        "ids = envpool_ids()\n"
        "assert {'Pong-v5', 'HalfCheetah-v5', 'CartPole-v1'} <= set(ids) and len(ids) > 1000, len(ids)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def _repeated_by_hand(cfg: EnvConfig, seed: int, actions: np.ndarray, times: int) -> list[tuple]:
    """One env (seed ``seed``) driven by the ActionRepeat wrapper's rule on single steps of the
    same backend: each decision steps up to ``times`` times, rewards summed, stopping where
    the episode ends; the decision after an end is the reset step alone."""
    env = make_env(cfg, 1, seed, 1)
    env.reset()
    decisions, ended = [], False
    for action in actions:
        if ended:
            step = env.step(action[None])
            decisions.append((step.obs[0], 0.0, False, False, True))
            ended = False
            continue
        total = 0.0
        for _ in range(times):
            step = env.step(action[None])
            total += float(step.reward[0])
            if step.terminated[0] or step.truncated[0]:
                break
        ended = bool(step.terminated[0] or step.truncated[0])
        decisions.append((step.obs[0], total, bool(step.terminated[0]), bool(step.truncated[0]), False))
    env.close()
    return decisions


@pytest.mark.parametrize("backend", ["envpool", "gymnasium"])
@pytest.mark.parametrize(("env_id", "times", "decisions"), [("CartPole-v1", 3, 120), ("Pendulum-v1", 2, 230)])
def test_action_repeat_sums_rewards_and_stops_at_an_episodes_end(backend, env_id, times, decisions):
    """`env.action_repeat` steps every env of the pool as the wrapper steps one env alone:
    CartPole's episodes end part-way through a repeat (the env steps no further), Pendulum's
    200-step limit becomes 100 decisions, and an episode's length counts decisions."""
    cfg = EnvConfig(id=env_id, backend=backend)
    envs, seed = 3, 5
    repeated = make_env(EnvConfig(id=env_id, backend=backend, action_repeat=times), envs, seed, 1)
    rng = np.random.default_rng(0)
    if repeated.spec.discrete:
        actions = rng.integers(0, repeated.spec.num_actions, (decisions, envs))
    else:
        actions = rng.uniform(-1, 1, (decisions, envs, *repeated.spec.action_space.shape)).astype(np.float32)
    repeated.reset()
    got = []
    for t in range(decisions):
        step = repeated.step(actions[t])
        got.append([(step.obs[i], step.reward[i], step.terminated[i], step.truncated[i], step.autoreset[i]) for i in range(envs)])
    _, lengths = repeated.tracker.pop()
    repeated.close()
    assert repeated.spec.max_episode_steps == -(-(500 if env_id == "CartPole-v1" else 200) // times)
    for i in range(envs):
        expected = _repeated_by_hand(cfg, seed + i, actions[:, i], times)
        for t, (obs, reward, terminated, truncated, autoreset) in enumerate(expected):
            g_obs, g_reward, g_terminated, g_truncated, g_autoreset = got[t][i]
            assert (g_terminated, g_truncated, g_autoreset) == (terminated, truncated, autoreset), (i, t)
            assert np.allclose(g_obs, obs, rtol=1e-5, atol=1e-6) and g_reward == pytest.approx(reward, rel=1e-6, abs=1e-6), (i, t)
    if env_id == "Pendulum-v1":
        assert lengths and set(lengths) == {100}
    else:  # some episode ended part-way through a repeat: its env steps counted not a multiple of 3
        assert lengths and min(lengths) < 10


def test_dmc_action_repeat_two_makes_a_thousand_step_episode_five_hundred_decisions():
    env = make_env(EnvConfig(id="CheetahRun-v1", action_repeat=2), 2, 1, 1)
    env.reset()
    zeros = np.zeros((2, *env.spec.action_space.shape), np.float32)
    ends = [t for t in range(1, 502) if env.step(zeros).truncated.all()]
    env.close()
    assert env.spec.max_episode_steps == 500 and ends == [500]


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_action_repeat_on_atari_is_refused_for_frame_skip(backend):
    with pytest.raises(ConfigError, match=r"env.action_repeat = 2 is for non-Atari tasks.*env.frame_skip = 4.*--set env.action_repeat=1"):
        make_env(EnvConfig(id="Pong-v5", backend=backend, action_repeat=2), 1, 0, 1)


def test_action_repeat_below_one_is_refused_naming_the_value():
    from parallel_rl.config import build_config

    with pytest.raises(ConfigError, match=r"env.action_repeat = 0 is invalid: it must be a positive integer"):
        build_config("simbav2_dmc", {"env.action_repeat": 0})


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_an_observation_recv_handed_back_stays_as_it_was_while_the_next_steps_run(backend):
    """The collector writes a group's observation into the rollout after sending the group's
    next actions, so that the group steps during the copy (runtime/rollout.py). That needs
    ``recv`` to hand back arrays of the caller's own: the steps after it must not write into
    them."""
    env = make_env(EnvConfig(id="Pong-v5", backend=backend), num_envs=4, seed=0, num_threads=1)
    rng = np.random.default_rng(0)
    env.reset()
    held = env.step(rng.integers(env.spec.num_actions, size=4)).obs
    as_received = held.copy()
    for _ in range(40):
        latest = env.step(rng.integers(env.spec.num_actions, size=4)).obs
    env.close()
    assert not np.array_equal(latest, as_received)  # the frames moved on
    assert np.array_equal(held, as_received)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getscheduler"), reason="scheduling policies are Linux's")
@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_env_worker_threads_do_not_preempt_the_thread_that_wakes_them(backend):
    import os
    import threading

    from parallel_rl.envs import worker_threads_never_preempt_on_wakeup

    def policies() -> dict[int, int]:
        found = {}
        for tid in map(int, os.listdir("/proc/self/task")):
            try:
                found[tid] = os.sched_getscheduler(tid)
            except ProcessLookupError:  # ended since listed
                pass
        return found

    if os.sched_getscheduler(0) == os.SCHED_BATCH:
        pytest.skip("this process already runs under SCHED_BATCH: every thread would have it")
    before = policies()
    env = make_env(EnvConfig(id="Pong-v5", backend=backend), 4, 0, 2)
    try:
        now = policies()
        started = {tid: policy for tid, policy in now.items() if tid not in before}
        assert len(started) >= 2 and set(started.values()) == {os.SCHED_BATCH}, started  # the 2 workers at least
        assert all(now[tid] == policy for tid, policy in before.items() if tid in now)
        env.step(np.zeros(4, np.int64))  # they still step
    finally:
        env.close()
    release = threading.Event()
    outside = threading.Thread(target=release.wait)
    with worker_threads_never_preempt_on_wakeup():
        inside = threading.Thread(target=release.wait)
        inside.start()
    outside.start()
    try:
        assert os.sched_getscheduler(inside.native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(outside.native_id) == os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        release.set()
        inside.join()
        outside.join()


@pytest.mark.parametrize(("env_id", "backend", "words"), [
    # gymnasium's raw Atari entries: named, with the id that runs the game preprocessed
    ("ALE/Pong-v5", "auto", ["gymnasium's raw Atari environment", "--env Pong-v5"]),
    ("PongNoFrameskip-v4", "auto", ["--env Pong-v5"]),
    ("ALE/SpaceInvaders-v5", "gymnasium", ["--env SpaceInvaders-v5"]),
    # a backend that cannot run an id another one can: the backend is at fault, not the id
    ("Pong-v5", "gymnasium", ["env.backend = 'gymnasium'", "is an EnvPool task", "env.backend=auto"]),
])
def test_an_id_the_chosen_backend_cannot_run_is_refused_naming_what_can(env_id, backend, words):
    from parallel_rl.envs import choose_backend, gymnasium_ids

    with pytest.raises(ConfigError) as refused:
        choose_backend(EnvConfig(id=env_id, backend=backend))
    assert all(word in str(refused.value) for word in words), str(refused.value)
    assert "Unknown environment" not in str(refused.value)
    assert "ALE/Pong-v5" not in gymnasium_ids()  # nor listed by `parallel-rl envs`
