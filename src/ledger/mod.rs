//! How far each run has been uploaded: one JSON file per run in syncd's
//! state directory, replaced atomically after every acknowledged step. It
//! holds the byte cursor into each fragment, the materialised run state at
//! that cursor, what the server has acknowledged, and the last error. It never
//! holds an API key.
//!
//! # The format is frozen
//!
//! Users' ledgers outlive the syncd that wrote them, and an entry that
//! cannot be read loses what it says the server already has. The format
//! belongs to this module alone (`format/`: its own serde types per
//! version, converted at the edge), and every change to it follows one rule:
//!
//! - **A change bumps the version and migrates.** Any change to what an
//!   entry's JSON says (a field renamed, added, retyped, a value spelled
//!   differently) is a new format version with its own types; the old
//!   version's types stay as they are, and its entries are migrated on load,
//!   never uploaded again. The golden entries under `tests/fixtures/ledger/`
//!   (written by the syncd of their time, never rewritten) must keep
//!   loading, saving back byte for byte while their version is the newest,
//!   and continuing their run without sending anything again.
//! - **A newer entry is left alone.** An entry of a version this syncd does
//!   not know (a newer syncd wrote it) is reported
//!   ([`LedgerError::UnknownFormat`]); its run is not uploaded, and the entry
//!   is never overwritten.
//! - **A damaged entry stops its run.** An entry that does not parse
//!   ([`LedgerError::Damaged`]) is reported and kept as it is; its run is not
//!   uploaded again from the start unless a person moves the entry away.
//!   (A live checkpoint cut short is not damage: its durable copy is read
//!   instead, see [`Ledger::load`].)

mod format;
pub(crate) mod lease;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::fs::{durable, hex};
use crate::sink::wandb::ops::ServerRun;
use crate::source::wandb::views::{ExitInfo, RunState};

/// The format version this syncd writes.
pub const FORMAT_VERSION: u32 = format::VERSION;

/// Where a run stands. Serializes for `sync --json`; the ledger spells it
/// in its own format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Found, nothing acknowledged yet.
    Queued,
    /// Everything readable is on the server; the run has not ended.
    Live,
    /// Ended and completed on the server.
    Synced,
    /// Cut off (no exit record) and completed as failed on request.
    Finalized,
    /// The last attempt failed; see `last_error`.
    Failed,
    /// The run's files are damaged; held back until they change.
    Quarantined,
}

/// Progress through one `.wandb` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentProgress {
    pub path: PathBuf,
    /// Offset after the last record whose effects the server acknowledged.
    pub cursor: u64,
    pub records: u64,
    /// Added to this fragment's `_step` values (a resumed fragment continues
    /// the steps of the one before, as wandb 0.31 does).
    pub step_offset: i64,
    /// The fragment's exit record, once read.
    pub exit: Option<ExitInfo>,
    /// Its first run record has been read (and its step offset decided).
    pub run_seen: bool,
}

impl FragmentProgress {
    /// A fragment nothing of which has been read yet.
    pub fn unread(path: PathBuf) -> FragmentProgress {
        FragmentProgress {
            path,
            cursor: 0,
            records: 0,
            step_offset: 0,
            exit: None,
            run_seen: false,
        }
    }
}

/// A file uploaded to the run, by its path relative to `files/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAck {
    pub size: u64,
    pub sha256: String,
    /// The file's mtime (ns) when read: unchanged size and mtime spare a
    /// live run's uploads from reading it again.
    pub mtime_ns: Option<i64>,
}

