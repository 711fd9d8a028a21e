//! Command-line types only; what the commands do lives in [`crate::cmd`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::naming::Template;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "syncd",
    version,
    about = "Uploads offline W&B runs from HPC shared filesystems, incrementally and exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: LogArgs,
}

/// How much is logged and how; usable with every subcommand. Logs go to
/// stderr; `$SYNCD_LOG` (else `$RUST_LOG`) overrides `-v`/`-q` with a
/// filter such as `debug` or `syncd::sink=debug,info`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log more: `-v` debug, `-vv` trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log less: `-q` warnings and errors only, `-qq` errors only (each
    /// takes back one `-v`).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// `text`, or `json` (one object per line, for journald).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read offline runs and report what they contain, without uploading.
    Inspect(InspectArgs),
    /// Upload offline runs once: only what the server does not have yet.
    Sync(SyncArgs),
    /// Keep uploading every run under the roots: live while it trains,
    /// complete when it ends (the daemon).
    Run(RunArgs),
    /// Show what is queued, uploading, done or stuck, and why.
    Status(StatusArgs),
    /// From a job: ask the daemon to upload a run now (writes a small file;
    /// needs no network).
    Notify(NotifyArgs),
    /// Install the systemd user unit that keeps `syncd run` going, or learn
    /// the alternatives where no user manager runs.
    Service(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directories to watch: wandb directories, or directories holding a
    /// `wandb/`; glob patterns allowed (quote them); relative ones are taken
    /// from the working directory. [default: `roots` from the config file,
    /// else `$SYNCD_ROOTS` (colon-separated), else `$WANDB_DIR/wandb`, else
    /// ./wandb]
    pub roots: Vec<String>,

    /// Config file. [default: `$XDG_CONFIG_HOME/syncd/config.toml`, else
    /// ~/.config/syncd/config.toml]
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Where the ledger, lease and heartbeat live. [default: `state_dir`
    /// from the config file, else `$SYNCD_STATE_DIR`, else
    /// `$XDG_STATE_HOME/syncd`, else ~/.local/state/syncd]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,

    /// W&B server for runs whose `.env` files name none. [default:
    /// `base_url` from the config file, else `$WANDB_BASE_URL`, else
    /// https://api.wandb.ai]
    #[arg(long)]
    pub base_url: Option<String>,

    /// Server-side display name template (see README "Run names").
    /// Overrides `[naming] template`. [default: v{version}-{experiment}_{job}]
    #[arg(long, value_parser = parse_template)]
    pub name_template: Option<Template>,

    /// How often active runs are checked. [default: 5s, or `poll` in the
    /// config file]
    #[arg(long, value_parser = parse_duration)]
    pub poll: Option<Duration>,

    /// How often settled runs and whole roots are checked. [default: 2m, or
    /// `idle_poll` in the config file]
    #[arg(long, value_parser = parse_duration)]
    pub idle_poll: Option<Duration>,

    /// Runs uploaded at the same time. [default: 4, or `jobs` in the config
    /// file]
    #[arg(short = 'j', long = "jobs")]
    pub jobs: Option<usize>,

    /// After Slurm reports a job gone, wait this long for its exit record
    /// before finalizing the run as failed. [default: 2m, or `grace` in the
    /// config file]
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,

    /// Runs without a Slurm job are finalized after this long unchanged.
    /// [default: 30m, or `quiescence` in the config file]
    #[arg(long, value_parser = parse_duration)]
    pub quiescence: Option<Duration>,

    /// If another daemon holds the lease on the state directory, wait for it
    /// instead of exiting.
    #[arg(long)]
    pub wait: bool,

    /// Do not ask Slurm (squeue/sacct); use the quiescence timeout only.
    #[arg(long)]
    pub no_slurm: bool,

    /// Lower the daemon's CPU priority (0-19), as on a shared login node.
    /// [default: unchanged, or `nice` in the config file]
    #[arg(long)]
    pub nice: Option<i32>,

    /// How long one request to a server may take before it counts as
    /// unreachable (the daemon then goes offline and probes) [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Lease time to live (tests).
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub lease_ttl: Option<Duration>,

    /// First retry wait in milliseconds (tests).
    #[arg(long, hide = true)]
    pub retry_min_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (schema in README.md).
    #[arg(long)]
    pub json: bool,

    /// Only runs in this state: queued, live, uploading, synced, finalized,
    /// quarantined, failed.
    #[arg(long)]
    pub state: Option<String>,

    /// Only runs of this project.
    #[arg(long)]
    pub project: Option<String>,

    /// Redraw every 2 seconds until interrupted.
    #[arg(long)]
    pub watch: bool,

    /// The daemon's state directory. [default: `$SYNCD_STATE_DIR`, else
    /// `$XDG_STATE_HOME/syncd`, else ~/.local/state/syncd]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// The run (or wandb) directory. [default: `$WANDB_DIR/wandb`, else
    /// ./wandb]
    pub path: Option<PathBuf>,

    /// The daemon's state directory. [default: `$SYNCD_STATE_DIR`, else
    /// `$XDG_STATE_HOME/syncd`, else ~/.local/state/syncd]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// `.wandb` files, run directories, wandb directories or project
    /// directories; relative ones are taken from the working directory.
    /// [default: `$WANDB_DIR/wandb`, else ./wandb]
    pub paths: Vec<PathBuf>,

    /// Runs uploaded at the same time.
    #[arg(short = 'j', long = "jobs", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// Print one JSON document (schema in README.md) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Read the runs and report what would be sent; send nothing, change no state.
    #[arg(long)]
    pub dry_run: bool,

    /// Upload to this entity instead of the run's own.
    #[arg(short = 'e', long)]
    pub entity: Option<String>,

    /// Upload to this project instead of the run's own.
    #[arg(short = 'p', long)]
    pub project: Option<String>,

    /// Complete runs that have no exit record (killed, timed out) as failed
    /// (exit code 1), once their newest file has been unchanged for
    /// `--stale-after`. Without it such runs stay open for a later sync.
    #[arg(long)]
    pub finalize: bool,

    /// How long a run's newest file must be unchanged before `--finalize`
    /// treats its writer as gone. Examples: 10m, 1h, 0s.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub stale_after: Duration,

    /// W&B server for runs whose `.env` files name none. [default:
    /// `$WANDB_BASE_URL`, else https://api.wandb.ai]
    #[arg(long)]
    pub base_url: Option<String>,

    /// Server-side display name template (see README "Run names").
    /// Overrides `[naming] template`. [default: v{version}-{experiment}_{job}]
    #[arg(long, value_parser = parse_template)]
    pub name_template: Option<Template>,

    /// Where the upload ledger lives. [default: `$SYNCD_STATE_DIR`, else
    /// `$XDG_STATE_HOME/syncd`, else ~/.local/state/syncd]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,

    /// How long one request may take before it counts as failed (and is
    /// retried). Examples: 30s, 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Attempts per request, the first included, before the run fails
    /// (waits double from 2s up to 60s in between). A server never reached
    /// at all gets 3.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,

    /// Checkpoint after this many bytes of new lines (tuning and tests).
    #[arg(long, hide = true, default_value_t = 4 * 1024 * 1024)]
    pub batch_bytes: usize,

    /// First retry wait in milliseconds; doubles per attempt (tests).
    #[arg(long, hide = true, default_value_t = 2000)]
    pub retry_min_ms: u64,

    /// Longest wait between attempts in milliseconds, a server's
    /// `Retry-After` included (tests).
    #[arg(long, hide = true, default_value_t = 60_000)]
    pub retry_max_ms: u64,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// `.wandb` files, run directories, wandb directories or project
    /// directories. [default: `$WANDB_DIR/wandb`, else ./wandb]
    pub paths: Vec<PathBuf>,

    /// Print one JSON document (schema in README.md) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// A run without an exit record whose newest file has not changed for
    /// this long is reported `truncated` (its writer is taken to be gone);
    /// a younger one is `growing`. Examples: 10m, 1h, 0s.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub stale_after: Duration,

    /// After corruption, skip the damaged 32 KiB block and keep reading
    /// instead of stopping at it.
    #[arg(long)]
    pub recover: bool,

    /// Display name template to show the names runs will get with. [default:
    /// the config file's `[naming] template`, else v{version}-{experiment}_{job}]
    #[arg(long, value_parser = parse_template)]
    pub name_template: Option<Template>,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write `$XDG_CONFIG_HOME/systemd/user/syncd.service` (default
    /// `~/.config/systemd/user/`) running this binary, and say what to do
    /// next.
    Install(ServiceInstallArgs),
    /// Print the unit `install` would write.
    Unit,
}

#[derive(Debug, Args)]
pub struct ServiceInstallArgs {
    /// Say what would be written; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Replace a unit that differs from what syncd wrote (it is kept as
    /// `syncd.service.bak`).
    #[arg(long)]
    pub force: bool,

    /// Print one JSON document (schema in systemd/README.md).
    #[arg(long)]
    pub json: bool,

    /// The systemctl to ask whether a user manager runs (tests).
    #[arg(long, hide = true, default_value = "systemctl")]
    pub systemctl: PathBuf,
}

fn parse_template(text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| e.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 30s, 10m, 2h)"))
}
