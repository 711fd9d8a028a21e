//! `syncd status`: what the daemon is doing and where every run stands. It
//! reads the ledger and the daemon's heartbeat file only, so it works the
//! same whether the daemon runs or not (and says which).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::Outcome;
use crate::cli::StatusArgs;
use crate::config;
use crate::engine::heartbeat::{self, Activity, Heartbeat, SlurmHealth};
use crate::ledger::{Ledger, Phase, RunLedger};
use crate::sink::wandb::artifact::{self, ArtifactStatus};

/// Version of the `--json` document.
pub(crate) const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub(crate) struct StatusReport {
    pub schema: u32,
    #[serde(with = "crate::paths::serde_path")]
    pub state_dir: PathBuf,
    pub daemon: DaemonStatus,
    pub runs: Vec<RunStatus>,
    /// Ledger files that could not be read.
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DaemonStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub started_at: Option<String>,
    pub uptime_secs: Option<u64>,
    pub online: Option<bool>,
    /// `online`, `offline` or `not contacted yet`.
    pub network: Option<String>,
    /// While offline: since when, why, and when the next probe goes.
    pub offline_since: Option<String>,
    pub offline_error: Option<String>,
    pub next_probe: Option<String>,
    pub last_contact: Option<String>,
    /// Whether Slurm answers the daemon (absent when it does not ask).
    pub slurm: Option<SlurmHealth>,
    /// The daemon's loop has not turned since then: it waits on a
    /// filesystem that does not answer, most likely.
    pub loop_stalled_since: Option<String>,
    /// Servers holding requests back with `429 Retry-After` (until when,
    /// asked, and the capped wait).
    pub rate_limited: Vec<String>,
    /// What the daemon found wrong under its roots (unreadable roots and
    /// run directories, damaged run files), each with when.
    pub problems: Vec<String>,
    pub heartbeat_at: Option<String>,
    pub base_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunStatus {
    pub key: String,
    pub run_id: String,
    /// The display name on the server: the naming template's (see
    /// `naming`), else the run's own.
    pub name: Option<String>,
    pub group: Option<String>,
    pub entity: Option<String>,
    pub project: Option<String>,
    #[serde(with = "crate::paths::serde_opt_path")]
    pub path: Option<PathBuf>,
    /// queued, live, uploading, waiting, synced, finalized, quarantined,
    /// failed.
    pub state: &'static str,
    /// What a `waiting` run waits for: `offline` (the network; the next
    /// probe is `next_retry`) or `retry` (a backoff after a failure).
    pub waiting_for: Option<String>,
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
    /// The artifacts the run logged: queued, uploading, committed or not
    /// uploadable (with why).
    pub artifacts: Vec<ArtifactStatus>,
}

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<Outcome> {
    let env = crate::config::ProcessEnv;
    let state_dir = config::state_dir(args.state_dir.clone(), env)?;
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
pub(crate) fn status(
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
            network: b
                .network
                .clone()
                .or_else(|| Some(if b.online { "online" } else { "offline" }.to_string())),
            offline_since: b.offline_since.clone(),
            offline_error: b.offline_error.clone(),
            next_probe: b.next_probe.clone(),
            last_contact: b.last_contact.clone(),
            slurm: b.slurm.clone(),
            loop_stalled_since: b.loop_stalled_since.clone(),
            rate_limited: b.rate_limited.clone(),
            problems: b.problems.clone(),
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
            network: None,
            offline_since: None,
            offline_error: None,
            next_probe: None,
            last_contact: None,
            slurm: None,
            loop_stalled_since: None,
            rate_limited: Vec::new(),
            problems: Vec::new(),
            heartbeat_at: None,
            base_url: None,
        },
    };
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    if let Ok(ledger) = Ledger::open_existing(state_dir) {
        let mut entries = Vec::new();
        for entry in ledger.all() {
            match entry {
                Ok(entry) => entries.push(entry),
                Err(e) => errors.push(crate::errors::one_line(&e)),
            }
        }
        let paths = entries
            .iter()
            .flat_map(|e| e.fragments.iter().map(|f| f.path.clone()))
            .collect();
        let sizes = sizes_within(paths, SIZES_DEADLINE);
        for entry in &entries {
            runs.push(run_status(entry, beat.as_ref(), &sizes));
        }
    }
    // Runs the daemon follows that have no ledger entry yet: new ones
    // (queued, or waiting while it is offline), and ones refused before their
    // first upload (a `.env` it will not read; keyed `unsynced:<dir>`).
    // One row per run: a run followed under another key than its ledger
    // entry's (a `sync` that failed before the daemon resolved it, say)
    // is the ledger's row, with what the daemon says of it now.
    if let Some(beat) = &beat {
        let in_ledger: HashSet<String> = runs.iter().map(|r| r.key.clone()).collect();
        for (key, activity) in &beat.activity {
            if in_ledger.contains(key) {
                continue;
            }
            let same_dir = activity.path.as_ref().and_then(|dir| {
                runs.iter_mut().find(|r| {
                    r.path.as_ref() == Some(dir)
                        && r.run_id == activity.run_id.as_deref().unwrap_or_default()
                })
            });
            match same_dir {
                Some(row) => apply_activity(row, activity),
                None => runs.push(unsynced_status(key, activity)),
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
        "waiting" => ("waiting", None),
        _ => ("queued", None),
    };
    // From the daemon's last look: status does not touch runs' disks for
    // the runs the daemon follows.
    let on_disk = activity.bytes_on_disk.unwrap_or(0);
    let acked = activity.bytes_acked.unwrap_or(0);
    RunStatus {
        key: key.to_string(),
        run_id: activity.run_id.clone().unwrap_or_default(),
        name: None,
        group: None,
        entity: activity.entity.clone(),
        project: activity.project.clone(),
        path: activity.path.clone(),
        state,
        waiting_for: activity.reason.clone().filter(|_| state == "waiting"),
        reason,
        history_lines_sent: 0,
        bytes_sent: acked,
        bytes_on_disk: on_disk,
        behind_bytes: on_disk.saturating_sub(acked),
        last_upload: None,
        slurm_job: activity.slurm_job.clone(),
        slurm_state: activity.slurm_state.clone(),
        exit_code: None,
        last_error: activity.error.clone(),
        next_retry: activity.next_retry.clone(),
        warnings: Vec::new(),
        artifacts: Vec::new(),
    }
}

/// What the daemon says of a run now, over what its ledger row says.
fn apply_activity(row: &mut RunStatus, activity: &Activity) {
    let now = unsynced_status(&row.key, activity);
    if !matches!(row.state, "synced" | "finalized") || now.state == "uploading" {
        row.state = now.state;
        row.waiting_for = now.waiting_for;
        if now.reason.is_some() {
            row.reason = now.reason;
        }
    }
    row.next_retry = activity.next_retry.clone().or(row.next_retry.take());
    fill_gaps(row, activity);
}

/// What the ledger row lacks and the daemon knows: where the run is and
/// where it goes (before its first upload the ledger has no fragments or
/// server side), what is on disk, Slurm.
fn fill_gaps(row: &mut RunStatus, activity: &Activity) {
    row.path = row.path.take().or_else(|| activity.path.clone());
    row.project = row.project.take().or_else(|| activity.project.clone());
    row.entity = row.entity.take().or_else(|| activity.entity.clone());
    if let Some(on_disk) = activity.bytes_on_disk {
        row.bytes_on_disk = row.bytes_on_disk.max(on_disk);
        row.behind_bytes = row.bytes_on_disk.saturating_sub(row.bytes_sent);
    }
    row.slurm_job = row.slurm_job.take().or_else(|| activity.slurm_job.clone());
    row.slurm_state = activity.slurm_state.clone().or(row.slurm_state.take());
}

/// How long `status` waits for the sizes of runs' files: a filesystem that
/// does not answer (a hung NFS mount) must not hang `status` with it.
const SIZES_DEADLINE: Duration = Duration::from_secs(2);

/// The sizes of `paths` (`None`: no such file), asked from a thread of
/// their own. A path missing from the answer is one whose filesystem did
/// not answer within `deadline`; the thread is left to it.
fn sizes_within(paths: Vec<PathBuf>, deadline: Duration) -> HashMap<PathBuf, Option<u64>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for path in paths {
            let size = std::fs::metadata(&path).map(|m| m.len()).ok();
            if tx.send((path, size)).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + deadline;
    let mut sizes = HashMap::new();
    while let Ok((path, size)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        sizes.insert(path, size);
    }
    sizes
}

fn run_status(
    entry: &RunLedger,
    beat: Option<&Heartbeat>,
    sizes: &HashMap<PathBuf, Option<u64>>,
) -> RunStatus {
    let activity = beat.and_then(|b| b.activity.get(&entry.key));
    let mut unanswered = false;
    let on_disk: u64 = entry
        .fragments
        .iter()
        .map(|f| match sizes.get(&f.path) {
            Some(size) => size.unwrap_or(f.cursor),
            None => {
                unanswered = true;
                f.cursor
            }
        })
        .sum();
    let sent: u64 = entry.fragments.iter().map(|f| f.cursor).sum();
    // The ledger is written after every step, the heartbeat every 2 s: a
    // settled phase in the ledger is the newer truth.
    let (state, reason) = match (entry.phase, activity.map(|a| a.state.as_str())) {
        (Phase::Finalized, _) => ("finalized", entry.finalized_reason.clone()),
        (Phase::Synced, _) => ("synced", None),
        (_, Some("uploading")) => ("uploading", None),
        (_, Some("waiting")) => ("waiting", None),
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
    let mut row = RunStatus {
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
        waiting_for: activity
            .filter(|_| state == "waiting")
            .and_then(|a| a.reason.clone()),
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
        artifacts: artifact::statuses(entry),
    };
    if unanswered {
        row.warnings.push(format!(
            "size on disk unknown: its filesystem did not answer within {} s",
            SIZES_DEADLINE.as_secs()
        ));
    }
    if let Some(activity) = activity {
        fill_gaps(&mut row, activity);
    }
    row
}

fn write_human(out: &mut impl Write, report: &StatusReport) -> std::io::Result<()> {
    let d = &report.daemon;
    if d.running {
        writeln!(
            out,
            "daemon: running, pid {} on {}, up {}, uploading to {}",
            d.pid.unwrap_or_default(),
            d.host.as_deref().unwrap_or("?"),
            humantime::format_duration(Duration::from_secs(d.uptime_secs.unwrap_or(0))),
            d.base_url.as_deref().unwrap_or("?"),
        )?;
        let last_contact = d.last_contact.as_deref().unwrap_or("never");
        match d.network.as_deref() {
            Some("offline") => writeln!(
                out,
                "network: OFFLINE since {} ({}); next probe {}; last server contact {last_contact}",
                d.offline_since.as_deref().unwrap_or("?"),
                d.offline_error.as_deref().unwrap_or("no answer"),
                d.next_probe.as_deref().unwrap_or("soon"),
            )?,
            Some("online") => writeln!(out, "network: online, last server contact {last_contact}")?,
            _ => writeln!(out, "network: server not contacted yet")?,
        }
        for pause in &d.rate_limited {
            writeln!(out, "rate limited: {pause}")?;
        }
        for problem in &d.problems {
            writeln!(out, "problem: {problem}")?;
        }
        if let Some(since) = &d.loop_stalled_since {
            writeln!(
                out,
                "loop: STALLED since {since}: it waits on something that does not answer, most likely a filesystem under a watched root (the lease and this status are kept meanwhile)"
            )?;
        }
        if let Some(SlurmHealth {
            answering: false,
            since,
            error,
        }) = &d.slurm
        {
            writeln!(
                out,
                "Slurm: NOT ANSWERING since {} ({}); runs are finalized by the quiescence timeout meanwhile",
                since.as_deref().unwrap_or("?"),
                error.as_deref().unwrap_or("no answer"),
            )?;
        }
    } else {
        writeln!(
            out,
            "daemon not running (state directory {})",
            crate::paths::display(&report.state_dir)
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
            match (&r.next_retry, r.waiting_for.as_deref()) {
                (Some(next), Some("offline")) => notes.push(format!("next probe {next}")),
                (Some(next), _) => notes.push(format!("next retry {next}")),
                _ => {}
            }
            notes.extend(r.warnings.iter().cloned());
            notes.extend(r.artifacts.iter().map(artifact_note));
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
                match &r.waiting_for {
                    Some(what) => format!("{} ({what})", r.state),
                    None => r.state.to_string(),
                },
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

/// One line for an artifact in the notes column.
fn artifact_note(a: &ArtifactStatus) -> String {
    let what = format!("artifact {} ({})", a.name, a.kind);
    match (a.state, &a.reason) {
        (_, Some(why)) => format!("{what}: not uploadable: {why}"),
        ("uploading", None) => format!("{what}: uploading, {}/{} files", a.files_acked, a.files),
        (state, None) => format!("{what}: {state}"),
    }
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
            reason: None,
            entity: None,
            project: None,
            bytes_on_disk: None,
            bytes_acked: None,
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
            network: None,
            offline_since: None,
            offline_error: None,
            next_probe: None,
            slurm: None,
            loop_stalled_since: None,
            rate_limited: Vec::new(),
            problems: Vec::new(),
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

    #[test]
    fn a_run_waiting_offline_is_one_row_with_what_is_behind_and_the_next_probe() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let run_dir = tmp.path().join("wandb/offline-run-20261201_000000-abc");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(run_dir.join("run-abc.wandb"), vec![0u8; 5000]).unwrap();
        // What a `sync` that failed offline leaves: an entry without
        // fragments or server side, under its own key.
        let mut failed = RunLedger::new("sync-key".into(), "abc".into(), "http://s".into());
        failed.phase = Phase::Failed;
        failed
            .fragments
            .push(crate::ledger::FragmentProgress::unread(
                run_dir.join("run-abc.wandb"),
            ));
        ledger.save(&failed).unwrap();
        let now = SystemTime::now();
        let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let probe_at = at(now + Duration::from_secs(8));
        let beat = Heartbeat {
            pid: std::process::id(),
            host: "h".into(),
            started_at: at(now),
            heartbeat_at: at(now),
            stale_after_secs: 15,
            online: false,
            last_contact: None,
            network: Some("offline".into()),
            offline_since: Some(at(now)),
            offline_error: Some("timed out".into()),
            next_probe: Some(probe_at.clone()),
            slurm: None,
            loop_stalled_since: None,
            rate_limited: Vec::new(),
            problems: Vec::new(),
            base_url: "http://s".into(),
            activity: [(
                "unsynced:somewhere".to_string(),
                Activity {
                    state: "waiting".into(),
                    reason: Some("offline".into()),
                    next_retry: Some(probe_at.clone()),
                    path: Some(run_dir.clone()),
                    slurm_job: None,
                    slurm_state: None,
                    run_id: Some("abc".into()),
                    error: None,
                    entity: None,
                    project: Some("proj".into()),
                    bytes_on_disk: Some(5000),
                    bytes_acked: Some(0),
                },
            )]
            .into_iter()
            .collect(),
        };
        heartbeat::write(tmp.path(), &beat).unwrap();
        let report = status(tmp.path(), now, None, None);
        assert_eq!(report.runs.len(), 1, "{:#?}", report.runs);
        let row = &report.runs[0];
        assert_eq!(row.state, "waiting");
        assert_eq!(row.waiting_for.as_deref(), Some("offline"));
        assert_eq!(row.next_retry.as_deref(), Some(probe_at.as_str()));
        assert_eq!(row.project.as_deref(), Some("proj"));
        assert_eq!(row.behind_bytes, 5000);
        let mut text = Vec::new();
        write_human(&mut text, &report).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("waiting (offline)"), "{text}");
        assert!(text.contains("OFFLINE since"), "{text}");
        assert!(text.contains(&format!("next probe {probe_at}")), "{text}");
    }
}
