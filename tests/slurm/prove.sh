#!/usr/bin/env bash
# Proves the single-node test cluster and the sbatch templates on it, end to
# end, in about two minutes:
#
#   tests/slurm/prove.sh            # starts the cluster (and stops it) unless one is running
#
# Plain jobs: COMPLETED, FAILED, CANCELLED (scancel), TIMEOUT (--time=1),
# a requeue (PENDING again, then RUNNING with SLURM_RESTART_COUNT=1), a
# throttled array of 3; the exact line syncd's squeue command prints for each
# state is printed at the end. Then the templates with the real wandb 0.31.0
# (offline), each run checked with `syncd inspect --json`: completion, the
# USR1 finish before the time limit, a graceful `scancel --signal=USR1
# --batch`, a plain scancel and a time limit without warning (SIGTERM: what
# they leave), the external and the self requeue (checkpoint resume, two
# fragments, manifest restart_count), an array and two tasks with one run.
# The MLflow template runs too when $SYNCD_MLFLOW_PYTHON names a Python with
# mlflow.
#
# Environment: SYNCD_TEST_CACHE (default ~/.cache/syncd-test) for the wandb
# venv (venv-wandb-0.31.0, as scripts/test.sh makes it; SYNCD_WANDB_VENV
# overrides), SYNCD_BIN (default target/debug/syncd, built if missing),
# SYNCD_SLURM_DIR (the cluster's directory, see cluster.sh),
# SYNCD_PROVE_KEEP=1 keeps the work directory.
#
# Exit status 0 when every check passed; the table says which did not.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
templates="$repo/sbatch-templates"
cache="${SYNCD_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/syncd-test}"
venv="${SYNCD_WANDB_VENV:-$cache/venv-wandb-0.31.0}"
syncd="${SYNCD_BIN:-$repo/target/debug/syncd}"
t_begin=$SECONDS

log() { printf '==> prove: %s\n' "$*" >&2; }

[ -x "$venv/bin/python" ] || { log "no wandb venv at $venv (scripts/test.sh makes it)"; exit 2; }
if [ ! -x "$syncd" ]; then
    log "building syncd"
    (cd "$repo" && cargo build --quiet)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/syncd-slurm-prove.XXXXXX")"
started_cluster=0
cleanup() {
    if [ $started_cluster = 1 ]; then "$here/cluster.sh" stop >/dev/null 2>&1 || true; fi
    if [ "${SYNCD_PROVE_KEEP:-0}" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- the cluster -----------------------------------------------------------
t0=$SECONDS
if "$here/cluster.sh" status >/dev/null 2>&1; then
    log "using the running cluster"
else
    "$here/cluster.sh" start >/dev/null
    started_cluster=1
fi
cluster_secs=$((SECONDS - t0))
eval "$("$here/cluster.sh" env)"
export SLURM_CONF
log "cluster up (${cluster_secs}s); work in $work"

# ---- bookkeeping -----------------------------------------------------------
declare -A id=()          # name -> job id
declare -A seen=()        # name -> "STATE@secs STATE@secs ..." (changes only)
declare -A state=()       # name -> last state
declare -A running_at=()  # name -> secs when first RUNNING
declare -A ended_at=()    # name -> secs when final
declare -A done_action=() # name -> 1 when its action was taken
declare -A line_for=()    # STATE -> an exact squeue line
results=()                # "check|job|expected|observed|ok"
now() { echo $((SECONDS - t_start)); }

# The exact command syncd runs, for one job.
syncd_squeue() { squeue --noheader --array --states=all --format='%i|%A|%T' --jobs="$1" 2>&1; }

submit() {  # name, sbatch args...
    local name=$1; shift
    id[$name]=$(sbatch --parsable --job-name="$name" --output="$work/out/$name-%j.out" --open-mode=append "$@")
    state[$name]=""
    seen[$name]=""
}

is_final() {
    case "$1" in COMPLETED | FAILED | CANCELLED | TIMEOUT | OUT_OF_MEMORY | NODE_FAIL | PREEMPTED | BOOT_FAIL | DEADLINE) return 0 ;; *) return 1 ;; esac
}

result() {  # check, job, expected, observed, ok(0/1)
    results+=("$1|$2|$3|$4|$([ "$5" = 0 ] && echo ok || echo FAIL)")
}

