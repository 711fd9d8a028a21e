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
