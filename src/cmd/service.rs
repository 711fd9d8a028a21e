//! `syncd service install`: puts the systemd user unit (`systemd/syncd.service`,
//! compiled in) where the user's service manager looks for it, with
//! `ExecStart=` naming the binary that runs the command, and says what to do
//! next. Where no user manager answers (common on login nodes: nothing starts
//! `systemd --user` for SSH sessions, or systemd is not there at all), it says
//! how else to keep `syncd run` going: tmux, scrontab, a long batch job.
//!
//! A unit this command wrote carries a checksum of itself, so a later install
//! (a new syncd version, another binary) replaces it as long as nobody edited
//! it, and refuses, without `--force`, once someone has.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::Outcome;
use crate::cli::{ServiceAction, ServiceArgs, ServiceInstallArgs};
use crate::config::{self, FileConfig};
use crate::destination::resolve as dotenv;
use crate::destination::{DestinationError, resolve_destination};
use crate::fs::durable::write_atomic;
use crate::fs::sha256_hex;
use crate::process;

/// The unit as committed; its `ExecStart=` runs [`TEMPLATE_BINARY`].
pub(crate) const UNIT_TEMPLATE: &str = include_str!("../../systemd/syncd.service");
/// The binary the committed unit runs; `install` puts the real path there.
pub(crate) const TEMPLATE_BINARY: &str = "%h/.cargo/bin/syncd";
pub(crate) const UNIT_NAME: &str = "syncd.service";
/// The line of a written unit that holds the checksum of what follows it.
const CHECKSUM_PREFIX: &str = "# syncd-unit-sha256: ";
/// How long `systemctl --user` may take to answer.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);
/// A user manager's `PATH` when it does not say (systemd's default).
const DEFAULT_MANAGER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn run(args: ServiceArgs) -> anyhow::Result<Outcome> {
    match args.action {
        ServiceAction::Install(args) => install(args),
        ServiceAction::Unit => {
            let binary = current_binary()?;
            match render_unit(&binary) {
                Ok(unit) => {
                    print!("{unit}");
                    Ok(Outcome::Ok)
                }
                Err(message) => {
                    eprintln!("syncd service unit: {message}");
                    Ok(Outcome::Usage)
                }
            }
        }
    }
}

/// What `install` did (or, with `--dry-run`, would do) to the unit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    /// There was none.
    Created,
    /// There was one exactly as syncd writes it now.
    Unchanged,
    /// There was one syncd wrote (another version or binary), never edited.
    Updated,
    /// There was a different one, replaced because of `--force` (and kept as
    /// `.bak`).
    Replaced,
    /// There was a different one, left alone.
    Refused,
}

impl Action {
    fn past(self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (Action::Created, false) => "created",
            (Action::Created, true) => "would create",
            (Action::Unchanged, _) => "unchanged",
            (Action::Updated, false) => "updated",
            (Action::Updated, true) => "would update",
            (Action::Replaced, false) => "replaced",
            (Action::Replaced, true) => "would replace",
            (Action::Refused, _) => "left alone",
        }
    }
}

/// Another way to keep the daemon running, for machines without a user manager.
#[derive(Debug, Serialize)]
pub(crate) struct Fallback {
    pub name: &'static str,
    pub summary: String,
    pub commands: Vec<String>,
}

/// `install --json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub unit_path: PathBuf,
    /// Whether the file was written by this invocation.
    pub written: bool,
    pub action: Action,
    pub dry_run: bool,
    /// Where the replaced unit was kept (`--force`).
    pub backup: Option<PathBuf>,
    /// The binary `ExecStart=` runs.
    pub binary: PathBuf,
    /// Whether `systemctl --user` reaches a running user manager.
    pub user_manager: bool,
    /// Why not, when it does not.
    pub user_manager_problem: Option<String>,
    /// Whether systemd keeps the user's manager running after logout;
    /// `null` when unknown.
    pub linger: Option<bool>,
    /// Commands to run next, in order. Without a user manager they are what
    /// to run once one answers, and `fallbacks` says what to do meanwhile.
    pub next_steps: Vec<String>,
    pub fallbacks: Vec<Fallback>,
    /// What would keep the daemon from working once started.
    pub warnings: Vec<String>,
}