mkdir -p "$work/out" "$work/scratch" "$work/state"
common_env=(SCRATCH_ROOT="$work/scratch" PYTHON="$venv/bin/python" TRAIN_SCRIPT="$templates/train_example.py"
    SYNCD="$syncd" SYNCD_STATE_DIR="$work/state" RUN_VERSION=prove WANDB_SILENT=true)
long_train="--steps 100000 --sleep 0.2"

t_start=$SECONDS
# ---- plain jobs ------------------------------------------------------------
submit completed --time=00:00:30 --wrap 'sleep 2'
submit failed --time=1 --wrap 'exit 3'
submit cancelled --time=5 --wrap 'sleep 300'
submit timeout --time=1 --wrap 'sleep 300'
# shellcheck disable=SC2016  # expanded in the job
submit requeued --requeue --time=5 --wrap 'echo "start restart=${SLURM_RESTART_COUNT:-0}"; sleep 300'
submit array --array=0-2%2 --time=1 --wrap 'sleep 3'

# ---- templates (wandb 0.31.0, offline) --------------------------------------
tsub() {  # name, template, env assignments..., --, sbatch args...
    local name=$1 tpl=$2; shift 2
    local assigns=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do assigns+=("$1"); shift; done
    shift
    id[$name]=$(env "${common_env[@]}" "${assigns[@]}" sbatch --parsable --job-name="$name" \
        --output="$work/out/$name-%j.out" --open-mode=append "$@" "$templates/$tpl")
    state[$name]=""
    seen[$name]=""
}
# --time=5 where no USR1 is wanted: the templates ask for it 120 s before the limit.
tsub t-complete wandb-offline.sbatch TRAIN_ARGS="--steps 20 --sleep 0.1" -- --time=5
tsub t-usr1 wandb-offline.sbatch TRAIN_ARGS="$long_train" -- --time=1 --signal=B:USR1@30
tsub t-usr1-cancel wandb-offline.sbatch TRAIN_ARGS="$long_train" -- --time=5
tsub t-scancel wandb-offline.sbatch TRAIN_ARGS="$long_train" -- --time=5
tsub t-requeue wandb-requeue.sbatch TRAIN_ARGS="--steps 40 --sleep 0.5" -- --time=5
# 40 s of training: longer than the first limit check (every 30 s), so the
# first start always gets USR1 before it is done.
tsub t-selfrequeue wandb-requeue.sbatch TRAIN_ARGS="--steps 100 --sleep 0.4" MAX_RESTARTS=3 -- --time=1 --signal=B:USR1@30
tsub t-array wandb-array.sbatch TRAIN_ARGS="--steps 10 --sleep 0.1" -- --time=5
tsub t-ntasks2 wandb-offline.sbatch TRAIN_ARGS="--steps 10 --sleep 0.1" -- --time=5 --ntasks=2
# A time limit with no warning signal: SIGTERM reaches wandb-core too.
id[t-timeout]=$(env "${common_env[@]}" WANDB_MODE=offline WANDB_DIR="$work/scratch/t-timeout" WANDB_RUN_ID=prove-timeout \
    sbatch --parsable --job-name=t-timeout --output="$work/out/t-timeout-%j.out" --time=1 \
    --wrap "mkdir -p $work/scratch/t-timeout && exec $venv/bin/python $templates/train_example.py $long_train")
state[t-timeout]=""; seen[t-timeout]=""
if [ -n "${SYNCD_MLFLOW_PYTHON:-}" ]; then
    for store in sqlite file; do
        tsub "t-mlflow-$store" mlflow-offline.sbatch PYTHON="$SYNCD_MLFLOW_PYTHON" MLFLOW_STORE=$store \
            TRAIN_ARGS="--tracker mlflow --steps 20 --sleep 0.1" -- --time=5
    done
fi
log "submitted ${#id[@]} jobs"

