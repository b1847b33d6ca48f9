"""Data-parallel training on torch.distributed (gloo, CPU): replicas stay identical, one run
directory, steps counted over ranks, bad configs refused before any rank starts."""

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from parallel_rl import checkpoint as ckpt
from parallel_rl import distributed
from parallel_rl.algos import make_algorithm
from parallel_rl.config import build_config
from parallel_rl.runtime.runner import Runner

_RENDEZVOUS_STORES = []  # held for the session: their ports stay taken until the ranks have met


def free_port() -> int:
    """The port of a rendezvous store this test process keeps open, as torchrun's agent does:
    a port merely found free and closed again could be taken (by another worker's gloo
    connections) before rank 0 bound it, seconds later."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    _RENDEZVOUS_STORES.append(store)
    return store.port


def as_rank(rank: int, size: int, port: int) -> None:
    # every rank a client of the test's store (TORCHELASTIC_USE_AGENT_STORE), none binding the port
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")


def train_rank(rank: int, size: int, port: int, out: str, recipe: str, updates: int, overrides: tuple[str, ...] = ()) -> None:
    """One rank of a data-parallel run; writes its final weights to ``out/rank<r>.pt``."""
    as_rank(rank, size, port)
    torch.set_num_threads(1)
    cfg = build_config(recipe, {"actors.num_envs": 8, "actors.procs": 0, "seed": 3}, ["logging.console=false", *overrides])
    cfg = replace(cfg, total_steps=cfg.batch_size * updates)
    built = []

    def keep(spec, cfg, device):
        built.append(make_algorithm(spec, cfg, device))
        return built[0]

    summary = Runner(cfg, Path(out) / "run", algorithm=keep).run()
    torch.save({"policy": built[0].policy().state_dict(), "updates": summary.updates, "step": summary.final_step,
                "gradient_steps": getattr(built[0], "gradient_steps", None)}, Path(out) / f"rank{rank}.pt")
    os._exit(0)  # as the CLI's ranks end (cli.exit_process): gloo's threads can abort an interpreter's teardown


@pytest.mark.parametrize(("recipe", "overrides"), [
    ("paac_classic", ()),
    ("ppo_classic", ()),
    ("ppo_classic", ("optim.name=kron",)),  # an optimizer that draws random numbers as it steps
], ids=["paac", "ppo", "ppo-kron"])
def test_two_ranks_take_the_same_steps_and_keep_identical_weights(tmp_path, recipe, overrides):
    """20 updates on 2 ranks x 4 envs: each rank stepped different envs (seeds), yet the
    averaged gradients keep the replicas equal to the last bit; the step counter counts both
    ranks' agent steps, and only rank 0 wrote the run directory."""
    mp.start_processes(train_rank, args=(2, free_port(), str(tmp_path), recipe, 20, overrides), nprocs=2, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["updates"] == rank1["updates"] == 20 and rank0["step"] == rank1["step"]
    fresh = make_algorithm_weights(recipe)
    for key, value in rank0["policy"].items():
        assert torch.equal(value, rank1["policy"][key]), key
    assert any(not torch.equal(rank0["policy"][k], fresh[k]) for k in fresh)  # they learned, identically
    saved = ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))
    assert saved["step"] == rank0["step"] and saved["updates"] == 20


# small warm-ups and minibatches, so that 20 rollouts' worth of steps reach many gradient steps
REPLAY_OVERRIDES = {
    "simbav2_pendulum": ("algo.warmup_steps=32", "replay.minibatch_size=16"),
    "qrdqn_classic": ("algo.warmup_steps=64", "replay.minibatch_size=16", "algo.target_period=40"),
}