fn install(args: ServiceInstallArgs) -> anyhow::Result<Outcome> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config_home = match config::config_home(config::ProcessEnv) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("syncd service install: cannot tell where the user unit goes: {e}");
            return Ok(Outcome::Usage);
        }
    };
    let unit_path = config_home.join("systemd/user").join(UNIT_NAME);
    let binary = current_binary()?;
    let unit = match render_unit(&binary) {
        Ok(unit) => unit,
        Err(message) => {
            eprintln!("syncd service install: {message}");
            return Ok(Outcome::Usage);
        }
    };
    let existing = match std::fs::read_to_string(&unit_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", unit_path.display()));
        }
    };
    let action = decide(existing.as_deref(), &unit, args.force);
    let backup = (action == Action::Replaced).then(|| with_suffix(&unit_path, ".bak"));
    let writes = matches!(action, Action::Created | Action::Updated | Action::Replaced);
    if writes && !args.dry_run {
        if let Some(backup) = &backup {
            std::fs::copy(&unit_path, backup)
                .with_context(|| format!("cannot keep the old unit as {}", backup.display()))?;
        }
        write_unit(&unit_path, &unit)?;
    }

    let manager = detect_user_manager(&args.systemctl, env);
    let user = env("USER").or_else(|| env("LOGNAME"));
    let linger = user
        .as_deref()
        .map(|u| Path::new("/var/lib/systemd/linger").join(u).exists());
    let next_steps = if action == Action::Refused {
        vec![
            format!(
                "syncd service unit | diff {} -",
                sh_quote(&unit_path.display().to_string())
            ),
            "syncd service install --force".to_string(),
        ]
    } else {
        next_steps(action, &manager, user.as_deref(), linger)
    };
    let fallbacks = if manager.available {
        Vec::new()
    } else {
        fallbacks(&binary)
    };
    let mut warnings = readiness_warnings(&config_home, &manager, env);
    if let Some(warning) = build_dir_warning(&binary) {
        warnings.insert(0, warning);
    }
    let report = Report {
        unit_path,
        written: writes && !args.dry_run,
        action,
        dry_run: args.dry_run,
        backup,
        binary,
        user_manager: manager.available,
        user_manager_problem: manager.problem.clone(),
        linger,
        next_steps,
        fallbacks,
        warnings,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        write_human(&mut std::io::stdout().lock(), &report)?;
    }
    Ok(if action == Action::Refused {
        Outcome::SomeFailed
    } else {
        Outcome::Ok
    })
}

/// The unit for `binary`: the committed unit with `ExecStart=` running
/// `binary`, under a header whose checksum covers everything below it.
pub(crate) fn render_unit(binary: &Path) -> Result<String, String> {
    let exec = exec_path(binary)?;
    let mut replaced = 0;
    let body: String = UNIT_TEMPLATE
        .lines()
        .map(|line| {
            match line
                .strip_prefix("ExecStart=")
                .and_then(|rest| rest.strip_prefix(TEMPLATE_BINARY))
            {
                Some(arguments) => {
                    replaced += 1;
                    format!("ExecStart={exec}{arguments}\n")
                }
                None => format!("{line}\n"),
            }
        })
        .collect();
    if replaced != 1 {
        return Err(format!(
            "the built-in unit has {replaced} `ExecStart={TEMPLATE_BINARY}` lines, not 1"
        ));
    }
    Ok(format!(
        "# Written by `syncd service install` (syncd {}). A later install replaces\n\
         # this file only while it is as written (the checksum below matches): keep\n\
         # local changes in a drop-in, `systemctl --user edit syncd`.\n\
         {CHECKSUM_PREFIX}{}\n{body}",
        env!("CARGO_PKG_VERSION"),
        sha256_hex(body.as_bytes())
    ))
}

/// What to do with the unit file, given what is there now.
fn decide(existing: Option<&str>, unit: &str, force: bool) -> Action {
    match existing {
        None => Action::Created,
        Some(text) if text == unit => Action::Unchanged,
        Some(text) if written_by_syncd_unedited(text) => Action::Updated,
        Some(_) if force => Action::Replaced,
        Some(_) => Action::Refused,
    }
}

/// Whether `text` is a unit `install` wrote that nobody changed since: its
/// checksum line matches what follows it.
fn written_by_syncd_unedited(text: &str) -> bool {
    let mut offset = 0;
    for line in text.split_inclusive('\n').take(10) {
        offset += line.len();
        if let Some(hex) = line.trim_end().strip_prefix(CHECKSUM_PREFIX) {
            return sha256_hex(&text.as_bytes()[offset..]) == hex;
        }
    }
    false
}

