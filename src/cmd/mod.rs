//! The subcommands. Each returns the process exit status: 0 when everything
//! went well, 1 when some runs could not be handled, 2 for usage and
//! configuration errors (also what an `Err` becomes in `main`).

pub mod inspect;
pub mod notify;
pub mod run;
pub mod service;
pub mod status;
pub mod sync;

use crate::cli::{Cli, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    SomeFailed,
    Usage,
}

impl From<Outcome> for std::process::ExitCode {
    fn from(outcome: Outcome) -> Self {
        std::process::ExitCode::from(match outcome {
            Outcome::Ok => 0,
            Outcome::SomeFailed => 1,
            Outcome::Usage => 2,
        })
    }
}

/// The naming rule of a command without `--config` (see
/// [`crate::config::naming_rule`]); `None` after saying what is wrong.
fn naming_rule(
    flag: Option<&crate::target::Template>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<crate::target::NamingRule> {
    crate::config::naming_rule(flag, env)
        .inspect_err(|e| eprintln!("syncd: error: {e}"))
        .ok()
}

/// Columns of a table written anywhere but a terminal (a pipe, a file, a
/// mail from cron): wrapped to fit, whatever the cells hold.
const PIPED_TABLE_WIDTH: u16 = 100;

/// A table for stdout: framed and as wide as the terminal on one; plain
/// (no frame) and at most [`PIPED_TABLE_WIDTH`] columns otherwise.
fn table_for_stdout() -> comfy_table::Table {
    use std::io::IsTerminal as _;
    let mut table = comfy_table::Table::new();
    // Wrap to the width instead of running off its edge.
    table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    if std::io::stdout().is_terminal() {
        table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    } else {
        table.load_preset(comfy_table::presets::NOTHING);
        table.force_no_tty();
        table.set_width(PIPED_TABLE_WIDTH);
    }
    table
}

pub fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Sync(args) => sync::run(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Notify(args) => notify::run(args),
        Command::Service(args) => service::run(args),
    }
}