@pytest.mark.parametrize("recipe", sorted(REPLAY_OVERRIDES))
def test_replay_based_ranks_step_in_lockstep_with_pooled_statistics(tmp_path, recipe):
    """SAC (SimbaV2: observation statistics, reward scaling) and QR-DQN on 2 ranks, each with
    its own replay: the ranks take the same gradient steps and end with identical weights and
    acting state, the observation statistics being those of both ranks' transitions."""
    mp.start_processes(train_rank, args=(2, free_port(), str(tmp_path), recipe, 20, REPLAY_OVERRIDES[recipe]), nprocs=2,
                       start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["updates"] == rank1["updates"] and rank0["step"] == rank1["step"]
    assert rank0["gradient_steps"] == rank1["gradient_steps"] > 50
    for key, value in rank0["policy"].items():
        assert torch.equal(value, rank1["policy"][key]), key
    if recipe == "simbav2_pendulum":  # every transition of both ranks counted once
        assert float(rank0["policy"]["obs_norm.count"]) == pytest.approx(rank0["step"], abs=1e-3)


def make_algorithm_weights(recipe: str) -> dict:
    from parallel_rl.envs import env_spec

    cfg = build_config(recipe, {"actors.num_envs": 8, "seed": 3})
    torch.manual_seed(cfg.seed)
    return make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu")).policy().state_dict()


def first_update_rank(rank: int, size: int, port: int, out: str, num_envs: int) -> None:
    """One rank of a PAAC run of one update over ``num_envs`` envs of all ranks; writes the
    batch it learned from, its losses and the updated weights to ``out/<size>ranks<r>.pt``."""
    as_rank(rank, size, port)
    torch.set_num_threads(1)
    cfg = build_config("paac_classic", {"actors.num_envs": num_envs, "actors.procs": 0, "seed": 3}, ["logging.console=false"])
    cfg = replace(cfg, total_steps=cfg.batch_size)
    seen = {}

    def keep(spec, cfg, device):
        algo = make_algorithm(spec, cfg, device)
        learn = algo.update

        def update(batch):
            result = learn(batch)
            seen.update(obs=batch.obs.clone(), actions=batch.actions.clone(),
                        losses={tag: float(v) for tag, v in result.metrics.items() if tag.startswith("losses/")})
            return result

        algo.update = update
        seen["algo"] = algo
        return algo

    Runner(cfg, Path(out) / f"run{size}", algorithm=keep).run()
    torch.save({"obs": seen["obs"], "actions": seen["actions"], "losses": seen["losses"],
                "policy": seen["algo"].policy().state_dict()}, Path(out) / f"{size}ranks{rank}.pt")
    os._exit(0)


def test_two_ranks_of_8_envs_take_the_first_update_of_one_rank_of_16(tmp_path):
    """The same 16 envs (env i has seed 3 + i and draws its actions from its own stream,
    whichever rank steps it) give the same batch, and the averaged gradient of 2 x 8 the same
    step as the gradient of 16: equal weights after the update, losses the mean of the ranks'."""
    mp.start_processes(first_update_rank, args=(1, free_port(), str(tmp_path), 16), nprocs=1, start_method="spawn")
    mp.start_processes(first_update_rank, args=(2, free_port(), str(tmp_path), 16), nprocs=2, start_method="spawn")
    whole = torch.load(tmp_path / "1ranks0.pt", weights_only=True)
    halves = [torch.load(tmp_path / f"2ranks{r}.pt", weights_only=True) for r in (0, 1)]
    assert whole["obs"].shape[1] == 16 and halves[0]["obs"].shape[1] == 8
    assert torch.equal(torch.cat([h["obs"] for h in halves], dim=1), whole["obs"])
    assert torch.equal(torch.cat([h["actions"] for h in halves], dim=1), whole["actions"])
    for tag, value in whole["losses"].items():
        assert sum(h["losses"][tag] for h in halves) / 2 == pytest.approx(value, rel=1e-5, abs=1e-6), tag
    fresh = make_algorithm_weights("paac_classic")
    for key, value in whole["policy"].items():
        assert torch.equal(halves[0]["policy"][key], halves[1]["policy"][key]), key
        assert torch.allclose(halves[0]["policy"][key], value, rtol=1e-5, atol=1e-6), key
    assert any(not torch.equal(whole["policy"][k], fresh[k]) for k in fresh)  # the update moved the weights


def diverge_rank(rank: int, size: int, port: int, out: str) -> None:
    as_rank(rank, size, port)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    distributed.init(build_config("paac_classic", {"actors.num_envs": 8}), torch.device("cpu"))
    weights = {"w": torch.ones(3) + (rank == 1) * 1e-6}
    try:
        distributed.check_replicas(weights)
        outcome = "passed"
    except distributed.ReplicaDivergence as exc:
        outcome = str(exc)
    Path(out, f"rank{rank}.txt").write_text(outcome)
    distributed.shutdown()
    os._exit(0)


def averaging_rank(rank: int, size: int, port: int, out: str) -> None:
    """One fused-Adam step of a channels-last conv on the gradient averaged over the ranks."""
    as_rank(rank, size, port)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    distributed.init(build_config("qrdqn_atari", {"actors.num_envs": 8}), torch.device("cpu"))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    torch.manual_seed(1 + rank)
    conv(torch.randn(2, 4, 6, 6)).pow(2).mean().backward()
    own_gradient = conv.weight.grad.clone()
    distributed.average_gradients(conv.parameters())
    averaged = conv.weight.grad.clone()
    torch.optim.Adam(conv.parameters(), lr=0.1, fused=True).step()
    torch.save({"own": own_gradient, "averaged": averaged, "stride": conv.weight.grad.stride(),
                "weight": conv.weight.detach().clone()}, Path(out, f"rank{rank}.pt"))
    distributed.shutdown()
    os._exit(0)


def test_averaged_gradients_keep_a_channels_last_weights_layout_so_fused_adam_steps_it_right(tmp_path):
    """The mean over the ranks used to come back as a view of the flat buffer, in the default
    layout: torch's fused CPU Adam walks a weight and its gradient by one flat index, so a
    channels-last conv (``perf.channels_last``) took another element's gradient, on every rank
    alike, with nothing to report it."""
    mp.start_processes(averaging_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    mean = (ranks[0]["own"] + ranks[1]["own"]) / 2
    torch.manual_seed(0)
    expected = torch.nn.Conv2d(4, 8, 3)
    expected.weight.grad = mean
    expected.bias.grad = torch.zeros_like(expected.bias)  # only the weight is compared
    torch.optim.Adam([expected.weight], lr=0.1).step()
    for rank in ranks:
        torch.testing.assert_close(rank["averaged"], mean)
        assert rank["stride"] == expected.weight.to(memory_format=torch.channels_last).stride()
        torch.testing.assert_close(rank["weight"], expected.weight.detach())


def test_replica_check_names_the_rank_whose_weights_differ(tmp_path):
    mp.start_processes(diverge_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        assert "rank(s) [1]" in (tmp_path / f"rank{rank}.txt").read_text()


def signalled_rank(rank: int, size: int, port: int, out: str, recipe: str, overrides: tuple[str, ...], signal_at: int | str,
                   hearer: int = 0) -> None:
    """One rank of a run in which only rank ``hearer`` hears SIGTERM: while its algorithm is built
    (``signal_at`` 0), as it first acts ("act": after the ranks agreed to start, before the first
    update) or inside its ``signal_at``-th update. Writes how the rank ended."""
    import signal
    import time

    as_rank(rank, size, port)
    distributed.TIMEOUT_S = 20.0  # a rank left waiting in a collective shows in seconds, not minutes
    torch.set_num_threads(1)
    cfg = build_config(recipe, {"actors.num_envs": 8, "actors.procs": 0, "seed": 3}, ["logging.console=false", *overrides])
    cfg = replace(cfg, total_steps=cfg.batch_size * 60)

    def make(spec, cfg, device):
        algo = make_algorithm(spec, cfg, device)
        if rank == hearer and signal_at == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        update, calls = algo.update, []

        def counted(batch):
            calls.append(1)
            if rank == hearer and len(calls) == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return update(batch)

        algo.update = counted
        policy = algo.policy()
        act, acts = policy.act_and_value, []

        def acting(obs):
            acts.append(1)
            if rank == hearer and signal_at == "act" and len(acts) == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return act(obs)

        policy.act_and_value = acting
        return algo

    began = time.monotonic()
    try:
        summary = Runner(cfg, Path(out) / "run", algorithm=make).run()
        outcome = {"updates": summary.updates, "signal": summary.stop_signal}
    except BaseException as exc:  # the failure is what the test reports
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    outcome["seconds"] = time.monotonic() - began
    torch.save(outcome, Path(out) / f"rank{rank}.pt")
    os._exit(0)


@pytest.mark.parametrize(("recipe", "overrides", "signal_at", "hearer"), [
    ("paac_classic", (), 0, 0),  # during start-up, before the batch source is built
    ("paac_classic", (), 3, 0),  # between two updates
    # inside a delivery that QR-DQN learns from in two pieces
    ("qrdqn_classic", ("algo.warmup_steps=64", "replay.minibatch_size=16"), 21, 0),
    # rank 1 alone, after the ranks agreed to start, before the first update: rank 0 must still
    # write the checkpoint of the initial state that a one-rank run writes
    ("paac_classic", (), "act", 1),
], ids=["start-up", "between-updates", "mid-delivery", "other-rank-before-the-first-update"])
def test_a_signal_heard_by_one_rank_stops_every_rank_after_the_same_update(tmp_path, recipe, overrides, signal_at, hearer):
    """Every rank stops after the same update, each with the signal one of them heard (so each
    exits as that signal asks, and the job with it), and rank 0 writes the final checkpoint."""
    mp.start_processes(signalled_rank, args=(2, free_port(), str(tmp_path), recipe, overrides, signal_at, hearer), nprocs=2,
                       start_method="spawn")
    ends = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert not [end["error"] for end in ends if "error" in end]
    assert ends[0]["signal"] == ends[1]["signal"] == signal.SIGTERM
    assert ends[0]["updates"] == ends[1]["updates"] < 60
    final = ckpt.latest(tmp_path / "run" / "checkpoints")  # the stop's final checkpoint, by rank 0
    assert final is not None and ckpt.load(final)["updates"] == ends[0]["updates"]


def test_ppo_ranks_agree_on_the_minibatches_when_one_has_fewer_transitions_than_minibatches(tmp_path):
    """One env per rank, 4 steps a rollout, 4 minibatches: an auto-reset step leaves a rank
    fewer than 4 transitions to learn from, and the ranks must still take the same steps."""
    overrides = ("algo.rollout_length=4", "algo.num_minibatches=4", "algo.update_epochs=1")
    mp.start_processes(signalled_rank, args=(2, free_port(), str(tmp_path), "ppo_classic", overrides + ("actors.num_envs=2",), -1),
                       nprocs=2, start_method="spawn")
    ends = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert not [end["error"] for end in ends if "error" in end]
    assert ends[0]["updates"] == ends[1]["updates"] == 60


def claiming_rank(rank: int, size: int, port: int, out: str) -> None:
    """One rank of a run whose directory another process took after the launcher's check."""
    import time

    from parallel_rl.config import ConfigError

    as_rank(rank, size, port)
    distributed.TIMEOUT_S = 20.0  # a rank left waiting shows in seconds, not minutes
    torch.set_num_threads(1)
    cfg = build_config("paac_classic", {"actors.num_envs": 8, "actors.procs": 0}, ["logging.console=false"])
    began = time.monotonic()
    try:
        Runner(cfg, Path(out) / "run").run()
        outcome = {"error": None}
    except Exception as exc:  # the failure is what the test reports
        outcome = {"error": f"{type(exc).__name__}: {exc}", "refusal": isinstance(exc, ConfigError)}
    outcome["seconds"] = time.monotonic() - began
    torch.save(outcome, Path(out) / f"rank{rank}.pt")
    os._exit(0)


def test_a_run_directory_taken_between_the_check_and_the_start_is_refused_on_every_rank(tmp_path):
    """Two launches of one run directory can both pass the launcher's check; the rank 0 that
    loses the lock refuses (exit 2), and its other ranks must refuse with it rather than fail
    in their next collective with a gloo error (exit 1)."""
    (tmp_path / "run").mkdir()
    held = ckpt.lock_run_directory(tmp_path / "run")  # the launch that won
    try:
        mp.start_processes(claiming_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    finally:
        held.close()
    ends = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert "in use by another parallel-rl process" in ends[0]["error"], ends
    assert ends[0]["refusal"] and ends[1]["refusal"], ends
    assert max(end["seconds"] for end in ends) < 15, ends
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [ckpt.RUN_LOCK]


@pytest.mark.parametrize(("exit_codes", "expected", "said"), [
    ({0: 2, 1: 2}, 2, ""),  # refused on every rank together (rank 0 said why)
    ({0: 2}, 2, ""),  # torchrun reports the first failure alone
    ({0: 130, 1: 130}, 130, ""),  # one Ctrl-C, agreed by every rank
    ({0: 2, 1: 1}, 1, "rank 0 exited with code 2, rank 1 exited with code 1"),
    ({0: 1, 1: -9}, 1, "rank 1 was killed by SIGKILL"),
])
def test_a_jobs_exit_code_is_the_one_its_ranks_agreed_on(capsys, exit_codes, expected, said):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from parallel_rl.cli import job_exit_code

    failures = {rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="<none>")
                for rank, code in exit_codes.items()}
    assert job_exit_code(failures) == expected
    err = capsys.readouterr().err
    assert said in err and ("the job failed" in err) == bool(said), err


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "parallel_rl", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "words"), [
    (["--actors", "15"], ["actors.num_envs = 15", "2 ranks", "multiple of 2"]),
    (["--config", "simbav2_pendulum", "--actors", "8", "--set", "replay.save_with_checkpoint=true"],
     ["replay.save_with_checkpoint = true", "2 ranks", "replay.save_with_checkpoint=false"]),
    (["--nproc-per-node", "0"], ["--nproc-per-node 0"]),
    # each rank's share: 2 envs cannot feed 4 actor processes (the whole job's 4 could)
    (["--actors", "4", "--actor-procs", "4"], ["each rank runs 2 of the actors.num_envs = 4", "actors.procs = 4 exceeds"]),
    (["--actors", "4", "--actor-procs", "4", "--dry-run"], ["each rank runs 2", "actors.procs = 4 exceeds"]),
])
def test_a_config_that_cannot_run_on_the_ranks_exits_2_before_any_rank_starts(tmp_path, args, words):
    flags = ["--nproc-per-node", "2"] if "--nproc-per-node" not in args else []
    out = cli("launch", "--config", "paac_classic", *flags, *args, "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr
    assert all(word in out.stderr for word in words), out.stderr
    assert "Traceback" not in out.stderr and "torch.distributed.run" not in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("world", "probed"), [
    ({}, ["cuda"]),  # one process: the learner's GPU is the current one
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, []),  # a torchrun rank: its runner probes its own GPU
])
def test_only_a_lone_process_probes_the_compiler_on_the_current_gpu(monkeypatch, tmp_path, world, probed):
    """A bare ``cuda`` is GPU 0 until a rank has chosen its own: a probe there from every rank
    would leave each rank's CUDA context (about half a GB) on GPU 0 for the whole run."""
    import parallel_rl.algos
    import parallel_rl.runtime.runner
    from parallel_rl.cli import main

    for name, value in world.items():
        monkeypatch.setenv(name, value)
    asked = []
    monkeypatch.setattr(parallel_rl.runtime.runner, "learner_device", lambda cfg, probe_compile: torch.device("cuda"))
    monkeypatch.setattr(parallel_rl.algos, "inductor_builds_code", lambda device: asked.append(device) or True)
    assert main(["launch", "--config", "paac_classic", "--set", "perf.compile=true", "--run-dir", str(tmp_path / "run"),
                 "--dry-run"]) == 0
    assert asked == probed


