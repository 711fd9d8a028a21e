#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust and Python 3:
# installs what the tests need (Python venvs with pinned wandb versions, the
# fixture runs they write, a one-node Slurm cluster while it runs), then runs
# every Rust test against them.
#
# Everything installed or generated goes to a cache dir
# ($SYNCD_TEST_CACHE, default ~/.cache/syncd-test) and is reused when present;
# nothing depends on it being there.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SYNCD_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/syncd-test}"
# One writer per release line clusters still run, each the newest patch of its
# line that installs on Python 3.11: 0.16 (the legacy Python writer), 0.17
# (legacy by default), 0.19 (wandb-core, writes files/output.log), 0.22 and
# 0.25 (wandb-core, no output.log offline), 0.31 (also the official client the
# oracle tests use).
wandb_versions=(0.31.0 0.25.1 0.22.3 0.19.11 0.17.9 0.16.6)
mkdir -p "$cache"
export PIP_CACHE_DIR="$cache/pip"

log() { printf '==> %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    local sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    log "installing $*"
    if [ $apt_updated -eq 0 ]; then
        $sudo_cmd apt-get update -qq
        apt_updated=1
    fi
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian splits venv support out of python3.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
fi
# `systemd-analyze verify` checks the shipped unit; the package is only its
# tools here (no user manager runs in a container).
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_install systemd
fi

# The hung-filesystem test mounts a FUSE passthrough (tests/hangfs) written
# with Debian's python3-fusepy, run by Debian's own interpreter.
if ! /usr/bin/python3 -c 'import fusepy' 2>/dev/null; then
    apt_install python3-fusepy
fi

venv_for() { echo "$cache/venv-wandb-$1"; }
# What a version needs beside itself: pillow and numpy for the media case;
# wandb 0.16 still uses np.float_, which numpy 2 removed.
companions_for() {
    case "$1" in
        0.16.*) echo "pillow numpy<2" ;;
        *) echo "pillow numpy" ;;
    esac
}

for version in "${wandb_versions[@]}"; do
    venv="$(venv_for "$version")"
    if [ ! -f "$venv/.installed" ]; then
        log "creating venv with wandb==$version"
        rm -rf "$venv"
        python3 -m venv "$venv"
        # shellcheck disable=SC2046 # the companions are words
        "$venv/bin/pip" install -q --disable-pip-version-check "wandb==$version" $(companions_for "$version")
        touch "$venv/.installed"
    fi
done

# Fixture runs written by the real wandb of each version, regenerated when
# the generator changes.
generator="$repo/tests/fixtures/wandb/generate.py"
gen_hash="$(sha256sum "$generator" | cut -c1-12)"
fixture_dirs=()
for version in "${wandb_versions[@]}"; do
    out="$cache/fixtures/wandb-$version-$gen_hash"
    # Generated in place (the manifest records absolute paths); the stamp
    # marks a complete generation.
    if [ ! -f "$out/.complete" ]; then
        log "generating fixture runs with wandb $version"
        rm -rf "$out"
        mkdir -p "$out"
        "$(venv_for "$version")/bin/python" "$generator" --out "$out"
        touch "$out/.complete"
    fi
    # Sets written by older versions of the generator are not used again.
    find "$cache/fixtures" -mindepth 1 -maxdepth 1 -name "wandb-$version-*" ! -name "wandb-$version-$gen_hash" \
        -exec rm -rf {} +
    fixture_dirs+=("$out")
done

export SYNCD_FIXTURES="$(IFS=:; echo "${fixture_dirs[*]}")"
export SYNCD_REQUIRE_FIXTURES=1
export SYNCD_ORACLE_PYTHON="${SYNCD_ORACLE_PYTHON:-python3}"
# The official client, as the oracle for uploads.
export SYNCD_WANDB_VENV="$(venv_for 0.31.0)"

# A one-node Slurm cluster for tests/it/slurm.rs (tests/slurm/README.md),
# in a private directory, stopped on exit (cluster.sh stop: its jobs
# cancelled, its daemons stopped by PID, the directory removed). A cluster
# SYNCD_SLURM_CONF already names is used as it is and left running. Starting
# one needs root or sudo (to install the packages if missing); without either
# the Slurm tests are skipped with a note.
slurm_dir=""
stop_slurm() {
    if [ -n "$slurm_dir" ]; then
        SYNCD_SLURM_DIR="$slurm_dir" "$repo/tests/slurm/cluster.sh" stop >/dev/null 2>&1 || true
    fi
}
if [ -n "${SYNCD_SLURM_CONF:-}" ]; then
    log "using the Slurm cluster of SYNCD_SLURM_CONF=$SYNCD_SLURM_CONF"
    export SYNCD_REQUIRE_SLURM=1
elif [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then
    log "no Slurm cluster: starting one needs root or passwordless sudo; the Slurm tests are skipped"
    unset SYNCD_REQUIRE_SLURM
else
    # Under /tmp: munge's socket path must stay short.
    slurm_dir="$(mktemp -d /tmp/syncd-slurm-test.XXXXXX)"
    trap stop_slurm EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "starting a one-node Slurm cluster in $slurm_dir"
    SYNCD_SLURM_DIR="$slurm_dir" "$repo/tests/slurm/cluster.sh" start >/dev/null
    export SYNCD_SLURM_CONF="$slurm_dir/etc/slurm.conf"
    export SYNCD_REQUIRE_SLURM=1
fi

cd "$repo"
log "running cargo test"
cargo test --locked
