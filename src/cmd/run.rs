//! `syncd run`: the daemon. Flags override the config file, which overrides
//! the environment's defaults. Each run's server and key come from the
//! nearest `.env` above it, the user's `.env`, the environment or netrc
//! (`destination::clients`); a run with none is reported, not fatal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Outcome;
use crate::cli::RunArgs;
use crate::config::{self, ConfigError, Env, FileConfig, ProcessEnv};
use crate::destination::clients::Clients;
use crate::discover::scan::RootSpec;
use crate::discover::trigger;
use crate::engine::daemon::{self, Control, DaemonConfig, DaemonError};
use crate::sink::retry::RetryPolicy;

pub(crate) fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let (daemon_config, nice) = match build_config(&args) {
        Ok(built) => built,
        Err(message) => {
            eprintln!("syncd: error: {message}");
            return Ok(Outcome::Usage);
        }
    };
    std::fs::create_dir_all(&daemon_config.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            daemon_config.state_dir.display()
        )
    })?;
    if let Some(nice) = nice {
        lower_priority(nice);
    }
    let roots: Vec<&str> = daemon_config.roots.iter().map(|r| r.0.as_str()).collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        state_dir = %daemon_config.state_dir.display(),
        roots = %roots.join(":"),
        "syncd run: starting"
    );
    // One thread: the daemon mostly waits (on the network, on the next
    // poll), and its own CPU was mostly threads waking each other (a worker
    // per upload, the loop per result). On one thread uploads still overlap
    // while they wait; their CPU work comes in pieces of at most one
    // request's batch, so the loop (signals, lease, heartbeat) is never held
    // up for long, and the daemon stays on one core of a shared login node.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(8);
        spawn_signal_handlers(tx, args)?;
        anyhow::Ok(daemon::run(daemon_config, rx).await)
    })?;
    match result {
        Ok(()) => Ok(Outcome::Ok),
        Err(DaemonError::Lease(e)) => {
            tracing::error!("{e}");
            Ok(Outcome::Usage)
        }
        Err(e) => Err(e.into()),
    }
}

/// The daemon's settings from flags, the config file and the environment
/// (read again on SIGHUP), and the nice level.
fn build_config(args: &RunArgs) -> Result<(DaemonConfig, Option<i32>), ConfigError> {
    let env = ProcessEnv;
    let config_path = match args.config.clone() {
        Some(path) => path,
        None => config::config_file(env)?,
    };
    let file = FileConfig::load(&config_path, args.config.is_some())?;
    let roots: Vec<String> = if !args.roots.is_empty() {
        args.roots.clone()
    } else if let Some(roots) = file.roots.clone() {
        roots
    } else {
        env.var("SYNCD_ROOTS")
            .map(|r| r.split(':').map(str::to_string).collect())
            .unwrap_or_default()
    };
    // From the working directory, once: a relative root loses the project
    // directory (and its `.env`) above `wandb/` otherwise.
    let roots: Vec<String> = roots
        .iter()
        .map(|r| {
            crate::project::absolute(std::path::Path::new(r))
                .display()
                .to_string()
        })
        .collect();
    // On defaults, the directory `syncd inspect` and `syncd sync` read:
    // `$WANDB_DIR/wandb`, else `./wandb`, when it exists.
    let default_root = super::default_wandb_dir();
    let roots = if roots.is_empty() && default_root.is_dir() {
        vec![
            std::path::absolute(&default_root)
                .unwrap_or_else(|_| default_root.clone())
                .display()
                .to_string(),
        ]
    } else {
        roots
    };
    if roots.is_empty() {
        return Err(ConfigError::NoRoots {
            default_root,
            config_file: config_path,
        });
    }
    let naming = file.naming_rule(args.name_template.as_ref())?;
    let state_dir = config::state_dir(args.state_dir.clone().or(file.state_dir.clone()), env)?;
    let osh_dir = match file.osh_command_dir.as_deref() {
        Some("") => None,
        Some(dir) => Some(config::expand_home(dir, env)?),
        None => Some(trigger::osh_default_dir(&config::home_dir(env)?)),
    };
    let mut retry = RetryPolicy {
        max_attempts: 4,
        timeout: args.request_timeout.unwrap_or(Duration::from_secs(30)),
        ..RetryPolicy::default()
    };
    if let Some(ms) = args.retry_min_ms {
        retry.min_wait = Duration::from_millis(ms);
    }
    let duration = |flag: Option<Duration>, value: Option<Duration>, default: u64| {
        flag.or(value).unwrap_or(Duration::from_secs(default))
    };
    let targets = Clients::from_process(args.base_url.clone().or(file.base_url.clone()), retry)?;
    let config = DaemonConfig {
        roots: roots.into_iter().map(RootSpec).collect(),
        state_dir,
        targets: Arc::new(targets),
        naming,
        live_poll: duration(args.poll, file.poll, 5),
        idle_poll: duration(args.idle_poll, file.idle_poll, 120),
        trigger_poll: Duration::from_millis(500),
        concurrency: args.jobs.or(file.jobs).unwrap_or(4).max(1),
        grace: duration(args.grace, file.grace, 120),
        quiescence: duration(args.quiescence, file.quiescence, 1800),
        osh_dir,
        lease_ttl: args.lease_ttl.unwrap_or(Duration::from_secs(30)),
        wait_for_lease: args.wait,
        retry,
        slurm: !args.no_slurm && file.slurm.unwrap_or(true),
    };
    Ok((config, args.nice.or(file.nice)))
}

