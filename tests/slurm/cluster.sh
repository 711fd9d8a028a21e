#!/usr/bin/env bash
# A real single-node Slurm cluster (Debian's slurmctld/slurmd 22.05 + munge)
# for syncd's tests, confined to one private directory.
#
#   tests/slurm/cluster.sh start     install if missing, configure, start, wait for the node
#   tests/slurm/cluster.sh stop      cancel every job, stop the daemons by PID, remove the directory
#   tests/slurm/cluster.sh status    daemons, node, queue
#   tests/slurm/cluster.sh env       prints `export SLURM_CONF=...` (eval "$(... env)")
#
# Or `source tests/slurm/env.sh` after `start`.
#
# Private directory: $SYNCD_SLURM_DIR, default /tmp/syncd-slurm-<uid>. It holds
# the configuration (etc/slurm.conf), the munge key and socket, pid files,
# logs (log/), the controller's state and slurmd's spool. Nothing is written to
# /etc; the packages' own services are never started. SlurmctldPort and
# SlurmdPort are picked free at each start (srun takes ephemeral ports).
# The node and the controller are addressed as 127.0.0.1 (NodeAddr,
# SlurmctldHost), and CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
# makes slurmd, slurmctld and the clients bind the address the host name
# resolves to instead of every interface; `start` refuses to run unless that
# address is a loopback one, so nothing listens beyond this machine.
#
# Jobs run as the submitting user (root here). The node is this host with
# `slurmd -C`'s memory and $SYNCD_SLURM_CPUS CPUs (default 8, at least the
# real count). Finished jobs stay in the controller for MinJobAge
# (1 h), so `squeue --states=all` reports COMPLETED / TIMEOUT / CANCELLED /
# FAILED without accounting (no slurmdbd, no sacct).
set -euo pipefail

dir="${SYNCD_SLURM_DIR:-/tmp/syncd-slurm-$(id -u)}"
conf="$dir/etc/slurm.conf"
cluster_name=syncdtest
start_timeout="${SYNCD_SLURM_START_TIMEOUT:-60}"

log() { printf '==> cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

need_root_or_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_if_missing() {
    local missing=()
    for bin in slurmctld slurmd sbatch munged; do
        command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    need_root_or_sudo apt-get update -qq
    # The packages' postinst tries to start their services; in a container
    # that is refused (policy-rc.d) or fails harmlessly; we never use them.
    need_root_or_sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A TCP port nothing listens on, from a range few services use.
free_port() {
    local p tries=0
    while [ $tries -lt 200 ]; do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 20000 ))
        tries=$((tries + 1))
        case " ${taken_ports:-} " in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null \
            && { ! command -v ss >/dev/null || [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ]; }; then
            taken_ports="${taken_ports:-} $p"
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

write_config() {
    local host node_line real_mem real_cpus cpus ctld_port slurmd_port first_job_id
    host="$(hostname -s)"
    # The daemons bind what the host name resolves to (NoInAddrAny,
    # NoCtldInAddrAny): it must be loopback.
    local address
    address="$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')"
    case "$address" in
        127.*) ;;
        *) die "$host resolves to ${address:-nothing}, not a loopback address: the test cluster would listen on the network; map it to 127.0.0.1 in /etc/hosts" ;;
    esac
    # Every daemon and client must find the node and the controller at
    # 127.0.0.1; slurmd -C gives the real CPU layout and memory.
    node_line="$(slurmd -C | head -n1)"
    case "$node_line" in NodeName=*) ;; *) die "slurmd -C printed: $node_line" ;; esac
    real_mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
    real_cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")"
    # Test jobs mostly sleep: offer more CPUs than the machine has (default
    # 8, never fewer than it has) so they run side by side;
    # SlurmdParameters=config_overrides keeps slurmd from draining the node.
    cpus="${SYNCD_SLURM_CPUS:-8}"
    [ "$cpus" -ge "$real_cpus" ] || cpus=$real_cpus
    ctld_port="$(free_port)"
    slurmd_port="$(free_port)"
    first_job_id=$(( ($(date +%s) % 600000) * 100 + 1000 ))

    mkdir -p "$dir"/{etc,munge,run,log,state,spool}
    chmod 0700 "$dir" "$dir/munge"
    : >"$dir/etc/plugstack.conf"   # so /etc/slurm/plugstack.conf is not read
    cat >"$conf" <<EOF