# ---- watch them, acting on some --------------------------------------------
deadline=$((SECONDS + ${SYNCD_PROVE_TIMEOUT:-270}))
while :; do
    all_final=1
    for name in "${!id[@]}"; do
        j=${id[$name]}
        if [ "$name" = array ] || [ "$name" = t-array ]; then
            # Every element must be final.
            out=$(syncd_squeue "$j")
            s=$(cut -d'|' -f3 <<<"$out" | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=","}')
            fin=1
            while IFS='|' read -r _ _ st; do is_final "$st" || fin=0; done <<<"$out"
            # shellcheck disable=SC2013  # one word per line
            for st in $(cut -d'|' -f3 <<<"$out"); do [ -n "${line_for[$st]:-}" ] || line_for[$st]="$(grep -m1 "|$st\$" <<<"$out")"; done
            if [ -z "${line_for[PENDING-array]:-}" ] && grep -q '|PENDING$' <<<"$out" && grep -q '|RUNNING$' <<<"$out"; then
                line_for[PENDING-array]="$out"
            fi
        else
            out=$(syncd_squeue "$j")
            s=$(cut -d'|' -f3 <<<"$out")
            fin=0; is_final "$s" && fin=1
            [ -n "${line_for[$s]:-}" ] || line_for[$s]="$out"
        fi
        if [ "$s" != "${state[$name]}" ]; then
            state[$name]=$s
            seen[$name]+="${seen[$name]:+ }$s@$(now)"
            case "$s" in RUNNING*) [ -n "${running_at[$name]:-}" ] || running_at[$name]=$(now) ;; esac
        fi
        if [ $fin = 1 ]; then
            [ -n "${ended_at[$name]:-}" ] || ended_at[$name]=$(now)
        else
            all_final=0
        fi
        # Actions, once each job has run long enough.
        if [ -z "${done_action[$name]:-}" ] && [ -n "${running_at[$name]:-}" ] && [ "$s" = RUNNING ]; then
            ran=$(( $(now) - running_at[$name] ))
            case "$name" in
                cancelled) scancel "$j"; done_action[$name]=1 ;;
                requeued) scontrol requeue "$j"; done_action[$name]=1 ;;
                t-scancel) [ $ran -ge 12 ] && { scancel "$j"; done_action[$name]=1; } ;;
                t-usr1-cancel) [ $ran -ge 12 ] && { scancel --signal=USR1 --batch "$j"; done_action[$name]=1; } ;;
                t-requeue) [ $ran -ge 10 ] && { scontrol requeue "$j"; done_action[$name]=1; } ;;
            esac
        fi
        # The requeued plain job: once it runs again, cancel it.
        if [ "$name" = requeued ] && [ -n "${done_action[requeued]:-}" ] && [ -z "${done_action[requeued2]:-}" ] \
            && [ "$s" = RUNNING ] && [ "$(grep -o 'RUNNING@' <<<"${seen[requeued]}" | wc -l)" -ge 2 ]; then
            sleep 1
            scancel "$j"; done_action[requeued2]=1
        fi
    done
    [ $all_final = 1 ] && break
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for jobs"; break; fi
    sleep 0.5
done
total_jobs_secs=$(now)

# ---- checks: plain jobs ------------------------------------------------------
final() { printf '%s' "${state[$1]}"; }
check_state() {  # name, expected
    local got; got=$(final "$1")
    result "state" "$1" "$2" "$got (${seen[$1]})" "$([ "$got" = "$2" ]; echo $?)"
}
check_state completed COMPLETED
check_state failed FAILED
check_state cancelled CANCELLED
check_state timeout TIMEOUT
timeout_latency=$(( ended_at[timeout] - running_at[timeout] ))
result "TIMEOUT latency" timeout "60-100 s after start (--time=1)" "${timeout_latency}s" \
    "$([ "$timeout_latency" -ge 60 ] && [ "$timeout_latency" -le 100 ]; echo $?)"
check_state requeued CANCELLED
req_out=$(cat "$work/out/requeued-${id[requeued]}.out" 2>/dev/null || true)
result "requeue" requeued "RUNNING, PENDING, RUNNING with SLURM_RESTART_COUNT=1" \
    "$(grep -c '^start' <<<"$req_out") starts: $(grep '^start' <<<"$req_out" | tr '\n' ' ')" \
    "$(grep -q 'start restart=0' <<<"$req_out" && grep -q 'start restart=1' <<<"$req_out"; echo $?)"
result "state" array "COMPLETED×3" "$(final array) (${seen[array]})" "$([ "$(final array)" = "COMPLETED×3" ]; echo $?)"
gone=$(squeue --noheader --array --states=all --format='%i|%A|%T' --jobs=999 2>&1; echo "rc=$?")
gone=$(tr '\n' ' ' <<<"$gone")