/// `binary` as the first word of `ExecStart=`: `%` doubled (specifiers),
/// quoted when it holds spaces. systemd refuses executables whose path holds
/// quotes, backslashes or control characters, so those are refused here.
fn exec_path(binary: &Path) -> Result<String, String> {
    let Some(text) = binary.to_str() else {
        return Err(format!(
            "{} is not valid UTF-8; systemd cannot run it from a unit",
            binary.display()
        ));
    };
    if !binary.is_absolute() {
        return Err(format!("{text} is not an absolute path"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_control() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err(format!(
            "systemd cannot run an executable whose path holds {c:?} ({text}); install \
             syncd under a plainer path, e.g. `cargo install --root ~/.local`"
        ));
    }
    let escaped = text.replace('%', "%%");
    Ok(if escaped.chars().any(char::is_whitespace) {
        format!("\"{escaped}\"")
    } else {
        escaped
    })
}

/// A binary in a cargo build directory (`target/release/syncd`, beside
/// cargo's `.fingerprint` and `deps`) is replaced by the next `cargo build`
/// and removed by `cargo clean`: a unit running it breaks with the clone.
fn build_dir_warning(binary: &Path) -> Option<String> {
    let dir = binary.parent()?;
    if !(dir.join(".fingerprint").is_dir() && dir.join("deps").is_dir()) {
        return None;
    }
    Some(format!(
        "this syncd runs from cargo's build directory {}: the unit would run a file the next `cargo build` replaces and `cargo clean` deletes. Install it first with `cargo install --path . --locked` (into ~/.cargo/bin), then run `~/.cargo/bin/syncd service install`",
        dir.display()
    ))
}

fn current_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot tell where this syncd binary is")
}

/// Writes the unit atomically (temporary name, rename): the manager never
/// reads half a unit.
fn write_unit(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("the unit path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Whether a systemd user manager answers `systemctl --user`.
#[derive(Debug, Default)]
struct UserManager {
    available: bool,
    problem: Option<String>,
    /// `XDG_RUNTIME_DIR` was unset but the manager answered at this one:
    /// `systemctl --user` needs it exported.
    runtime_dir_hint: Option<PathBuf>,
    /// The manager's environment (`systemctl --user show-environment`).
    environment: Vec<(String, String)>,
}

fn detect_user_manager(systemctl: &Path, env: impl Fn(&str) -> Option<String>) -> UserManager {
    let unavailable = |problem: String| UserManager {
        problem: Some(problem),
        ..UserManager::default()
    };
    let Some(program) = process::find_program(systemctl, env("PATH").as_deref().map(OsStr::new))
    else {
        return unavailable(format!(
            "no `{}` on PATH: this machine does not run systemd",
            systemctl.display()
        ));
    };
    let uid = process::current_uid();
    let default_runtime_dir = PathBuf::from(format!("/run/user/{uid}"));
    let runtime_dir = env("XDG_RUNTIME_DIR").map(PathBuf::from);
    let hint = (runtime_dir.is_none()
        && (default_runtime_dir.join("bus").exists()
            || default_runtime_dir.join("systemd/private").exists()))
    .then(|| default_runtime_dir.clone());

    let mut command = Command::new(&program);
    command
        .args(["--user", "show-environment"])
        .stdin(Stdio::null());
    if let Some(dir) = &hint {
        command.env("XDG_RUNTIME_DIR", dir);
    }
    let output = match process::output_within(command, SYSTEMCTL_TIMEOUT) {
        Ok(output) => output,
        Err(e) => {
            return unavailable(format!(
                "`{} --user show-environment` did not answer: {e}",
                program.display()
            ));
        }
    };
    if output.status.success() {
        let environment = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        return UserManager {
            available: true,
            problem: None,
            runtime_dir_hint: hint,
            environment,
        };
    }
    let said = String::from_utf8_lossy(&output.stderr)
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(" (systemctl: {})", l.trim()))
        .unwrap_or_default();
    let problem = if !Path::new("/run/systemd/system").exists() {
        "systemd is not this machine's service manager: no /run/systemd/system".to_string()
    } else if runtime_dir.is_none() && hint.is_none() {
        format!(
            "XDG_RUNTIME_DIR is not set and {} holds no user bus: no systemd user manager \
             runs for you on this node (sites often start one only for logins through \
             pam_systemd)",
            default_runtime_dir.display()
        )
    } else {
        "`systemctl --user` reaches no user manager".to_string()
    };
    unavailable(format!("{problem}{said}"))
}

fn next_steps(
    action: Action,
    manager: &UserManager,
    user: Option<&str>,
    linger: Option<bool>,
) -> Vec<String> {
    let mut steps = Vec::new();
    if let Some(dir) = &manager.runtime_dir_hint {
        steps.push(format!("export XDG_RUNTIME_DIR={}", dir.display()));
    }
    steps.push("systemctl --user daemon-reload".to_string());
    if matches!(action, Action::Updated | Action::Replaced) {
        steps.push("systemctl --user enable syncd".to_string());
        steps.push("systemctl --user restart syncd".to_string());
    } else {
        steps.push("systemctl --user enable --now syncd".to_string());
    }
    if linger != Some(true) {
        steps.push(format!(
            "loginctl enable-linger {}",
            user.map_or_else(|| "$USER".to_string(), sh_quote)
        ));
    }
    steps
}

fn fallbacks(binary: &Path) -> Vec<Fallback> {
    let syncd = sh_quote(&binary.display().to_string());
    let tmux_loop = format!("until ionice -c 3 {syncd} run --nice 10; do sleep 30; done");
    vec![
        Fallback {
            name: "tmux",
            summary: "on this login node, restarted when it fails; gone when the node \
                      reboots or if the site kills what a logout leaves behind. Stop it \
                      with `tmux send-keys -t syncd C-c` (killing the session sends SIGHUP, \
                      which syncd takes as `reload`)"
                .to_string(),
            commands: vec![format!(
                "tmux new-session -d -s syncd {}",
                sh_quote(&tmux_loop)
            )],
        },
        Fallback {
            name: "scrontab",
            summary: "a Slurm cron job (`scrontab -e`, add these lines): one instance at a \
                      time, started again within 10 minutes after its time limit ends it. \
                      It runs on a compute node: only useful where such jobs reach the W&B \
                      server; PARTITION is one whose nodes do"
                .to_string(),
            commands: vec![
                "#SCRON --job-name=syncd".to_string(),
                "#SCRON --partition=PARTITION".to_string(),
                "#SCRON --time=1-00:00:00".to_string(),
                "#SCRON --cpus-per-task=1".to_string(),
                "#SCRON --mem=1G".to_string(),
                format!("*/10 * * * * exec {syncd} run --wait"),
            ],
        },
        Fallback {
            name: "sbatch",
            summary: "one long batch job on a partition whose nodes reach the W&B server \
                      (PARTITION); submit it again when it ends"
                .to_string(),
            commands: vec![format!(
                "sbatch --job-name=syncd --partition=PARTITION --time=7-00:00:00 \
                 --cpus-per-task=1 --mem=1G --output=syncd-%j.log --wrap {}",
                sh_quote(&format!("exec {syncd} run --wait"))
            )],
        },
    ]
}

/// Problems the daemon would meet once the manager starts it, judged from
/// the environment the unit gives it: the manager's (when known), `HOME`, and
/// the unit's `EnvironmentFile=`.
fn readiness_warnings(
    config_home: &Path,
    manager: &UserManager,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let env_file = config_home.join("syncd/environment");
    let mut unit_env: Vec<(String, String)> = manager.environment.clone();
    // The unit went under our XDG_CONFIG_HOME, so a manager that reads it
    // shares it (and %E, the environment file's directory, resolves there).
    for key in ["HOME", "XDG_CONFIG_HOME"] {
        if let Some(value) = env(key) {
            unit_env.push((key.into(), value));
        }
    }
    // A file the user controls: a named pipe there must not hang install.
    let env_text = crate::fs::open_regular(&env_file).and_then(std::io::read_to_string);
    if let Ok(text) = &env_text {
        unit_env.extend(parse_environment_file(text));
    }
    let unit_var = |key: &str| {
        unit_env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let mut warnings = Vec::new();
    if let Err(e) = &env_text
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warnings.push(format!(
            "cannot read {} ({e}): what it sets for the daemon was not checked",
            env_file.display()
        ));
    }

    let (config_path, user_env) = match config::config_file(unit_var)
        .and_then(|config| Ok((config, dotenv::user_env_file(unit_var)?)))
    {
        Ok(paths) => paths,
        Err(e) => {
            warnings.push(format!("the daemon will not start: {e}"));
            return warnings;
        }
    };
    let file = match FileConfig::load(&config_path, false) {
        Ok(file) => file,
        Err(e) => {
            warnings.push(format!("the daemon will not start: {e}"));
            FileConfig::default()
        }
    };
    if file.roots.as_ref().is_none_or(Vec::is_empty) && unit_var("SYNCD_ROOTS").is_none() {
        warnings.push(format!(
            "no roots to watch: add `roots = [\"/scratch/me/wandb\"]` to {} (or \
             SYNCD_ROOTS=… to {}), else the daemon exits at once",
            config_path.display(),
            env_file.display()
        ));
    }
    // The key the daemon would use for a run without a `.env` of its own:
    // its `syncd/.env`, the unit's environment, netrc (as `Clients` resolves
    // it, with the config file's server first).
    let lookup = |key: &str| match key {
        "WANDB_BASE_URL" => (file.base_url.clone())
            .filter(|url| !url.trim().is_empty())
            .or_else(|| unit_var(key)),
        _ => unit_var(key),
    };
    let no_run_dir = user_env.parent().unwrap_or(Path::new("/"));
    match resolve_destination(
        no_run_dir,
        no_run_dir,
        &user_env,
        lookup,
        process::current_uid(),
    ) {
        Ok(_) => {}
        Err(missing @ DestinationError::MissingKey(_)) => {
            let shell_has_key = env("WANDB_API_KEY").is_some();
            warnings.push(format!(
                "{missing}{}; the service does not see your shell's environment: put \
                 WANDB_API_KEY=… in {} (chmod 600), or use the netrc file",
                if shell_has_key {
                    " (your shell's WANDB_API_KEY stays in your shell)"
                } else {
                    ""
                },
                env_file.display()
            ));
        }
        Err(other) => warnings.push(format!("runs will not be uploaded: {other}")),
    }
    let manager_path = unit_var("PATH").unwrap_or_else(|| DEFAULT_MANAGER_PATH.to_string());
    if let Some(squeue) =
        process::find_program(Path::new("squeue"), env("PATH").as_deref().map(OsStr::new))
        && process::find_program(Path::new("squeue"), Some(OsStr::new(&manager_path))).is_none()
        && let Some(dir) = squeue.parent()
    {
        warnings.push(format!(
            "squeue is in {dir}, which the service's PATH ({manager_path}) lacks: add \
             `PATH={dir}:{manager_path}` to {file}, else the daemon cannot ask Slurm and \
             finalizes runs only after --quiescence",
            dir = dir.display(),
            file = env_file.display()
        ));
    }
    warnings
}

/// `KEY=value` lines of a systemd environment file (comments, blank lines and
/// surrounding quotes handled; enough to judge the daemon's environment).
fn parse_environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            (key.trim().to_string(), unquoted.to_string())
        })
        .collect()
}

