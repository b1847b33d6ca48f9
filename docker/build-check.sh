#!/usr/bin/env bash
# Build check of docker/Dockerfile without a Docker engine or an image registry:
#
#   sudo docker/build-check.sh            # about 3-4 minutes cold, under 2 when the base is cached
#
# 1. base:  a Debian base image made from Debian's packages with debootstrap (bookworm,
#           minbase variant, python3.11 in a venv at /opt/venv that is first on PATH, so
#           `python` and `pip` are the venv's and PEP 668's "externally managed" system
#           Python is never touched) plus the CPU torch wheel. It is committed to buildah's
#           storage as localhost/parallel-rl-build-check-base:<key>, the key being a hash of
#           the recipe below, so a rerun on the same machine reuses it (REBUILD_BASE=1 remakes
#           it) and a fresh machine makes it.
# 2. build: docker/Dockerfile with `buildah bud --isolation chroot`, BASE_IMAGE set to that
#           base and APP_UID/APP_GID (default 1000) as the container user.
# 3. train: `parallel-rl launch --config paac_classic --actor-procs 1 --steps 30000` inside
#           the image as the image's (non-root) user, with a host folder that belongs to
#           APP_UID:APP_GID mounted at /work/runs; then checks the exit status, the run
#           directory with its checkpoint (owned by that user on the host) and the image's
#           health check command.
#
# torch is resolved by the host's pip, with the host's pip configuration (on the CI
# machines a local CPU wheel), for CPython 3.11 on manylinux x86_64, and copied into the
# base: PyPI's own Linux wheel is the CUDA build, gigabytes of NVIDIA packages. A wheel
# without "+cpu" in its name is refused; set TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu) or TORCH_WHEEL=/path/to/torch-...+cpu-...whl.
# Everything else comes from PyPI inside the build. When the network's TLS is intercepted
# by a proxy whose CA only the host trusts, the host's certificate store ($CA_CERTS,
# default /etc/ssl/certs) is mounted read-only at /etc/ssl/certs for the pip steps; it is
# not copied into any image.
#
# Needs root (debootstrap, chroot isolation), buildah, debootstrap and python3 with pip:
#   apt-get install -y buildah debootstrap
#
# Environment (all optional): APP_UID, APP_GID (1000), STEPS (30000), TORCH_VERSION
# (2.13.0), TORCH_INDEX_URL, TORCH_WHEEL, DEBIAN_MIRROR (default: the archive of this machine's apt sources),
# CA_CERTS (/etc/ssl/certs), IMAGE (localhost/parallel-rl:build-check), REBUILD_BASE=1,
# TRAIN_TIMEOUT (600 s), VERBOSE=1 (show the whole build output), BUILD_CHECK_DIR (logs
# and the torch wheel; default $TMPDIR/parallel-rl-build-check).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite=bookworm
packages=(python3.11 python3-venv python3-distutils ca-certificates passwd)
# the Debian archive this machine's apt uses (its first deb source), unless DEBIAN_MIRROR says;
# either apt source file may be missing, which must not end the script (set -e, pipefail)
host_mirror() {
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true
    grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' || true; } | grep -v -- '-security' | head -n 1 || true
}
mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
[[ -n "$mirror" ]] || { echo "build-check: no Debian archive in /etc/apt; set DEBIAN_MIRROR" >&2; exit 1; }
torch_version="${TORCH_VERSION:-2.13.0}"
app_uid="${APP_UID:-1000}"
app_gid="${APP_GID:-1000}"
steps="${STEPS:-30000}"
image="${IMAGE:-localhost/parallel-rl:build-check}"
base_repo=localhost/parallel-rl-build-check-base
ca_certs="${CA_CERTS:-/etc/ssl/certs}"
work="${BUILD_CHECK_DIR:-${TMPDIR:-/tmp}/parallel-rl-build-check}"
python="${PYTHON:-python3}"