# ---- checks: templates -------------------------------------------------------
# Reads `syncd inspect --json` of a directory and checks it with a Python
# expression over `runs`, `r` (the first run), `frags` (its fragments in the
# order their directories were made) and `m` (the job manifest, or None).
inspect_check() {  # check, job, expected, dir, python-expression
    local json observed
    json=$("$syncd" inspect --json --stale-after 0s "$4" 2>/dev/null || true)
    observed=$(EXPR="$5" MANIFEST="$4/../syncd-job.json" python3 -c '
import json, os, sys
try:
    runs = json.loads(sys.stdin.read())["runs"]
    r = runs[0]
    frags = sorted(r["fragments"], key=lambda f: os.path.basename(os.path.dirname(f["path"])))
except Exception as e:
    print("no run:", e); print(1); sys.exit()
p = os.environ["MANIFEST"]
m = json.load(open(p)) if os.path.exists(p) else None
try:
    ok = bool(eval(os.environ["EXPR"]))
except Exception as e:
    ok = False
    print("error:", repr(e))
print("%d run(s): %s %s exit=%s rows=%s preempting=%s fragments=%s manifest=%s" % (
    len(runs), r["run_id"], r["class"], r["exit_code"], r["history_rows"], r["preempting"],
    [(f["class"], f["exit_code"]) for f in frags], m))
print(0 if ok else 1)' <<<"$json")
    result "$1" "$2" "$3" "$(head -n -1 <<<"$observed" | tr '\n' ' ')" "$(tail -n1 <<<"$observed")"
}
rundir() { echo "$work/scratch/wandb-runs/$1/${id[$1]}/wandb"; }

check_state t-complete COMPLETED
inspect_check "run finished 0" t-complete "1 run, finished, exit 0, 20 rows, manifest" "$(rundir t-complete)" \
    'len(runs)==1 and runs[0]["class"]=="finished" and runs[0]["exit_code"]==0 and runs[0]["history_rows"]==20 and m=={"job_id": runs[0]["slurm_job_id"], "job_name": "t-complete", "cluster": "syncdtest", "version": "prove"} and runs[0]["run_id"]=="syncdtest-%s-prove" % m["job_id"]'
triggers=$(grep -l "/t-complete/" "$work"/state/notify/*.trigger 2>/dev/null | wc -l)
result "syncd notify" t-complete "2 triggers (start, end)" "$triggers" "$([ "$triggers" = 2 ]; echo $?)"

check_state t-usr1 FAILED
usr1_line=$(grep -h -m1 'SIGUSR1 at' "$work/out/t-usr1-${id[t-usr1]}.out" || true)
usr1_at=$(sed -n 's/.*SIGUSR1 at \([^,]*\),.*/\1/p' <<<"$usr1_line")
start_at=$(squeue --noheader --states=all --format=%S --jobs="${id[t-usr1]}" 2>/dev/null || true)
usr1_after=$(( $(date -d "$usr1_at" +%s 2>/dev/null || echo 0) - $(date -d "$start_at" +%s 2>/dev/null || echo 0) ))
inspect_check "USR1 -> finish" t-usr1 "finished, exit 138, preempting" "$(rundir t-usr1)" \
    'runs[0]["class"]=="finished" and runs[0]["exit_code"]==138 and runs[0]["preempting"]'
result "USR1 arrival" t-usr1 "--time=1 --signal=B:USR1@30: before the limit" "${usr1_after}s after start" \
    "$([ -n "$usr1_at" ] && [ "$usr1_after" -ge 0 ] && [ "$usr1_after" -lt 60 ]; echo $?)"

check_state t-usr1-cancel FAILED
inspect_check "scancel -b -s USR1" t-usr1-cancel "finished, exit 138" "$(rundir t-usr1-cancel)" \
    'runs[0]["class"]=="finished" and runs[0]["exit_code"]==138'

check_state t-scancel CANCELLED
inspect_check "plain scancel" t-scancel "no exit record (SIGTERM kills wandb-core)" "$(rundir t-scancel)" \
    'runs[0]["class"] in ("header-only","truncated","empty") and runs[0]["exit_code"] is None'

check_state t-timeout TIMEOUT
inspect_check "TIMEOUT, no warning" t-timeout "no exit record" "$work/scratch/t-timeout/wandb" \
    'runs[0]["class"] in ("header-only","truncated","empty") and runs[0]["exit_code"] is None'

check_state t-requeue COMPLETED
ckpt=$(cat "$work/scratch/wandb-runs/t-requeue/${id[t-requeue]}/checkpoint.json" 2>/dev/null || true)
inspect_check "requeue + resume" t-requeue "2 fragments: killed, then finished 0; restart_count 1" "$(rundir t-requeue)" \
    'len(runs)==1 and len(frags)==2 and frags[0]["exit_code"] is None and frags[-1]["class"]=="finished" and frags[-1]["exit_code"]==0 and m.get("restart_count")=="1"'
result "checkpoint" t-requeue '{"next_step": 40}' "$ckpt" "$([ "$ckpt" = '{"next_step": 40}' ]; echo $?)"

inspect_check "self requeue (USR1)" t-selfrequeue ">=2 fragments, each finished, restart_count>=1" "$(rundir t-selfrequeue)" \
    'len(runs)==1 and len(runs[0]["fragments"])>=2 and all(f["class"]=="finished" for f in runs[0]["fragments"]) and int(m.get("restart_count","0"))>=1'

result "state" t-array "COMPLETED×3" "$(final t-array)" "$([ "$(final t-array)" = "COMPLETED×3" ]; echo $?)"
arr_ok=0; arr_obs=""
for task in 0 1 2; do
    d="$work/scratch/wandb-runs/t-array/${id[t-array]}_$task"
    j=$("$syncd" inspect --json --stale-after 0s "$d/wandb" 2>/dev/null || true)
    o=$(python3 -c 'import json,sys
d=json.load(open(sys.argv[2])); r=json.loads(sys.stdin.read())["runs"][0]
ok = r["class"]=="finished" and r["group"]=="t-array-"+sys.argv[1] and d["array_job_id"]==sys.argv[1] and d["array_task_id"]==sys.argv[3] and d["job_id"]==r["slurm_job_id"]
print("%s:%s:%s" % (r["run_id"], d["job_id"], "ok" if ok else "bad"))' "${id[t-array]}" "$d/syncd-job.json" "$task" <<<"$j" 2>&1 || echo "task $task: unreadable")
    arr_obs+="$o "
    [[ "$o" == *:ok ]] || arr_ok=1
done
result "array runs" t-array "3 runs, one group, array manifests" "$arr_obs" "$arr_ok"

check_state t-ntasks2 COMPLETED
nfrag=$(find "$(rundir t-ntasks2)" -name '*.wandb' | wc -l)
result "rank 0 only" t-ntasks2 "--ntasks=2: 1 .wandb file" "$nfrag" "$([ "$nfrag" = 1 ]; echo $?)"

if [ -n "${SYNCD_MLFLOW_PYTHON:-}" ]; then
    check_state t-mlflow-sqlite COMPLETED
    check_state t-mlflow-file COMPLETED
    d="$work/scratch/mlflow-runs"
    n=$(find "$d/t-mlflow-sqlite" -name mlflow.db | wc -l; find "$d/t-mlflow-file" -name meta.yaml -path '*/mlruns/*/*/meta.yaml' | wc -l)
    result "mlflow stores" t-mlflow-* "1 mlflow.db, 1 run in mlruns/" "$(tr '\n' ' ' <<<"$n")" "$([ "$(tr -d '\n' <<<"$n")" = 11 ]; echo $?)"
fi

# ---- report ------------------------------------------------------------------
echo
echo "squeue --noheader --array --states=all --format=%i|%A|%T --jobs=<id>   (one id each)"
for st in PENDING RUNNING COMPLETING COMPLETED FAILED CANCELLED TIMEOUT; do
    printf '  %-10s %s\n' "$st" "${line_for[$st]:-(not seen)}"
done
echo "  array, throttled (%2), one element pending:"
printf '%s\n' "${line_for[PENDING-array]:-(not seen)}" | sed 's/^/    /'
echo "  a job id the controller does not know: $gone"
echo
echo "state changes (seconds since the first submit):"
for name in $(printf '%s\n' "${!id[@]}" | sort); do
    printf '  %-16s %-10s %s\n' "$name" "${id[$name]}" "${seen[$name]}"
done
echo
fails=0
printf '%-20s %-16s %-48s %-6s %s\n' CHECK JOB EXPECTED RESULT OBSERVED
for r in "${results[@]}"; do
    IFS='|' read -r c j e o ok <<<"$r"
    printf '%-20s %-16s %-48s %-6s %s\n' "$c" "$j" "$e" "$ok" "$o"
    [ "$ok" = ok ] || fails=$((fails + 1))
done
echo
echo "cluster start ${cluster_secs}s, jobs ${total_jobs_secs}s, TIMEOUT ${timeout_latency}s after start, total $((SECONDS - t_begin))s"
echo "$(( ${#results[@]} - fails )) passed, $fails failed"
[ $fails = 0 ]