def test_dry_run_checks_the_lag_bound_on_each_ranks_share():
    """QR-DQN's 8 envs learn a rollout in 2 updates on one rank, but each of 2 ranks' 4 envs in
    one: a lag bound of 0 runs there, so --dry-run must accept it, as the launch itself does;
    and refuse it on one rank."""
    args = ["launch", "--config", "qrdqn_classic", "--actors", "8", "--actor-procs", "1", "--set", "actors.max_policy_lag=0",
            "--dry-run"]
    assert cli(*args, "--nproc-per-node", "2").returncode == 0
    refused = cli(*args)
    assert refused.returncode == 2 and "learned in 2 updates" in refused.stderr, refused.stderr


@pytest.mark.slow
@pytest.mark.learning
def test_two_ranks_learn_cartpole_through_the_cli(tmp_path):
    run = tmp_path / "run"
    # paac_classic at its earlier settings (16 envs, LR 1e-3, entropy 0.01, 300k steps), as this test was measured
    out = cli("launch", "--config", "paac_classic", "--nproc-per-node", "2", "--seed", "1", "--run-dir", str(run),
              "--actors", "16", "--steps", "300000", "--set", "optim.lr=0.001", "--set", "algo.entropy_coef=0.01",
              "--set", "logging.interval_s=1", timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "layout: 2 ranks x no actor processes x 8 envs per rank" in out.stdout
    assert out.stdout.count("\ndone:") == 1  # one run, reported once
    saved = ckpt.load(ckpt.latest(run / "checkpoints"))
    assert saved["step"] == 300_000
    recent = saved["recent_returns"]
    assert sum(recent) / len(recent) >= 450


@pytest.mark.slow  # a 2-rank run with actor processes through the CLI
def test_replay_ranks_with_deterministic_lag_actors_get_the_versions_they_wait_for(tmp_path):
    """Each rank's learner publishes where its own actors count the versions (the rank's envs,
    not the whole run's): with the whole run's, QR-DQN on 2 ranks published twice as many
    versions per rollout as its actors expected, and one waiting for an exact version sat at
    step 160 until killed."""
    run = tmp_path / "run"
    out = cli("launch", "--config", "qrdqn_classic", "--nproc-per-node", "2", "--actor-procs", "1", "--steps", "4000",
              "--run-dir", str(run), "--set", "actors.deterministic_lag=true", timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "layout: 2 ranks x 1 actor processes" in out.stdout, out.stdout
    assert ckpt.load(ckpt.latest(run / "checkpoints"))["step"] == 4000


@pytest.mark.slow  # two 2-rank runs through the CLI
def test_a_two_rank_run_resumes_on_every_rank_from_the_same_checkpoint(tmp_path):
    run = tmp_path / "run"
    first = cli("launch", "--config", "paac_classic", "--nproc-per-node", "2", "--steps", "8000", "--run-dir", str(run))
    assert first.returncode == 0, first.stderr[-2000:]
    saved = ckpt.load(ckpt.latest(run / "checkpoints"))
    assert saved["step"] == 8000
    second = cli("launch", "--resume", str(run), "--nproc-per-node", "2", "--steps", "16000")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("resuming") == 1 and "from step 8000" in second.stdout  # said once, by rank 0
    resumed = ckpt.load(ckpt.latest(run / "checkpoints"))
    # each update counts both ranks' 8 envs x 5 steps: the counter continued from 8,000 on both
    assert resumed["step"] == 16000 and resumed["updates"] == saved["updates"] * 2


def test_ranks_outnumbering_the_gpus_wrap_round_them(monkeypatch):
    """Four ranks on a one-GPU machine all learn on cuda:0; on two GPUs they alternate."""
    for gpus, expected in ((1, [0, 0, 0, 0]), (2, [0, 1, 0, 1]), (4, [0, 1, 2, 3])):
        monkeypatch.setattr(torch.cuda, "device_count", lambda gpus=gpus: gpus)
        worlds = [distributed.World(rank=r, size=4, local_rank=r) for r in range(4)]
        assert [distributed._gpu_of(world) for world in worlds] == expected
