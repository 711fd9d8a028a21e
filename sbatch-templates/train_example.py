#!/usr/bin/env python3
"""A stand-in for a training script, for the sbatch templates next to it.

Logs --steps steps (a fake loss), sleeping --sleep seconds per step, to
Weights & Biases (default) or MLflow. Everything about the run comes from the
environment the templates set: WANDB_MODE=offline, WANDB_DIR, WANDB_RUN_ID,
WANDB_RESUME, WANDB_PROJECT, WANDB_NAME ... for W&B; MLFLOW_TRACKING_URI,
MLFLOW_EXPERIMENT_NAME for MLflow. No network is needed in offline mode.

Signals: SIGUSR1 (Slurm's warning before the time limit, forwarded by the
template's trap) and SIGTERM (time limit reached, scancel, pre-emption) stop
the loop at the next step boundary; the script then saves its checkpoint,
marks the W&B run as pre-empting, finishes it with exit code 128+signal
(so the run's exit record says it was interrupted) and exits with that code.
A second signal while finishing is ignored.

--checkpoint PATH: the step reached is saved there (atomically) after every
step and when interrupted; a later start with the same PATH resumes after
it. The template for requeued jobs uses this with a stable WANDB_RUN_ID and
WANDB_RESUME=allow, so a requeued job continues the same run.

Only global rank 0 writes to the tracker: the templates set WANDB_MODE=disabled
on other ranks; this script also checks SLURM_PROCID for MLflow.
"""

import argparse
import json
import math
import os
import signal
import sys
import time

stop_signal = None


def on_signal(signum, _frame):
    global stop_signal
    if stop_signal is None:
        stop_signal = signum
        print(f"train: got {signal.Signals(signum).name}, stopping after this step", flush=True)


def load_checkpoint(path):
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_checkpoint(path, state):
    if not path:
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class WandbTracker:
    def __init__(self, config):
        import wandb

        # Project, id, resume, mode and dir come from WANDB_* variables.
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "syncd-example"),
            config=config,
        )
        print(
            f"train: wandb {wandb.__version__} run {self.run.id} in {self.run.dir} "
            f"(mode {os.environ.get('WANDB_MODE', 'online')})",
            flush=True,
        )

    def log(self, metrics):
        self.run.log(metrics)

    def preempting(self):
        # Tells the server this run was pre-empted rather than crashed, in
        # case it never sees the exit record.
        self.run.mark_preempting()

    def finish(self, exit_code):
        self.run.finish(exit_code=exit_code)


class MlflowTracker:
    def __init__(self, config, resume_run_id):
        import mlflow

        self.mlflow = mlflow
        if int(os.environ.get("SLURM_PROCID", "0")) != 0:
            self.run = None
            return
        # The tracking URI and experiment come from MLFLOW_TRACKING_URI and
        # MLFLOW_EXPERIMENT_NAME; a requeued job reopens the run it started.
        if resume_run_id:
            self.run = mlflow.start_run(run_id=resume_run_id)
        else:
            tags = {f"slurm.{k[6:].lower()}": v for k, v in os.environ.items()
                    if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                             "SLURM_JOB_NAME", "SLURM_CLUSTER_NAME")}
            self.run = mlflow.start_run(run_name=os.environ.get("MLFLOW_RUN_NAME"), tags=tags)
        if not resume_run_id:
            mlflow.log_params(config)
        print(f"train: mlflow {mlflow.__version__} run {self.run.info.run_id} at {mlflow.get_tracking_uri()}", flush=True)

    @property
    def run_id(self):
        return self.run.info.run_id if self.run else None

    def log(self, metrics):
        if self.run:
            step = metrics.get("global_step")
            self.mlflow.log_metrics({k: v for k, v in metrics.items() if k != "global_step"}, step=step)

    def preempting(self):
        if self.run:
            self.mlflow.set_tag("preempted", "true")

    def finish(self, exit_code):
        if self.run:
            self.mlflow.end_run(status="FINISHED" if exit_code == 0 else "KILLED")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=int(os.environ.get("TRAIN_STEPS", "100")))
    parser.add_argument("--sleep", type=float, default=float(os.environ.get("TRAIN_SLEEP", "0.1")))
    parser.add_argument("--checkpoint", default=os.environ.get("TRAIN_CHECKPOINT"))
    parser.add_argument("--seed", type=int, default=0, help="changes the fake loss curve")
    parser.add_argument("--tracker", choices=["wandb", "mlflow"], default="wandb")
    args = parser.parse_args()

    # Before anything slow: a signal that arrives during the tracker's start
    # must not kill the process.
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    checkpoint = load_checkpoint(args.checkpoint) or {}
    start = checkpoint.get("next_step", 0)
    if start:
        print(f"train: resuming from {args.checkpoint} at step {start}", flush=True)

    config = {"steps": args.steps, "sleep": args.sleep, "seed": args.seed,
              "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    if args.tracker == "wandb":
        tracker = WandbTracker(config)
    else:
        tracker = MlflowTracker(config, checkpoint.get("mlflow_run_id"))
    extra = {"mlflow_run_id": tracker.run_id} if args.tracker == "mlflow" and tracker.run_id else {}

    step = start
    while step < args.steps and stop_signal is None:
        loss = 2.0 * math.exp(-step / (30.0 + args.seed)) + 0.05 * math.sin(step + args.seed)
        # global_step is the training step across restarts; W&B's own _step
        # counts the rows of this process.
        tracker.log({"global_step": step, "loss": loss, "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0"))})
        step += 1
        save_checkpoint(args.checkpoint, {"next_step": step, **extra})
        time.sleep(args.sleep)

    if stop_signal is not None:
        # Ignore further signals while finishing (Slurm sends TERM to every
        # process, the template's trap forwards another).
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = 128 + stop_signal
        print(f"train: interrupted at step {step}; finishing the run with exit code {code}", flush=True)
        save_checkpoint(args.checkpoint, {"next_step": step, **extra})
        try:
            tracker.preempting()
            tracker.finish(code)
            print("train: run finished", flush=True)
        except Exception as e:  # noqa: BLE001
            # Slurm's SIGTERM reaches wandb's service process too, which then
            # exits without flushing: the run cannot be finished any more.
            print(f"train: could not finish the run ({type(e).__name__}: {e})", flush=True)
        return code

    # Done: a signal from now on (Slurm's warning may come late) must not
    # turn a finished run into a killed process.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tracker.finish(0)
    print(f"train: done, {step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
