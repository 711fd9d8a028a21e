//! Command-line types only; what the commands do lives in [`crate::cmd`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "syncd",
    version,
    about = "Uploads offline W&B runs from HPC shared filesystems, incrementally and exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read offline runs and report what they contain, without uploading.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// `.wandb` files, run directories, wandb directories or project
    /// directories. Default: `$WANDB_DIR/wandb`, else `./wandb`.
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
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 30s, 10m, 2h)"))
}