/// What the server has acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acked {
    /// Lines of `wandb-history.jsonl` / `wandb-events.jsonl` / `output.log`.
    pub history_lines: u64,
    pub events_lines: u64,
    pub console_lines: u64,
    /// First line this run's history takes on the server (non-zero when it
    /// continues a run that already had lines there).
    pub history_base: u64,
    pub events_base: u64,
    pub console_base: u64,
    pub config_sha256: Option<String>,
    pub params_sha256: Option<String>,
    pub summary_sha256: Option<String>,
    pub files: BTreeMap<String, FileAck>,
    pub alerts: u64,
    /// Alerts (counted from the run's first) whose sending has begun.
    /// Saved durably before each alert's request and never lowered after a
    /// request that may have arrived: an alert pages a person, so it is sent
    /// at most once, even when its answer is lost or syncd is killed before
    /// the checkpoint that counts it in `alerts`.
    pub alerts_attempted: u64,
    pub preempting: bool,
    /// Exit code sent with `complete`.
    pub complete: Option<i32>,
}

/// Where one artifact's upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactState {
    /// Read from the run; nothing asked of the server yet.
    Queued,
    /// The version exists on the server (pending) and is being filled.
    Uploading,
    /// Committed: the version is complete on the server.
    Committed,
    /// Never uploaded, and why (a staging file missing or refused, or the
    /// server refusing the artifact). The rest of the run uploads.
    NotUploadable(String),
}

/// One `artifact` record's upload. Saved as each step is acknowledged (and
/// before the run's cursors move past the record), so an upload cut short
/// continues the same version and does not send an acknowledged file again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactProgress {
    /// Where the record is (fragment index, byte offset): what identifies
    /// it when the record is read again after a kill.
    pub fragment: usize,
    pub offset: u64,
    pub name: String,
    pub kind: String,
    /// The artifact's digest (of its manifest entries), as the record has it.
    pub digest: String,
    /// Files it uploads (entries with a staging file; references excluded).
    pub files: u64,
    pub state: ArtifactState,
    /// The version's id on the server, once `CreateArtifact` answered.
    pub server_id: Option<String>,
    /// Files stored on the server, by name, with the id of the artifact
    /// that first stored them (the manifest's `birthArtifactID`). Emptied
    /// when the version is committed.
    pub acked: BTreeMap<String, String>,
    /// The MD5 (base64) of the manifest once its PUT was acknowledged.
    pub manifest_digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorNote {
    /// RFC 3339.
    pub at: String,
    pub message: String,
}

/// The whole record of one run.
#[derive(Debug, Clone)]
pub struct RunLedger {
    pub key: String,
    pub run_id: String,
    pub base_url: String,
    pub server: Option<ServerRun>,
    pub fragments: Vec<FragmentProgress>,
    pub acked: Acked,
    pub phase: Phase,
    /// Why a run was finalized without an exit record.
    pub finalized_reason: Option<String>,
    pub last_error: Option<ErrorNote>,
    /// Things the user should know that did not stop the upload.
    pub warnings: Vec<String>,
    /// RFC 3339 time of the last acknowledged upload.
    pub last_upload: Option<String>,
    /// The display name and group the server was last told.
    pub naming: Option<crate::naming::Naming>,
    /// The run as materialised at the cursors.
    pub state: RunState,
    /// The run's artifacts, in the order their records were read. Not part
    /// of the state at the cursors: a step of an artifact holds whatever
    /// the cursors are.
    pub artifacts: Vec<ArtifactProgress>,
}

impl RunLedger {
    pub fn new(key: String, run_id: String, base_url: String) -> RunLedger {
        RunLedger {
            key,
            run_id,
            base_url,
            server: None,
            fragments: Vec::new(),
            acked: Acked::default(),
            phase: Phase::Queued,
            finalized_reason: None,
            last_error: None,
            warnings: Vec::new(),
            last_upload: None,
            naming: None,
            state: RunState::new(),
            artifacts: Vec::new(),
        }
    }

    pub fn warn(&mut self, message: String) {
        if !self.warnings.contains(&message) {
            self.warnings.push(message);
        }
    }
}

