//! `syncd run`: the daemon. Flags override the config file, which overrides
//! the environment's defaults; the API key comes from `WANDB_API_KEY` or
//! netrc and is checked before anything starts.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Outcome;
use crate::cli::RunArgs;
use crate::config::{self, FileConfig};
use crate::discover::scan::RootSpec;
use crate::discover::trigger;
use crate::engine::daemon::{self, Control, DaemonConfig, DaemonError};
use crate::sink::retry::RetryPolicy;
use crate::sink::wandb::credentials;

pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| config::config_file(env));
    let file = match FileConfig::load(&config_path, args.config.is_some()) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("syncd: error: {e}");
            return Ok(Outcome::Usage);
        }
    };
    let roots: Vec<String> = if !args.roots.is_empty() {
        args.roots.clone()
    } else if let Some(roots) = file.roots.clone() {
        roots
    } else {
        env("SYNCD_ROOTS")
            .map(|r| r.split(':').map(str::to_string).collect())
            .unwrap_or_default()
    };
    if roots.is_empty() {
        eprintln!(
            "syncd: error: no roots to watch: name them (`syncd run $SCRATCH/wandb`), set `roots` in {}, or set SYNCD_ROOTS",
            config_path.display()
        );
        return Ok(Outcome::Usage);
    }
    let base_url = config::wandb_base_url(args.base_url.clone().or(file.base_url.clone()), env);
    let key = match credentials::find_api_key(&base_url, env) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("syncd: error: {e}");
            return Ok(Outcome::Usage);
        }
    };
    let state_dir = config::state_dir(args.state_dir.clone().or(file.state_dir.clone()), env);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let home = PathBuf::from(env("HOME").unwrap_or_else(|| ".".into()));
    let osh_dir = match file.osh_command_dir.as_deref() {
        Some("") => None,
        Some(dir) => Some(PathBuf::from(dir.replacen(
            '~',
            &home.display().to_string(),
            1,
        ))),
        None => Some(trigger::osh_default_dir(&home)),
    };
    let mut retry = RetryPolicy {
        max_attempts: 4,
        timeout: Duration::from_secs(30),
        ..RetryPolicy::default()
    };
    if let Some(ms) = args.retry_min_ms {
        retry.min_wait = Duration::from_millis(ms);
    }
    let daemon_config = DaemonConfig {
        roots: roots.into_iter().map(RootSpec).collect(),
        state_dir,
        base_url,
        api_key: key.key,
        live_poll: args
            .poll
            .or(FileConfig::duration(&file.poll))
            .unwrap_or(Duration::from_secs(5)),
        idle_poll: args
            .idle_poll
            .or(FileConfig::duration(&file.idle_poll))
            .unwrap_or(Duration::from_secs(120)),
        trigger_poll: Duration::from_millis(500),
        concurrency: args.jobs.or(file.jobs).unwrap_or(4).max(1),
        grace: args
            .grace
            .or(FileConfig::duration(&file.grace))
            .unwrap_or(Duration::from_secs(120)),
        quiescence: args
            .quiescence
            .or(FileConfig::duration(&file.quiescence))
            .unwrap_or(Duration::from_secs(1800)),
        osh_dir,
        lease_ttl: args.lease_ttl.unwrap_or(Duration::from_secs(30)),
        wait_for_lease: args.wait,
        retry,
        slurm: !args.no_slurm && file.slurm.unwrap_or(true),
    };
    if let Some(nice) = args.nice.or(file.nice) {
        lower_priority(nice);
    }
    let log = logger(&args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let (tx, rx) = mpsc::channel(8);
        spawn_signal_handlers(tx)?;
        anyhow::Ok(daemon::run(daemon_config, rx, log).await)
    })?;
    match result {
        Ok(()) => Ok(Outcome::Ok),
        Err(DaemonError::Lease(e)) => {
            eprintln!("syncd: {e}");
            Ok(Outcome::Usage)
        }
        Err(e) => Err(e.into()),
    }
}

fn spawn_signal_handlers(tx: mpsc::Sender<Control>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(message).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// `nice(2)` through `/proc/self` is not possible; setpriority needs libc,
/// so the renice command does it for our pid.
fn lower_priority(nice: i32) {
    let nice = nice.clamp(0, 19);
    let _ = std::process::Command::new("renice")
        .args([
            "-n",
            &nice.to_string(),
            "-p",
            &std::process::id().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// One line per event on stderr: readable text, or JSON objects for journald.
fn logger(format: &str) -> anyhow::Result<Log> {
    let json = match format {
        "text" => false,
        "json" => true,
        other => anyhow::bail!("--log-format must be `text` or `json`, not `{other}`"),
    };
    let out = Mutex::new(std::io::stderr());
    Ok(Arc::new(move |message: &str| {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let line = if json {
            serde_json::json!({"ts": now.to_string(), "msg": message}).to_string()
        } else {
            format!("{now} syncd: {message}")
        };
        if let Ok(mut out) = out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }))
}
