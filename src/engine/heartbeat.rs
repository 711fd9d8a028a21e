//! The daemon's heartbeat file (`<state dir>/daemon.json`): who runs, since
//! when, whether the server answers, and what each run is doing right now.
//! Written atomically every few seconds by `syncd run`; read by `syncd
//! status`, which trusts it only while `heartbeat_at` is recent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside the state directory.
pub(crate) const FILE: &str = "daemon.json";

/// The activity key of a run the ledger does not know yet.
pub(crate) const UNSYNCED_PREFIX: &str = "unsynced:";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub pid: u32,
    pub host: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339; the daemon is considered gone when this is older than
    /// `stale_after_secs`.
    pub heartbeat_at: String,
    pub stale_after_secs: u64,
    /// The newest request to the server (or probe) got an answer.
    pub online: bool,
    /// RFC 3339 of the server's last answer.
    pub last_contact: Option<String>,
    /// `online`, `offline`, or `not contacted yet` (no request has been
    /// answered or failed since the daemon started).
    #[serde(default)]
    pub network: Option<String>,
    /// RFC 3339 of the first failed attempt of the current outage, and why
    /// the newest one failed.
    #[serde(default)]
    pub offline_since: Option<String>,
    #[serde(default)]
    pub offline_error: Option<String>,
    /// RFC 3339 of the next probe while offline.
    #[serde(default)]
    pub next_probe: Option<String>,
    /// Whether Slurm answers; `None` when the daemon does not ask it.
    #[serde(default)]
    pub slurm: Option<SlurmHealth>,
    /// RFC 3339: the daemon's loop has not turned since then (it waits on
    /// a filesystem that does not answer, say); the keeper thread still
    /// writes this file and renews the lease.
    #[serde(default)]
    pub loop_stalled_since: Option<String>,
    /// Servers holding requests back with `429 Retry-After`: each says
    /// until when, what the server asked and what is waited (capped).
    #[serde(default)]
    pub rate_limited: Vec<String>,
    /// What the daemon found wrong under its roots (unreadable roots and
    /// run directories, damaged run files), each with when, newest last.
    #[serde(default)]
    pub problems: Vec<String>,
    pub base_url: String,
    /// What each run is doing now, by ledger key: `uploading`, `queued`,
    /// `waiting` (backing off until `next_retry`), `stopped` (with
    /// `error`), `idle`. Runs without a ledger entry yet (new, or refused
    /// before their first upload) are keyed `unsynced:<run directory>`.
    pub activity: BTreeMap<String, Activity>,
}

/// Whether the daemon's Slurm queries get answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SlurmHealth {
    /// The last query was answered, and none has been waiting long.
    pub answering: bool,
    /// RFC 3339: since when it has not answered (the failed or still
    /// unanswered query that began the trouble).
    pub since: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Activity {
    /// `uploading`, `queued`, `waiting` (see `reason`), `stopped`, `idle`.
    pub state: String,
    /// Why a run waits: `offline` (for the network; `next_retry` is the
    /// next probe), `retry` (backing off after a failure).
    #[serde(default)]
    pub reason: Option<String>,
    /// RFC 3339.
    pub next_retry: Option<String>,
    /// The run directory (for display).
    #[serde(with = "crate::paths::serde_opt_path", default)]
    pub path: Option<PathBuf>,
    /// Slurm job id and state, when known.
    pub slurm_job: Option<String>,
    pub slurm_state: Option<String>,
    /// The run id, for runs the ledger does not know yet.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Why the run is stopped: e.g. its `.env` is refused.
    #[serde(default)]
    pub error: Option<String>,
    /// Where the run goes (its `.env`, or the run's own settings), for
    /// runs the ledger does not know yet.
    #[serde(default)]
    pub entity: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// Bytes of its `.wandb` files on disk (as of the daemon's last look)
    /// and acknowledged by the server.
    #[serde(default)]
    pub bytes_on_disk: Option<u64>,
    #[serde(default)]
    pub bytes_acked: Option<u64>,
}

pub(crate) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

pub(crate) fn write(state_dir: &Path, heartbeat: &Heartbeat) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(heartbeat).expect("heartbeat serializes");
    crate::fs::durable::replace(&path(state_dir), &bytes)
}

/// The heartbeat, if the file exists and parses.
pub(crate) fn read(state_dir: &Path) -> Option<Heartbeat> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_that_is_not_utf8_is_written_and_read_back() {
        use std::os::unix::ffi::OsStringExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = PathBuf::from(std::ffi::OsString::from_vec(
            b"/s/wandb/offline-run-x-\xe9".to_vec(),
        ));
        let beat = Heartbeat {
            pid: 1,
            host: "h".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            heartbeat_at: "2026-01-01T00:00:00Z".into(),
            stale_after_secs: 15,
            online: true,
            last_contact: None,
            base_url: "http://s".into(),
            activity: BTreeMap::from([(
                format!("{UNSYNCED_PREFIX}{}", crate::paths::display(&dir)),
                Activity {
                    state: "queued".into(),
                    next_retry: None,
                    path: Some(dir),
                    slurm_job: None,
                    slurm_state: None,
                    run_id: Some("x".into()),
                    ..Activity::default()
                },
            )]),
            ..Heartbeat::default()
        };
        write(tmp.path(), &beat).unwrap();
        assert_eq!(read(tmp.path()), Some(beat));
    }
}
