//! `syncd status`: what the daemon is doing and where every run stands. It
//! reads the ledger and the daemon's heartbeat file only, so it works the
//! same whether the daemon runs or not (and says which).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Outcome;
use crate::cli::StatusArgs;
use crate::config;
use crate::engine::heartbeat::{self, Activity, Heartbeat};
use crate::ledger::{Ledger, Phase, RunLedger};

/// Version of the `--json` document.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub schema: u32,
    pub state_dir: PathBuf,
    pub daemon: DaemonStatus,
    pub runs: Vec<RunStatus>,
    /// Ledger files that could not be read.
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub started_at: Option<String>,
    pub uptime_secs: Option<u64>,
    pub online: Option<bool>,
    pub last_contact: Option<String>,
    pub heartbeat_at: Option<String>,
    pub base_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub key: String,
    pub run_id: String,
    /// The display name on the server: the naming template's (see
    /// `naming`), else the run's own.
    pub name: Option<String>,
    pub group: Option<String>,
    pub entity: Option<String>,
    pub project: Option<String>,
    pub path: Option<PathBuf>,
    /// queued, live, uploading, synced, finalized, quarantined, failed.
    pub state: &'static str,
    /// Why a run is finalized, quarantined or failed.
    pub reason: Option<String>,
    pub history_lines_sent: u64,
    pub bytes_sent: u64,
    pub bytes_on_disk: u64,
    pub behind_bytes: u64,
    pub last_upload: Option<String>,
    pub slurm_job: Option<String>,
    pub slurm_state: Option<String>,
    pub exit_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_retry: Option<String>,
    pub warnings: Vec<String>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<Outcome> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let state_dir = config::state_dir(args.state_dir.clone(), env);
    loop {
        let report = status(
            &state_dir,
            SystemTime::now(),
            args.state.as_deref(),
            args.project.as_deref(),
        );
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        } else {
            if args.watch {
                // Clear the screen and go home, like `watch`.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write_human(&mut out, &report)?;
        }
        out.flush()?;
        if !args.watch {
            return Ok(Outcome::Ok);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Builds the report from the state directory as it is at `now`.
pub fn status(
    state_dir: &Path,
    now: SystemTime,
    state: Option<&str>,
    project: Option<&str>,
) -> StatusReport {
    let beat = heartbeat::read(state_dir).filter(|b| is_fresh(b, now));
    let daemon = match &beat {
        Some(b) => DaemonStatus {
            running: true,
            pid: Some(b.pid),
            host: Some(b.host.clone()),
            started_at: Some(b.started_at.clone()),
            uptime_secs: humantime::parse_rfc3339(&b.started_at)
                .ok()
                .and_then(|s| now.duration_since(s).ok())
                .map(|d| d.as_secs()),
            online: Some(b.online),
            last_contact: b.last_contact.clone(),
            heartbeat_at: Some(b.heartbeat_at.clone()),
            base_url: Some(b.base_url.clone()),
        },
        None => DaemonStatus {
            running: false,
            pid: None,
            host: None,
            started_at: None,
            uptime_secs: None,
            online: None,
            last_contact: None,
            heartbeat_at: None,
            base_url: None,
        },
    };
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    if let Ok(ledger) = Ledger::open_existing(state_dir) {
        for entry in ledger.all() {
            match entry {
                Ok(entry) => runs.push(run_status(&entry, beat.as_ref())),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    // Runs the daemon follows that have no ledger entry yet: new ones
    // (queued, or waiting while it is offline), and ones refused before their
    // first upload (a `.env` it will not read; keyed `unsynced:<dir>`).
    if let Some(beat) = &beat {
        let in_ledger: HashSet<String> = runs.iter().map(|r| r.key.clone()).collect();
        for (key, activity) in &beat.activity {
            if !in_ledger.contains(key) {
                runs.push(unsynced_status(key, activity));
            }
        }
    }
    runs.retain(|r| {
        state.is_none_or(|s| r.state == s)
            && project.is_none_or(|p| r.project.as_deref() == Some(p))
    });
    StatusReport {
        schema: SCHEMA,
        state_dir: state_dir.to_path_buf(),
        daemon,
        runs,
        errors,
    }
}

fn is_fresh(beat: &Heartbeat, now: SystemTime) -> bool {
    humantime::parse_rfc3339(&beat.heartbeat_at)
        .ok()
        .and_then(|at| now.duration_since(at).ok().or(Some(Duration::ZERO)))
        .is_some_and(|age| age.as_secs() <= beat.stale_after_secs)
}

fn unsynced_status(key: &str, activity: &Activity) -> RunStatus {
    let (state, reason) = match activity.state.as_str() {
        "stopped" => ("failed", activity.error.clone()),
        "uploading" => ("uploading", None),
        _ => ("queued", None),
    };
    let on_disk = activity
        .path
        .as_deref()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wandb"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    RunStatus {
        key: key.to_string(),
        run_id: activity.run_id.clone().unwrap_or_default(),
        name: None,
        group: None,
        entity: None,
        project: None,
        path: activity.path.clone(),
        state,
        reason,
        history_lines_sent: 0,
        bytes_sent: 0,
        bytes_on_disk: on_disk,
        behind_bytes: on_disk,
        last_upload: None,
        slurm_job: activity.slurm_job.clone(),
        slurm_state: activity.slurm_state.clone(),
        exit_code: None,
        last_error: activity.error.clone(),
        next_retry: activity.next_retry.clone(),
        warnings: Vec::new(),
    }
}

fn run_status(entry: &RunLedger, beat: Option<&Heartbeat>) -> RunStatus {
    let activity = beat.and_then(|b| b.activity.get(&entry.key));
    let on_disk: u64 = entry
        .fragments
        .iter()
        .map(|f| std::fs::metadata(&f.path).map_or(f.cursor, |m| m.len()))
        .sum();
    let sent: u64 = entry.fragments.iter().map(|f| f.cursor).sum();
    // The ledger is written after every step, the heartbeat every 2 s: a
    // settled phase in the ledger is the newer truth.
    let (state, reason) = match (entry.phase, activity.map(|a| a.state.as_str())) {
        (Phase::Finalized, _) => ("finalized", entry.finalized_reason.clone()),
        (Phase::Synced, _) => ("synced", None),
        (_, Some("uploading")) => ("uploading", None),
        (Phase::Quarantined, _) => (
            "quarantined",
            entry.last_error.as_ref().map(|e| e.message.clone()),
        ),
        (Phase::Failed, _) => (
            "failed",
            entry.last_error.as_ref().map(|e| e.message.clone()),
        ),
        (_, Some("queued")) | (Phase::Queued, _) => ("queued", None),
        (Phase::Live, _) => ("live", None),
    };
    let identity = &entry.state.identity;
    let slurm_job = activity.and_then(|a| a.slurm_job.clone()).or_else(|| {
        match (
            identity.slurm.get("array_job_id"),
            identity.slurm.get("array_task_id"),
        ) {
            (Some(a), Some(t)) => Some(format!("{a}_{t}")),
            _ => identity.slurm.get("job_id").cloned(),
        }
    });
    RunStatus {
        key: entry.key.clone(),
        run_id: entry.run_id.clone(),
        name: entry
            .naming
            .as_ref()
            .and_then(|n| n.display_name.clone())
            .or_else(|| identity.display_name.clone()),
        group: entry
            .naming
            .as_ref()
            .and_then(|n| n.group.clone())
            .or_else(|| identity.group.clone()),
        entity: entry
            .server
            .as_ref()
            .map(|s| s.entity.clone())
            .or(identity.entity.clone()),
        project: entry
            .server
            .as_ref()
            .map(|s| s.project.clone())
            .or(identity.project.clone()),
        path: entry
            .fragments
            .last()
            .and_then(|f| f.path.parent())
            .map(Path::to_path_buf),
        state,
        reason,
        history_lines_sent: entry.acked.history_lines,
        bytes_sent: sent,
        bytes_on_disk: on_disk,
        behind_bytes: on_disk.saturating_sub(sent),
        last_upload: entry.last_upload.clone(),
        slurm_job,
        slurm_state: activity.and_then(|a| a.slurm_state.clone()),
        exit_code: entry.acked.complete,
        last_error: entry.last_error.as_ref().map(|e| e.message.clone()),
        next_retry: activity.and_then(|a| a.next_retry.clone()),
        warnings: entry.warnings.clone(),
    }
}

fn write_human(out: &mut impl Write, report: &StatusReport) -> std::io::Result<()> {
    let d = &report.daemon;
    if d.running {
        let network = if d.online == Some(true) {
            "online"
        } else {
            "OFFLINE"
        };
        writeln!(
            out,
            "daemon: running, pid {} on {}, up {}, {network}, last server contact {}, uploading to {}",
            d.pid.unwrap_or_default(),
            d.host.as_deref().unwrap_or("?"),
            humantime::format_duration(Duration::from_secs(d.uptime_secs.unwrap_or(0))),
            d.last_contact.as_deref().unwrap_or("never"),
            d.base_url.as_deref().unwrap_or("?"),
        )?;
    } else {
        writeln!(
            out,
            "daemon not running (state directory {})",
            report.state_dir.display()
        )?;
    }
    if report.runs.is_empty() {
        writeln!(out, "no runs in the ledger yet")?;
    } else {
        let mut rows = Vec::new();
        let header = [
            "run",
            "project",
            "state",
            "sent",
            "behind",
            "last upload",
            "slurm",
            "notes",
        ];
        for r in &report.runs {
            let mut notes = Vec::new();
            if let Some(reason) = &r.reason {
                notes.push(reason.clone());
            } else if let Some(e) = &r.last_error {
                notes.push(format!("last error: {e}"));
            }
            if let Some(next) = &r.next_retry {
                notes.push(format!("next retry {next}"));
            }
            notes.extend(r.warnings.iter().cloned());
            let name = match &r.name {
                Some(name) => format!("{name}\n{}", r.run_id),
                None => r.run_id.clone(),
            };
            let slurm = match (&r.slurm_job, &r.slurm_state) {
                (Some(job), Some(state)) => format!("{job} {state}"),
                (Some(job), None) => job.clone(),
                _ => "-".into(),
            };
            rows.push(vec![
                name,
                r.project.clone().unwrap_or_else(|| "-".into()),
                r.state.to_string(),
                format!("{} lines", r.history_lines_sent),
                human_bytes(r.behind_bytes),
                r.last_upload.clone().unwrap_or_else(|| "-".into()),
                slurm,
                notes.join("\n"),
            ]);
        }
        super::write_table(out, &header, rows)?;
    }
    for e in &report.errors {
        writeln!(out, "error: {e}")?;
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / 1024.0 / 1024.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Phase;

    #[test]
    fn a_followed_run_without_a_ledger_entry_is_listed_whatever_its_key() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let mut known = RunLedger::new("wandb-old-1".into(), "old".into(), "http://s".into());
        known.phase = Phase::Synced;
        ledger.save(&known).unwrap();
        let activity = |state: &str, run_id: &str| Activity {
            state: state.into(),
            next_retry: None,
            path: None,
            slurm_job: None,
            slurm_state: None,
            run_id: Some(run_id.into()),
            error: None,
        };
        let now = SystemTime::now();
        let beat = Heartbeat {
            pid: std::process::id(),
            host: "h".into(),
            started_at: humantime::format_rfc3339_seconds(now).to_string(),
            heartbeat_at: humantime::format_rfc3339_seconds(now).to_string(),
            stale_after_secs: 15,
            online: false,
            last_contact: None,
            base_url: "http://s".into(),
            activity: [
                // Resolved and keyed, not uploaded yet (offline).
                ("wandb-new-2".to_string(), activity("queued", "new")),
                (
                    "unsynced:/w/offline-run-x".to_string(),
                    activity("stopped", "x"),
                ),
                ("wandb-old-1".to_string(), activity("queued", "old")),
            ]
            .into_iter()
            .collect(),
        };
        heartbeat::write(tmp.path(), &beat).unwrap();
        let report = status(tmp.path(), now, None, None);
        let mut listed: Vec<(&str, &str)> = (report.runs.iter())
            .map(|r| (r.key.as_str(), r.state))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                ("unsynced:/w/offline-run-x", "failed"),
                ("wandb-new-2", "queued"),
                // Listed once, from its ledger entry.
                ("wandb-old-1", "synced"),
            ]
        );
    }
}
