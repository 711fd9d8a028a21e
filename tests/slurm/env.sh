# shellcheck shell=bash
# Source after `tests/slurm/cluster.sh start` to point Slurm's client
# commands (sbatch, squeue, scancel, scontrol, sinfo) at the test cluster:
#   . tests/slurm/env.sh
export SLURM_CONF="${SYNCD_SLURM_DIR:-/tmp/syncd-slurm-$(id -u)}/etc/slurm.conf"