log() { printf '[build-check %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
# the last lines of a log, after a failure
show() { echo "---- last lines of $1 ----" >&2; tail -n "${2:-40}" "$1" >&2; echo "----" >&2; }

# ------------------------------------------------------------------ checks and cleanup

[[ "$(id -u)" == 0 ]] || die "run as root (e.g. sudo $0): debootstrap and buildah's chroot isolation need it"
for tool in buildah debootstrap "$python" sha256sum flock timeout; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y buildah debootstrap)"
done
[[ "$app_uid" =~ ^[1-9][0-9]*$ && "$app_gid" =~ ^[0-9]+$ ]] || die "APP_UID/APP_GID must be numeric, APP_UID not 0"
ca_mount=()
if [[ -d "$ca_certs" ]]; then
  ca_mount=(-v "$ca_certs:/etc/ssl/certs:ro")
fi

mkdir -p "$work"
exec 9>"$work/lock"
flock -n 9 || { log "another build check holds $work/lock; waiting"; flock 9; }

containers=()
cleanup() {
  local rc=$? ctr mnt
  for ctr in ${containers[@]+"${containers[@]}"}; do
    # a failed debootstrap can leave /proc and /sys mounted inside the container's root
    mnt="$(buildah mount "$ctr" 2>/dev/null || true)"
    if [[ -n "$mnt" ]]; then
      awk -v m="$mnt/" 'index($2, m) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l || true
      buildah umount "$ctr" >/dev/null 2>&1 || true
    fi
    buildah rm "$ctr" >/dev/null 2>&1 || log "could not remove container $ctr"
  done
  if ((rc != 0)); then
    log "build check FAILED (exit $rc); logs in $work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ 1. base image

# The recipe: debootstrap into the root of a scratch container, then a venv with torch.
make_rootfs() {  # $1: the mounted root (each step `|| return`: a caller's `||` disables set -e)
  local root="$1"
  # --foreign, then the second stage with dpkg's unsafe I/O: no fsync per file, ~15 s less
  debootstrap --foreign --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    "$suite" "$root" "$mirror" || return
  echo force-unsafe-io > "$root/etc/dpkg/dpkg.cfg.d/build-check-unsafe-io" || return
  chroot "$root" /debootstrap/debootstrap --second-stage || return
  rm -f "$root/etc/dpkg/dpkg.cfg.d/build-check-unsafe-io" || return
  # the host's resolv.conf and hostname do not belong in an image; neither do caches or docs
  rm -rf "$root"/etc/resolv.conf "$root"/etc/hostname "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/usr/share/locale/*
}
install_torch() {  # $1: container, $2: the torch wheel on the host
  buildah copy --quiet "$1" "$2" /tmp/ >/dev/null || return
  # shellcheck disable=SC2016  # $WHEEL expands in the container's shell
  buildah run --isolation chroot ${ca_mount[@]+"${ca_mount[@]}"} -e "WHEEL=/tmp/$(basename "$2")" \
    -e PIP_DISABLE_PIP_VERSION_CHECK=1 -e PIP_DEFAULT_TIMEOUT=120 "$1" -- sh -euc '
      python3.11 -m venv /opt/venv
      /opt/venv/bin/pip install --no-cache-dir "$WHEEL"
      rm -f "$WHEEL"
      /opt/venv/bin/python -W ignore -c "import torch; print(\"torch\", torch.__version__)"' || return
  buildah config --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env VIRTUAL_ENV=/opt/venv --env LANG=C.UTF-8 --cmd python \
    --label org.opencontainers.image.description="Debian $suite, python3.11 venv, torch $torch_version (CPU); parallel-rl build check" \
    "$1"
}

# The torch wheel, resolved and downloaded by the host's pip for the base's Python.
torch_wheel() {
  if [[ -n "${TORCH_WHEEL:-}" ]]; then
    [[ -f "$TORCH_WHEEL" ]] || die "TORCH_WHEEL=$TORCH_WHEEL is not a file"
    echo "$TORCH_WHEEL"
    return
  fi
  local dest="$work/wheels" index=() wheel
  mkdir -p "$dest"
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    index=(--index-url "$TORCH_INDEX_URL")
  fi
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version 3.11 --abi cp311 --platform manylinux_2_28_x86_64 \
    ${index[@]+"${index[@]}"} -d "$dest" "torch==$torch_version" >&2 \
    || die "pip could not download torch==$torch_version (see its output above)"
  wheel="$(find "$dest" -maxdepth 1 -name "torch-${torch_version}[-+]*cp311*.whl" | sort | tail -n 1)"
  [[ -n "$wheel" ]] || die "no torch-$torch_version wheel in $dest after pip download"
  if [[ "$(basename "$wheel")" != *+cpu* ]]; then
    rm -f "$wheel"
    die "pip resolved torch==$torch_version to $(basename "$wheel"), not a CPU build (PyPI's Linux wheel" \
      "is the CUDA one); set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu or TORCH_WHEEL=/path/to/wheel"
  fi
  echo "$wheel"
}

t0=$SECONDS
key_text="$(declare -f make_rootfs install_torch; echo "$suite ${packages[*]} torch==$torch_version")"
key_text+=" ${TORCH_INDEX_URL:-} ${TORCH_WHEEL:+$(sha256sum < "$TORCH_WHEEL")}"
key="$(printf '%s' "$key_text" | sha256sum | cut -c1-16)"
base="$base_repo:$key"
if [[ "${REBUILD_BASE:-0}" != 1 ]] && buildah inspect --type image "$base" >/dev/null 2>&1; then
  log "base: $base is cached (REBUILD_BASE=1 remakes it)"
  base_how=cached
else
  log "base: resolving the CPU torch wheel (torch==$torch_version) with the host's pip"
  wheel="$(torch_wheel)"
  log "base: $(basename "$wheel")"
  ctr="$(buildah from --name "build-check-base-$$" scratch)"
  containers+=("$ctr")
  root="$(buildah mount "$ctr")"
  log "base: debootstrap $suite (minbase + ${packages[*]}) from $mirror"
  make_rootfs "$root" > "$work/debootstrap.log" 2>&1 || { show "$work/debootstrap.log"; die "debootstrap failed"; }
  buildah umount "$ctr" >/dev/null
  log "base: python3.11 venv at /opt/venv with torch"
  install_torch "$ctr" "$wheel" > "$work/base-torch.log" 2>&1 || { show "$work/base-torch.log"; die "installing torch in the base failed"; }
  log "base: committing $base"
  buildah commit --quiet --format docker --rm "$ctr" "$base" >/dev/null || die "committing the base image failed"
  containers=()
  # earlier bases (other keys) are dropped; one still used by an image stays
  buildah images --format '{{.Name}}:{{.Tag}}' | grep -F "$base_repo:" | grep -vxF "$base" \
    | xargs -r -n 1 buildah rmi >/dev/null 2>&1 || true
  base_how=built
fi
t_base=$((SECONDS - t0))
log "base: done in ${t_base}s ($base_how)"

# ------------------------------------------------------------------ 2. the Dockerfile

t0=$SECONDS
log "build: buildah bud -f docker/Dockerfile -t $image (BASE_IMAGE=$base, APP_UID=$app_uid, APP_GID=$app_gid)"
build_log="$work/build.log"
build=(buildah bud --isolation chroot --layers --force-rm --pull=never --format docker
       ${ca_mount[@]+"${ca_mount[@]}"}
       --build-arg "BASE_IMAGE=$base" --build-arg "APP_UID=$app_uid" --build-arg "APP_GID=$app_gid"
       -f "$repo/docker/Dockerfile" -t "$image" "$repo")
set +e
if [[ "${VERBOSE:-0}" == 1 ]]; then
  "${build[@]}" 2>&1 | tee "$build_log" >&2
else
  # the steps that do something, one short line each; the whole output is in build.log
  "${build[@]}" 2>&1 | tee "$build_log" | while IFS= read -r line; do
    if [[ "$line" =~ ^STEP\ [0-9]+/[0-9]+:\ (FROM|RUN|COPY) ]]; then printf '    %s\n' "${line:0:100}" >&2; fi
  done
fi
build_rc=${PIPESTATUS[0]}
set -e
if ((build_rc != 0)); then
  show "$build_log" 60
  die "buildah bud exited $build_rc"
fi
t_build=$((SECONDS - t0))
log "build: done in ${t_build}s"

# ------------------------------------------------------------------ 3. train in the image

t0=$SECONDS
# the image's user, entrypoint and health check, from its configuration: NUL-separated
# fields (user, entrypoint as JSON, then the health check's CMD arguments)
mapfile -d '' fields < <(buildah inspect --type image "$image" | "$python" -c '
import json, sys
config = json.load(sys.stdin)["Docker"]["config"]
test = (config.get("Healthcheck") or {}).get("Test") or []
fields = [config.get("User") or "", json.dumps(config.get("Entrypoint"))] + (test[1:] if test[:1] == ["CMD"] else [])
sys.stdout.write("".join(f + "\0" for f in fields))')
((${#fields[@]} >= 2)) || die "could not read the configuration of $image"
user="${fields[0]}" entrypoint="${fields[1]}" health=("${fields[@]:2}")
[[ "$user" =~ ^[0-9]+(:[0-9]+)?$ && "${user%%:*}" != 0 ]] || die "the image runs as '${user:-root}', not a numeric non-root user"
[[ "${user%%:*}" == "$app_uid" ]] || die "the image runs as $user, not APP_UID=$app_uid"
[[ "$entrypoint" == '["parallel-rl"]' ]] || die "the image's entrypoint is $entrypoint, not [\"parallel-rl\"]"
((${#health[@]})) || die "the image has no HEALTHCHECK CMD"

# the host folder behind /work/runs belongs to the container's user, as launch/docker.sh
# arranges by building with your uid (or, as root, by handing runs/ to the image's user)
runs="$(mktemp -d "$work/runs.XXXXXX")"
chown "$app_uid:$app_gid" "$runs"
ctr="$(buildah from --pull=never --name "build-check-train-$$" "$image")"
containers+=("$ctr")
train_log="$work/train.log"
log "train: parallel-rl launch --config paac_classic --actor-procs 1 --steps $steps as $user, $runs at /work/runs"
set +e
timeout --kill-after=30 "${TRAIN_TIMEOUT:-600}" buildah run --isolation chroot --user "$user" -v "$runs:/work/runs" "$ctr" -- \
  parallel-rl launch --config paac_classic --actor-procs 1 --steps "$steps" > "$train_log" 2>&1
train_rc=$?
set -e
if ((train_rc != 0)); then
  show "$train_log"
  die "training in the image exited $train_rc$( ((train_rc == 124)) && echo " (timed out after ${TRAIN_TIMEOUT:-600}s)")"
fi
grep -E '^done:' "$train_log" | cut -c1-140 >&2 || true
run_dirs=("$runs"/*/)
[[ ${#run_dirs[@]} == 1 && -d "${run_dirs[0]}" ]] || die "expected one run directory in $runs, found: $(ls -A "$runs")"
run_dir="${run_dirs[0]%/}"
checkpoint="$(find "$run_dir/checkpoints" -maxdepth 1 -name 'step_*.pt' 2>/dev/null | sort -V | tail -n 1)"
[[ -n "$checkpoint" && -s "$checkpoint" ]] || die "no checkpoint in $run_dir/checkpoints"
[[ -f "$run_dir/config.yaml" ]] || die "no config.yaml in $run_dir"
owner="$(stat -c %u "$checkpoint")"
[[ "$owner" == "$app_uid" ]] || die "$checkpoint belongs to uid $owner on the host, not $app_uid"
log "train: $(basename "$run_dir")/checkpoints/$(basename "$checkpoint") ($(du -h "$checkpoint" | cut -f1), uid $owner)"
buildah run --isolation chroot --user "$user" "$ctr" -- "${health[@]}" > "$work/health.log" 2>&1 \
  || { show "$work/health.log"; die "the image's health check command failed"; }
log "train: the health check command passes"
rm -rf "$runs"
t_train=$((SECONDS - t0))
log "train: done in ${t_train}s"

log "build check passed: base ${t_base}s ($base_how), build ${t_build}s, train ${t_train}s, total ${SECONDS}s"