/// `text` as one POSIX shell word.
fn sh_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The report for a person; an error is stdout going away (a closed pipe).
fn write_human(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {}",
        report.unit_path.display(),
        report.action.past(report.dry_run)
    )?;
    if let Some(backup) = &report.backup {
        let verb = if report.dry_run {
            "would be kept"
        } else {
            "kept"
        };
        writeln!(out, "  the previous unit {verb} as {}", backup.display())?;
    }
    writeln!(
        out,
        "  runs {} run --log-format json",
        report.binary.display()
    )?;
    if report.action == Action::Refused {
        writeln!(out)?;
        writeln!(
            out,
            "It differs from the unit syncd writes (edited by hand, or not syncd's). See how:"
        )?;
        for step in &report.next_steps {
            writeln!(out, "  {step}")?;
        }
        writeln!(
            out,
            "The last command replaces it (keeping it as {UNIT_NAME}.bak); local changes \
             belong in a drop-in (`systemctl --user edit syncd`)."
        )?;
        eprintln!(
            "syncd service install: {} differs from the unit syncd writes; not replaced \
             without --force",
            report.unit_path.display()
        );
        return Ok(());
    }
    writeln!(out)?;
    if report.user_manager {
        writeln!(out, "Next steps:")?;
    } else {
        writeln!(
            out,
            "No systemd user manager answers here: {}.",
            report.user_manager_problem.as_deref().unwrap_or("unknown")
        )?;
        writeln!(
            out,
            "Where one runs (another login node, or ask your admins), the next steps are:"
        )?;
    }
    for step in &report.next_steps {
        writeln!(out, "  {step}")?;
    }
    if report.next_steps.iter().any(|s| s.starts_with("loginctl")) {
        writeln!(
            out,
            "(enable-linger keeps your user manager, and syncd, running while you are \
             logged out; some sites do not allow it)"
        )?;
    }
    writeln!(
        out,
        "Then `systemctl --user status syncd` and `syncd status` show it working; logs: \
         `journalctl --user -u syncd`."
    )?;
    if !report.fallbacks.is_empty() {
        writeln!(out)?;
        writeln!(out, "Until then, keep `syncd run` going one of these ways:")?;
        for fallback in &report.fallbacks {
            writeln!(out, "- {}: {}", fallback.name, fallback.summary)?;
            for command in &fallback.commands {
                writeln!(out, "    {command}")?;
            }
        }
    }
    if !report.warnings.is_empty() {
        writeln!(out)?;
        for warning in &report.warnings {
            writeln!(out, "warning: {warning}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_names_the_binary_once_and_checks_itself() {
        let unit = render_unit(Path::new("/opt/syncd 1/bin/100%/syncd")).unwrap();
        let exec: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(
            exec,
            ["ExecStart=\"/opt/syncd 1/bin/100%%/syncd\" run --log-format json"]
        );
        assert!(written_by_syncd_unedited(&unit));
        let edited = unit.replace("Nice=10", "Nice=5");
        assert!(!written_by_syncd_unedited(&edited));
        assert!(!written_by_syncd_unedited(UNIT_TEMPLATE));
    }

    #[test]
    fn a_binary_in_a_cargo_build_directory_is_warned_about() {
        let tmp = tempfile::tempdir().unwrap();
        let release = tmp.path().join("target/release");
        std::fs::create_dir_all(release.join(".fingerprint")).unwrap();
        std::fs::create_dir_all(release.join("deps")).unwrap();
        let warning = build_dir_warning(&release.join("syncd")).unwrap();
        assert!(
            warning.contains("cargo install --path . --locked"),
            "{warning}"
        );
        assert!(build_dir_warning(&tmp.path().join("bin/syncd")).is_none());
    }

    #[test]
    fn decisions() {
        let unit = render_unit(Path::new("/usr/bin/syncd")).unwrap();
        let other = render_unit(Path::new("/opt/syncd")).unwrap();
        assert_eq!(decide(None, &unit, false), Action::Created);
        assert_eq!(decide(Some(&unit), &unit, false), Action::Unchanged);
        assert_eq!(decide(Some(&other), &unit, false), Action::Updated);
        let edited = other.replace("Nice=10", "Nice=5");
        assert_eq!(decide(Some(&edited), &unit, false), Action::Refused);
        assert_eq!(decide(Some(&edited), &unit, true), Action::Replaced);
        assert_eq!(decide(Some(UNIT_TEMPLATE), &unit, false), Action::Refused);
    }

    #[test]
    fn paths_systemd_cannot_run_are_refused() {
        for bad in [
            "/a\"b/syncd",
            "/a'b/syncd",
            "/a\\b/syncd",
            "/a\nb/syncd",
            "syncd",
        ] {
            assert!(exec_path(Path::new(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(exec_path(Path::new("/h/$x/syncd")).unwrap(), "/h/$x/syncd");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/usr/bin/syncd"), "/usr/bin/syncd");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn an_environment_file_that_cannot_be_read_is_warned_about() {
        let home = tempfile::tempdir().unwrap();
        // A directory where the file should be: unreadable even as root.
        std::fs::create_dir_all(home.path().join("syncd/environment")).unwrap();
        let warnings = readiness_warnings(home.path(), &UserManager::default(), |_| None);
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("cannot read ") && w.contains("syncd/environment")),
            "{warnings:?}"
        );
    }

    #[test]
    fn environment_files() {
        let parsed = parse_environment_file(
            "# comment\n; also\n\nWANDB_API_KEY=\"abc\"\nPATH=/opt/slurm/bin:/usr/bin\n X = 'y' \n",
        );
        assert_eq!(
            parsed,
            [
                ("WANDB_API_KEY".to_string(), "abc".to_string()),
                ("PATH".to_string(), "/opt/slurm/bin:/usr/bin".to_string()),
                ("X".to_string(), "y".to_string()),
            ]
        );
    }
}