/// The io cause of `Dir`, `Read` and `Write` is their `source()`, not part
/// of their text, so a report of the whole chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot use state directory {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write ledger {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read ledger {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "ledger {path} is damaged ({reason}); move it away to upload the run again from the start"
    )]
    Damaged { path: PathBuf, reason: String },
    /// Not damaged, but in a format this syncd does not know (a newer
    /// syncd wrote it): never replaced, since that would lose what it says.
    #[error("ledger {path} has format {format}, newer than this syncd knows; upgrade syncd")]
    UnknownFormat { path: PathBuf, format: u32 },
}

/// The state directory's run ledgers.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) `<state_dir>/runs`.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let dir = state_dir.join("runs");
        std::fs::create_dir_all(&dir).map_err(|source| LedgerError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(Ledger { dir })
    }

    /// The ledger of a state directory that may not exist (for `status`,
    /// which must not create anything).
    pub fn open_existing(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let dir = state_dir.join("runs");
        if !dir.is_dir() {
            return Err(LedgerError::Dir {
                path: dir,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Ok(Ledger { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the durable copy of the entry under `key` is (what the
    /// daemon's settled-run index stats to see that an entry changed).
    pub(crate) fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{DURABLE_EXT}"))
    }

    /// Where [`Ledger::save_unsynced`] keeps a live run's newest checkpoint.
    fn live_path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{LIVE_EXT}"))
    }

    /// The run's newest checkpoint: the live one when it was written whole,
    /// else the durable one (a live checkpoint cut short falls back to the
    /// older durable copy; lines re-sent from there go to the same offsets).
    /// A live checkpoint written whole that does not load is reported, not
    /// passed over: saving the older copy's progress would replace it.
    pub fn load(&self, key: &str) -> Result<Option<RunLedger>, LedgerError> {
        let live = self.live_path_of(key);
        let cut_short = match durable::read_in_place(&live).map_err(|source| LedgerError::Read {
            path: live.clone(),
            source,
        })? {
            Some(Ok(body)) => return parse_entry(&live, &body).map(Some),
            Some(Err(reason)) => Some(LedgerError::Damaged { path: live, reason }),
            None => None,
        };
        match self.load_durable(key)? {
            Some(entry) => Ok(Some(entry)),
            None => cut_short.map_or(Ok(None), Err),
        }
    }

    fn load_durable(&self, key: &str) -> Result<Option<RunLedger>, LedgerError> {
        let path = self.path_of(key);
        let Some(bytes) = durable::read_optional(&path).map_err(|source| LedgerError::Read {
            path: path.clone(),
            source,
        })?
        else {
            return Ok(None);
        };
        parse_entry(&path, &bytes).map(Some)
    }

    /// The entry of a run under `key`, else one a syncd before fragment
    /// identities stored under `legacy_key`, given the new key. With
    /// `migrate`, such an entry is saved under the new key and the old
    /// files removed (a crash in between leaves both; the new one is found
    /// first from then on).
    pub fn load_run(
        &self,
        key: &str,
        legacy_key: &str,
        migrate: bool,
    ) -> Result<Option<RunLedger>, LedgerError> {
        if let Some(entry) = self.load(key)? {
            return Ok(Some(entry));
        }
        if legacy_key == key {
            return Ok(None);
        }
        let Some(mut entry) = self.load(legacy_key)? else {
            return Ok(None);
        };
        entry.key = key.to_string();
        if migrate {
            self.save(&entry)?;
            for old in [self.path_of(legacy_key), self.live_path_of(legacy_key)] {
                match std::fs::remove_file(&old) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(LedgerError::Write {
                            path: old,
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(Some(entry))
    }

    /// Saves durably (fsync, atomic rename); a live checkpoint of the run
    /// is removed first, being older from now on.
    pub fn save(&self, entry: &RunLedger) -> Result<(), LedgerError> {
        let live = self.live_path_of(&entry.key);
        match std::fs::remove_file(&live) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LedgerError::Write {
                    path: live,
                    source: e,
                });
            }
            _ => {}
        }
        let path = self.path_of(&entry.key);
        let bytes = format::encode(entry, true);
        durable::write_atomic(&path, &bytes).map_err(|source| LedgerError::Write { path, source })
    }

    /// A checkpoint of a run still being uploaded: rewritten in place
    /// next to the durable copy, without fsync (see
    /// [`durable::write_in_place`]). A process killed at any moment loses
    /// nothing (the page cache holds the write); a write cut short or a
    /// power loss leaves an older checkpoint to load, which only means
    /// lines are sent again, to the same line numbers, overwriting.
    pub fn save_unsynced(&self, entry: &RunLedger) -> Result<(), LedgerError> {
        let path = self.live_path_of(&entry.key);
        let bytes = format::encode(entry, false);
        durable::write_in_place(&path, &bytes).map_err(|source| LedgerError::Write { path, source })
    }

    /// Every ledger in the directory (for `status`); damaged ones as errors.
    pub fn all(&self) -> Vec<Result<RunLedger, LedgerError>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let (key, ext) = name.rsplit_once('.')?;
                [DURABLE_EXT, LIVE_EXT]
                    .contains(&ext)
                    .then(|| key.to_string())
            })
            .filter(|k| !k.starts_with('.'))
            .collect();
        keys.sort();
        keys.dedup();
        keys.iter()
            .filter_map(|k| self.load(k).transpose())
            .collect()
    }
}

const DURABLE_EXT: &str = "json";
const LIVE_EXT: &str = "live";

fn parse_entry(path: &Path, bytes: &[u8]) -> Result<RunLedger, LedgerError> {
    format::decode(bytes).map_err(|refused| match refused {
        format::Refused::Damaged(reason) => LedgerError::Damaged {
            path: path.to_path_buf(),
            reason,
        },
        format::Refused::Newer(format) => LedgerError::UnknownFormat {
            path: path.to_path_buf(),
            format,
        },
    })
}

/// The ledger key of a run: its id plus a digest of what its first
/// fragment is and where the run goes, so two runs of one id, or one run
/// sent to two servers or projects, are tracked separately. What the
/// fragment is, not where it lives: the same file reached by another
/// spelling, through a symlink, or in a project directory moved as a whole
/// is the same run (see [`fragment_identity`]).
pub fn run_key(
    run_id: &str,
    first_fragment: &Path,
    base_url: &str,
    entity: Option<&str>,
    project: Option<&str>,
) -> String {
    let identity = fragment_identity(first_fragment);
    key_of(
        run_id,
        &[
            b"fragment",
            &identity,
            base_url.trim_end_matches('/').as_bytes(),
            entity.unwrap_or("").as_bytes(),
            project.unwrap_or("").as_bytes(),
        ],
    )
}

/// The key [`run_key`] gave before it was based on what the fragment is:
/// a digest of the fragment's canonical path. Entries stored under it are
/// looked up when the run has none under its key, and moved over
/// ([`Ledger::load_run`]), so an upgrade sends nothing again.
pub fn legacy_run_key(
    run_id: &str,
    first_fragment: &Path,
    base_url: &str,
    entity: Option<&str>,
    project: Option<&str>,
) -> String {
    let canonical = first_fragment
        .canonicalize()
        .unwrap_or_else(|_| first_fragment.to_path_buf());
    key_of(
        run_id,
        &[
            // The path's bytes: what the lossy rendering hashed for every
            // UTF-8 path (the old code could not store any other).
            std::os::unix::ffi::OsStrExt::as_bytes(canonical.as_os_str()),
            base_url.trim_end_matches('/').as_bytes(),
            entity.unwrap_or("").as_bytes(),
            project.unwrap_or("").as_bytes(),
        ],
    )
}

fn key_of(run_id: &str, parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut short = [0; KEY_DIGEST_LEN];
    short.copy_from_slice(&digest[..KEY_DIGEST_LEN]);
    key_with_digest(run_id, short)
}

/// How many bytes of its digest a run key spells.
pub(crate) const KEY_DIGEST_LEN: usize = 6;

/// The run key of `run_id` whose digest part is `digest`: a key kept as
/// its digest alone (the daemon's settled-run index) is spelled again.
pub(crate) fn key_with_digest(run_id: &str, digest: [u8; KEY_DIGEST_LEN]) -> String {
    let safe_id: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("wandb-{safe_id}-{}", hex(&digest))
}

/// The digest part of `key`, when it is a key [`key_with_digest`] spells
/// again from `run_id` and that digest.
pub(crate) fn key_digest(run_id: &str, key: &str) -> Option<[u8; KEY_DIGEST_LEN]> {
    let tail = key.rsplit_once('-')?.1;
    if tail.len() != 2 * KEY_DIGEST_LEN {
        return None;
    }
    let mut digest = [0; KEY_DIGEST_LEN];
    for (at, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(tail.get(2 * at..2 * at + 2)?, 16).ok()?;
    }
    (key_with_digest(run_id, digest) == key).then_some(digest)
}

/// What a `.wandb` file is, independent of where it lives: the name of its
/// run directory (`run-<start time>-<id>`, which tells the fragments of a
/// resumed run apart) and its own name (`run-<id>.wandb`), from the
/// canonical path (a `latest-run` link names the directory it points to),
/// else, for a file no longer there, from the path as spelled with `.` and
/// `..` resolved. A symlinked directory above the run or a moved project
/// changes nothing.
pub fn fragment_identity(path: &Path) -> Vec<u8> {
    let path = path
        .canonicalize()
        .unwrap_or_else(|_| crate::project::absolute(path));
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(name) => names.push(name),
            std::path::Component::ParentDir => {
                names.pop();
            }
            _ => {}
        }
    }
    // Bytes, not a lossy rendering: two run directories whose names differ
    // only in bytes that are not UTF-8 are two runs.
    let tail = &names[names.len().saturating_sub(2)..];
    tail.iter()
        .map(|n| std::os::unix::ffi::OsStrExt::as_bytes(*n))
        .collect::<Vec<_>>()
        .join(&b'/')
}

