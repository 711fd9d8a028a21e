//! The subcommands. Each returns the process exit status: 0 when everything
//! went well, 1 when some runs could not be handled, 2 for usage and
//! configuration errors (also what an `Err` becomes in `main`).
//!
//! A subcommand parses nothing itself (arguments are [`crate::cli`]'s) and
//! holds no logic another subcommand needs: what two of them share lives in
//! the module that owns that question (paths in [`crate::project`], defaults
//! in [`crate::config`]), not in a sibling.

pub(crate) mod inspect;
pub(crate) mod notify;
pub(crate) mod run;
pub(crate) mod service;
pub(crate) mod status;
pub(crate) mod sync;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{Cli, Command};
use crate::discover;

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

/// A path a command could not read, and why (the `errors` of `inspect
/// --json` and `sync --json`).
#[derive(Debug, Serialize)]
pub struct PathError {
    #[serde(with = "crate::paths::serde_path")]
    pub path: PathBuf,
    pub error: String,
}

impl From<&discover::DiscoverError> for PathError {
    fn from(e: &discover::DiscoverError) -> Self {
        PathError {
            path: e.path().to_path_buf(),
            error: e.to_string(),
        }
    }
}

/// `$WANDB_DIR/wandb` (where the SDK writes when `WANDB_DIR` is set), else `./wandb`.
pub fn default_wandb_dir() -> PathBuf {
    match std::env::var_os("WANDB_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("wandb"),
        _ => PathBuf::from("wandb"),
    }
}

/// The naming rule of a command without `--config` (see
/// [`crate::config::naming_rule`]); `None` after saying what is wrong.
fn naming_rule(
    flag: Option<&crate::naming::Template>,
    env: impl crate::config::Env,
) -> Option<crate::naming::NamingRule> {
    crate::config::naming_rule(flag, env)
        .inspect_err(|e| eprintln!("syncd: error: {e}"))
        .ok()
}

/// Columns of the notes under a table written anywhere but a terminal (a
/// pipe, a file, a mail from cron).
const PIPED_NOTES_WIDTH: usize = 100;

/// Writes rows whose last column is free text (notes, errors). On a
/// terminal: one framed table as wide as the terminal, wrapping cells. Piped:
/// a plain table of the other columns, then each row's notes as lines of
/// their own, wrapped at spaces only (paths and URLs stay whole for grep).
fn write_table(
    out: &mut impl std::io::Write,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::IsTerminal as _;
    let mut table = comfy_table::Table::new();
    // A terminal of unknown or tiny width (a pty nobody sized) gets the
    // plain layout: framed cells a few columns wide say nothing.
    if std::io::stdout().is_terminal() && table.width().is_some_and(|w| w >= 60) {
        table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        // Wrap to the terminal's width instead of running off its edge.
        table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
        table.set_header(header.to_vec());
        for row in rows {
            table.add_row(row);
        }
        return writeln!(out, "{table}");
    }
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(&header[..header.len() - 1]);
    let mut notes = Vec::new();
    for mut row in rows {
        let note = row.pop().unwrap_or_default();
        if !note.is_empty() {
            let first = row.first().cloned().unwrap_or_default();
            let name = first.lines().last().unwrap_or_default().to_string();
            notes.push((name, note));
        }
        table.add_row(row);
    }
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    for (name, note) in notes {
        for paragraph in note.lines() {
            let mut line = format!("{name}:");
            for word in paragraph.split(' ').filter(|w| !w.is_empty()) {
                if line.chars().count() + 1 + word.chars().count() > PIPED_NOTES_WIDTH
                    && line.trim_start().contains(' ')
                {
                    writeln!(out, "{line}")?;
                    line = " ".repeat(name.chars().count() + 1);
                }
                line.push(' ');
                line.push_str(word);
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
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
