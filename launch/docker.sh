#!/usr/bin/env bash
# Train in Docker in one line; the arguments go to `parallel-rl launch`:
#
#   launch/docker.sh --actors 256
#   GPUS=device=1 launch/docker.sh --config paac_atari --env Breakout-v5
#   GPUS=none BASE_IMAGE=python:3.11-slim \
#     TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu launch/docker.sh --config paac_classic
#
# The image (IMAGE, default parallel-rl:latest) is built from docker/Dockerfile when it is
# missing, or always with REBUILD=1. Run directories go to runs/ under the current folder,
# mounted at /work/runs in the container, where the container's (non-root) user must be
# able to write: the image is built with your uid/gid, so runs/ (created here) is yours and
# theirs; as root, runs/ is handed (chown) to the image's user instead.
#
# Environment:
#   GPUS             value of `docker run --gpus` (default all; e.g. device=1, or
#                    '"device=0,1"' for several); none runs without GPUs
#   SHM_SIZE         size of the container's /dev/shm (default 16g; see docs/docker.md)
#   IMAGE            image tag (default parallel-rl:latest)
#   REBUILD          1: build the image even if it exists
#   BASE_IMAGE       build argument: the base image (default: the Dockerfile's CUDA one)
#   TORCH_INDEX_URL  build argument: where torch comes from when the base has none
#   APP_UID/APP_GID  build arguments: the container user's ids (default: yours, so that
#                    files in runs/ belong to you; not passed when you are root, and the
#                    image's default user, 1000:1000, then gets runs/)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${IMAGE:-parallel-rl:latest}"
gpus="${GPUS:-all}"
shm_size="${SHM_SIZE:-16g}"

if [[ "${REBUILD:-0}" == 1 ]] || ! docker image inspect "$image" >/dev/null 2>&1; then
  build_args=()
  if [[ -n "${BASE_IMAGE:-}" ]]; then
    build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  fi
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  fi
  app_uid="${APP_UID:-$(id -u)}"
  app_gid="${APP_GID:-$(id -g)}"
  if [[ "$app_uid" != 0 ]]; then
    build_args+=(--build-arg "APP_UID=$app_uid" --build-arg "APP_GID=$app_gid")
  fi
  echo "building $image from $repo/docker/Dockerfile" >&2
  docker build -f "$repo/docker/Dockerfile" -t "$image" ${build_args[@]+"${build_args[@]}"} "$repo"
fi

# Created here, so that it belongs to you rather than to the Docker daemon's root. The
# container's user (the image's USER, uid:gid) writes in it: as root, hand it to that user;
# otherwise it is you, unless the image was built for someone else.
mkdir -p runs
image_user="$(docker image inspect --format '{{.Config.User}}' "$image" 2>/dev/null || true)"
image_uid="${image_user%%:*}"
if [[ "$(id -u)" == 0 ]]; then
  if [[ "$image_uid" =~ ^[1-9][0-9]*$ ]]; then
    chown "$image_user" runs
  fi
elif [[ "$image_uid" =~ ^[0-9]+$ && "$image_uid" != "$(id -u)" ]]; then
  echo "warning: $image runs as uid $image_uid, not yours ($(id -u)), and may not be able to write" \
       "to runs/; rebuild it for you with REBUILD=1" >&2
fi

run_args=(--rm --init --shm-size "$shm_size" --stop-timeout 120 -v "$PWD/runs:/work/runs")
if [[ "$gpus" != none ]]; then
  run_args+=(--gpus "$gpus")
fi
if [[ -t 0 && -t 1 ]]; then
  run_args+=(-it)
fi
exec docker run "${run_args[@]}" "$image" launch "$@"