# Written by tests/slurm/cluster.sh; regenerated at each start.
ClusterName=$cluster_name
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again
# (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=10
PlugStackConfig=$dir/etc/plugstack.conf
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
# The main scheduling loop every 2 s (default 60 s): a requeued job starts
# soon after its cred_expire delay instead of up to a minute later.
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Ended jobs stay in the controller for an hour: squeue --states=all is the
# only record of how they ended (no accounting database here).
MinJobAge=3600
# Time limits end jobs promptly: no grace past the limit, 5 s between
# SIGTERM and SIGKILL.
OverTimeLimit=0
KillWait=5
InactiveLimit=0
ReturnToService=2
SlurmdTimeout=300
MessageTimeout=10
JobRequeue=1
# Job ids differ from one start to the next (a fresh state starts at
# FirstJobId), so runs named after them never collide in a shared directory.
FirstJobId=$first_job_id
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    local key="$dir/munge/munge.key"
    if [ ! -s "$key" ]; then
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        chmod 0400 "$key"
    fi
    if pid_alive "$dir/run/munged.pid"; then return 0; fi
    # --force: run as root, and accept a socket directory in /tmp.
    munged --force \
        --socket="$dir/munge/munge.socket.2" \
        --key-file="$key" \
        --pid-file="$dir/run/munged.pid" \
        --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    for _ in $(seq 50); do
        [ -S "$dir/munge/munge.socket.2" ] && return 0
        sleep 0.1
    done
    die "munged did not create its socket; see $dir/log/munged.log"
}

node_state() {
    SLURM_CONF="$conf" sinfo --noheader --nodes="$(hostname -s)" --format=%T 2>/dev/null | head -n1
}

cmd_start() {
    PATH="$PATH:/usr/sbin:/sbin"
    install_if_missing
    if pid_alive "$dir/run/slurmctld.pid" && pid_alive "$dir/run/slurmd.pid"; then
        log "already running ($dir)"
        cmd_env
        return 0
    fi
    local t0=$SECONDS
    # A previous cluster in the same directory that died uncleanly.
    stop_daemons >/dev/null 2>&1 || true
    write_config
    start_munge
    export SLURM_CONF="$conf"
    # -i: ignore any state a previous run of this directory left behind.
    slurmctld -f "$conf" -i
    slurmd -f "$conf"
    local state="" deadline=$((SECONDS + start_timeout))
    while [ $SECONDS -lt $deadline ]; do
        state="$(node_state || true)"
        # "idle*" (with the star) is a node that has not registered yet.
        case "$state" in idle | mixed | allocated) break ;; esac
        sleep 0.5
    done
    case "$state" in
        idle | mixed | allocated) ;;
        *)
            tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
            die "node not idle after ${start_timeout}s (state: ${state:-none})"
            ;;
    esac
    log "up in $((SECONDS - t0))s: cluster $cluster_name, node $(hostname -s), conf $conf"
    cmd_env
}

cmd_env() {
    echo "export SLURM_CONF=$conf"
}

# Stops by PID: slurmd, slurmctld, munged; waits for each to exit.
stop_daemons() {
    local name pidfile pid
    for name in slurmd slurmctld munged; do
        pidfile="$dir/run/$name.pid"
        [ -f "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$pidfile"
    done
}

cmd_stop() {
    PATH="$PATH:/usr/sbin:/sbin"
    [ -d "$dir" ] || { log "not running ($dir absent)"; return 0; }
    if [ -f "$conf" ] && pid_alive "$dir/run/slurmctld.pid"; then
        # Jobs' processes belong to slurmstepd, which outlives slurmd: end
        # them through Slurm first.
        export SLURM_CONF="$conf"
        scancel --full --partition=debug >/dev/null 2>&1 || true
        for _ in $(seq 60); do
            [ -z "$(squeue --noheader --states=RUNNING,COMPLETING,CONFIGURING,SUSPENDED --format=%i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_daemons
    if [ "${SYNCD_SLURM_KEEP:-0}" = 1 ]; then
        log "stopped; $dir kept (SYNCD_SLURM_KEEP=1)"
    else
        rm -rf "$dir"
        log "stopped; $dir removed"
    fi
}

cmd_status() {
    PATH="$PATH:/usr/sbin:/sbin"
    local name rc=0
    for name in munged slurmctld slurmd; do
        if pid_alive "$dir/run/$name.pid"; then
            echo "$name: running (pid $(cat "$dir/run/$name.pid"))"
        else
            echo "$name: not running"; rc=1
        fi
    done
    if [ $rc -eq 0 ]; then
        export SLURM_CONF="$conf"
        echo "node: $(node_state)"
        squeue --states=all --array --format='%i|%A|%T|%j' 2>&1 | head -n 30
    fi
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