/// Whether two paths are the same fragment ([`fragment_identity`]).
pub fn same_fragment(a: &Path, b: &Path) -> bool {
    a == b || fragment_identity(a) == fragment_identity(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let mut entry = RunLedger::new(
            "wandb-abc-000000000000".into(),
            "abc".into(),
            "http://x".into(),
        );
        entry.acked.history_lines = 42;
        entry.state.summary.insert(
            "loss".into(),
            crate::source::wandb::value::Value::parse("NaN").unwrap(),
        );
        ledger.save(&entry).unwrap();
        let back = ledger.load(&entry.key).unwrap().unwrap();
        assert_eq!(back.acked.history_lines, 42);
        assert_eq!(back.state.summary["loss"].to_extended_json(), "NaN");
        assert_eq!(ledger.all().len(), 1);
        assert!(ledger.load("missing").unwrap().is_none());
    }

    #[test]
    fn an_entry_from_before_alerts_were_recorded_as_attempted_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let mut entry = RunLedger::new("wandb-old-000000000000".into(), "old".into(), "".into());
        entry.acked.alerts = 2;
        entry.acked.alerts_attempted = 2;
        let mut json: serde_json::Value =
            serde_json::from_slice(&format::encode(&entry, true)).unwrap();
        json["acked"]
            .as_object_mut()
            .unwrap()
            .remove("alerts_attempted");
        std::fs::write(
            ledger.path_of(&entry.key),
            serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
        let back = ledger.load(&entry.key).unwrap().unwrap();
        assert_eq!((back.acked.alerts, back.acked.alerts_attempted), (2, 0));
    }

    #[test]
    fn live_checkpoints_are_newest_until_a_durable_save() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let mut entry = RunLedger::new("wandb-l-1".into(), "l".into(), "http://x".into());
        entry.acked.history_lines = 1;
        ledger.save(&entry).unwrap();
        entry.acked.history_lines = 2;
        ledger.save_unsynced(&entry).unwrap();
        let lines = |l: &Ledger| l.load("wandb-l-1").unwrap().unwrap().acked.history_lines;
        assert_eq!(lines(&ledger), 2);
        assert_eq!(ledger.all().len(), 1, "one run, two files");
        // A live checkpoint cut short: the durable copy is what is left.
        let live = ledger.dir().join("wandb-l-1.live");
        let mut bytes = std::fs::read(&live).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        std::fs::write(&live, &bytes).unwrap();
        assert_eq!(lines(&ledger), 1);
        // A durable save supersedes the live file.
        entry.acked.history_lines = 3;
        ledger.save_unsynced(&entry).unwrap();
        entry.acked.history_lines = 4;
        ledger.save(&entry).unwrap();
        assert!(!live.exists());
        assert_eq!(lines(&ledger), 4);
        // A run known only from live checkpoints is listed, and a torn one
        // without a durable copy is reported, not taken as new.
        let mut other = RunLedger::new("wandb-m-2".into(), "m".into(), "http://x".into());
        other.acked.history_lines = 5;
        ledger.save_unsynced(&other).unwrap();
        assert_eq!(ledger.all().len(), 2);
        std::fs::write(
            ledger.dir().join("wandb-m-2.live"),
            b"syncd-in-place 9 0\n{",
        )
        .unwrap();
        assert!(matches!(
            ledger.load("wandb-m-2"),
            Err(LedgerError::Damaged { .. })
        ));
    }

    #[test]
    fn a_fragment_path_that_is_not_utf8_is_saved_and_loaded() {
        use std::os::unix::ffi::OsStringExt;
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let mut entry = RunLedger::new("wandb-u-1".into(), "u".into(), "http://x".into());
        let path = PathBuf::from(std::ffi::OsString::from_vec(
            b"/s/offline-run-x-\xe9/run-u.wandb".to_vec(),
        ));
        entry.fragments.push(FragmentProgress {
            path: path.clone(),
            cursor: 7,
            records: 1,
            step_offset: 0,
            exit: None,
            run_seen: true,
        });
        ledger.save(&entry).unwrap();
        ledger.save_unsynced(&entry).unwrap();
        let back = ledger.load("wandb-u-1").unwrap().unwrap();
        assert_eq!(back.fragments[0].path, path);
        ledger.save(&entry).unwrap();
        assert_eq!(
            ledger.load("wandb-u-1").unwrap().unwrap().fragments[0].path,
            path
        );
    }

    #[test]
    fn keys_of_paths_differing_in_bytes_that_are_not_utf8_differ() {
        use std::os::unix::ffi::OsStringExt;
        let key = |last: u8| {
            let path = std::ffi::OsString::from_vec(vec![b'/', b'r', last]);
            run_key("r", Path::new(&path), "http://s", None, None)
        };
        assert_ne!(key(0xe9), key(0xea));
        // The key entries were stored under before fragment identities is
        // found again for a UTF-8 path: it hashes as it always did.
        assert_eq!(
            legacy_run_key("r1", Path::new("/a/run-r1.wandb"), "http://s", None, None),
            "wandb-r1-a1dbc78128f5"
        );
    }

    #[test]
    fn a_newer_format_is_its_own_error() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let newer = format!(
            r#"{{"format": {}, "key": "wandb-n-1"}}"#,
            FORMAT_VERSION + 1
        );
        std::fs::write(ledger.dir().join("wandb-n-1.json"), &newer).unwrap();
        let err = ledger.load("wandb-n-1").unwrap_err();
        assert!(
            matches!(err, LedgerError::UnknownFormat { format, .. } if format == FORMAT_VERSION + 1),
            "{err}"
        );
        // Also as a live checkpoint written whole, over an older durable
        // copy: reported, not passed over for the older copy.
        let entry = RunLedger::new("wandb-n-1".into(), "n".into(), "http://s".into());
        std::fs::remove_file(ledger.dir().join("wandb-n-1.json")).unwrap();
        ledger.save(&entry).unwrap();
        durable::write_in_place(&ledger.dir().join("wandb-n-1.live"), newer.as_bytes()).unwrap();
        let err = ledger.load("wandb-n-1").unwrap_err();
        assert!(matches!(err, LedgerError::UnknownFormat { .. }), "{err}");
    }

    #[test]
    fn damaged_ledger_is_reported_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        std::fs::write(ledger.dir().join("wandb-x-1.json"), b"{truncated").unwrap();
        let err = ledger.load("wandb-x-1").unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
    }

    #[test]
    fn keys_differ_by_fragment_and_target_not_by_place() {
        let first = "/a/wandb/run-20260101_000000-r1/run-r1.wandb";
        let a = run_key("r1", Path::new(first), "http://s", None, None);
        assert!(a.starts_with("wandb-r1-"));
        // Moved, or spelled another way: the same fragment.
        for same in [
            "/b/c/wandb/run-20260101_000000-r1/run-r1.wandb",
            "/a/wandb/./run-20260101_000000-r1/../run-20260101_000000-r1/run-r1.wandb",
        ] {
            assert_eq!(a, run_key("r1", Path::new(same), "http://s", None, None));
        }
        // Another fragment (a later resume of the run) is another run.
        assert_ne!(
            a,
            run_key(
                "r1",
                Path::new("/a/wandb/run-20260102_000000-r1/run-r1.wandb"),
                "http://s",
                None,
                None
            )
        );
        assert_ne!(
            a,
            run_key("r1", Path::new(first), "http://s", None, Some("p"))
        );
        assert_eq!(a, run_key("r1", Path::new(first), "http://s/", None, None));
        assert_ne!(
            a,
            legacy_run_key("r1", Path::new(first), "http://s", None, None)
        );
    }

    #[test]
    fn a_fragment_through_latest_run_is_the_same_fragment() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("wandb/offline-run-20260101_000000-r1");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("run-r1.wandb"), b"x").unwrap();
        let latest = tmp.path().join("wandb/latest-run");
        std::os::unix::fs::symlink(&run, &latest).unwrap();
        let direct = run.join("run-r1.wandb");
        let linked = latest.join("run-r1.wandb");
        assert!(same_fragment(&direct, &linked));
        assert_eq!(
            run_key("r1", &direct, "http://s", None, None),
            run_key("r1", &linked, "http://s", None, None)
        );
    }

    #[test]
    fn an_entry_under_the_legacy_key_is_moved_to_the_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(tmp.path()).unwrap();
        let mut old = RunLedger::new("wandb-r-old".into(), "r".into(), "http://x".into());
        old.acked.history_lines = 7;
        ledger.save(&old).unwrap();
        // Looking without migrating changes nothing on disk.
        let found = ledger
            .load_run("wandb-r-new", "wandb-r-old", false)
            .unwrap();
        assert_eq!(found.unwrap().key, "wandb-r-new");
        assert!(ledger.dir().join("wandb-r-old.json").exists());
        let found = ledger.load_run("wandb-r-new", "wandb-r-old", true).unwrap();
        assert_eq!(found.unwrap().acked.history_lines, 7);
        assert!(!ledger.dir().join("wandb-r-old.json").exists());
        let stored = ledger.load("wandb-r-new").unwrap().unwrap();
        assert_eq!(
            (stored.key.as_str(), stored.acked.history_lines),
            ("wandb-r-new", 7)
        );
        assert!(
            ledger
                .load_run("wandb-q", "wandb-q-old", true)
                .unwrap()
                .is_none()
        );
    }
}