/// SIGTERM/SIGINT stop the daemon; SIGHUP reads the settings again (a
/// broken config file is reported and the old settings kept).
fn spawn_signal_handlers(tx: mpsc::Sender<Control>, args: RunArgs) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
                _ = hup.recv() => match build_config(&args) {
                    Ok((config, _)) => Control::Reload(Some(Box::new(config))),
                    Err(message) => {
                        tracing::warn!("SIGHUP: keeping the current settings: {message}");
                        Control::Reload(None)
                    }
                },
            };
            if tx.send(message).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Lowers the CPU priority. Linux applies it to the calling thread, and
/// threads started later inherit it: call before the runtime starts.
fn lower_priority(nice: i32) {
    let nice = nice.clamp(0, 19);
    if let Err(error) = rustix::process::setpriority_process(None, nice) {
        let error = std::io::Error::from(error);
        tracing::warn!(nice, %error, "could not lower the CPU priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use std::path::PathBuf;

    #[test]
    fn a_ledger_error_through_the_daemon_says_each_thing_once() {
        // As main prints it: the anyhow chain with `{:#}`.
        let cause = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no access here");
        let ledger = crate::ledger::LedgerError::Dir {
            path: PathBuf::from("/state/runs"),
            source: cause,
        };
        let error = anyhow::Error::from(DaemonError::from(ledger));
        let text = format!("{error:#}");
        assert_eq!(
            text,
            "cannot use state directory /state/runs: no access here"
        );
        for part in [
            "cannot use state directory",
            "/state/runs",
            "no access here",
        ] {
            assert_eq!(text.matches(part).count(), 1, "{part} in {text}");
        }
        // The settings' errors are typed and say what to fix once too.
        let error = anyhow::Error::from(ConfigError::from(config::DirsError::NoHome));
        let text = format!("{error:#}");
        assert_eq!(text.matches("HOME is not set").count(), 1, "{text}");
    }

    #[test]
    fn relative_roots_are_taken_from_the_working_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let cli = crate::cli::Cli::parse_from([
            "syncd",
            "run",
            "--config",
            config.to_str().unwrap(),
            "wandb",
            "/abs/wandb",
        ]);
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not run");
        };
        let (config, _) = build_config(&args).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let roots: Vec<&str> = config.roots.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            roots,
            [cwd.join("wandb").to_str().unwrap(), "/abs/wandb"],
            "the project directory above a relative `wandb` is part of the root"
        );
    }
}
