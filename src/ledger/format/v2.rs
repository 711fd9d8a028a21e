//! Format 2: format 1 and the run's artifact uploads (`artifacts`, last).
//! Frozen like format 1: these types are the JSON of every format-2 entry
//! (the goldens in `tests/fixtures/ledger/v2-*` hold examples).
//!
//! Everything before `artifacts` is spelled exactly as in format 1, by
//! format 1's own types. A format-1 entry is therefore read by these types
//! too, with no artifacts (the field is absent from it): that is its
//! migration, and it costs one parse.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::v1;
use crate::ledger::{ArtifactProgress, ArtifactState, RunLedger};

pub(super) const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
    pub format: u32,
    key: String,
    run_id: String,
    base_url: String,
    server: Option<v1::Server>,
    fragments: Vec<v1::Fragment>,
    acked: v1::Acks,
    phase: v1::RunPhase,
    finalized_reason: Option<String>,
    last_error: Option<v1::Error>,
    warnings: Vec<String>,
    last_upload: Option<String>,
    #[serde(default)]
    naming: Option<v1::Names>,
    state: v1::State,
    /// Absent from format-1 entries.
    #[serde(default)]
    artifacts: Vec<Artifact>,
}

#[derive(Serialize, Deserialize)]
struct Artifact {
    fragment: u64,
    offset: u64,
    name: String,
    kind: String,
    digest: String,
    files: u64,
    state: State,
    /// Why it is not uploadable (with `state: not-uploadable` only).
    reason: Option<String>,
    server_id: Option<String>,
    /// File name → the id of the artifact that first stored it.
    acked: BTreeMap<String, String>,
    manifest_digest: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum State {
    Queued,
    Uploading,
    Committed,
    NotUploadable,
}

impl From<&RunLedger> for Entry {
    fn from(entry: &RunLedger) -> Entry {
        let v1::Entry {
            format: _,
            key,
            run_id,
            base_url,
            server,
            fragments,
            acked,
            phase,
            finalized_reason,
            last_error,
            warnings,
            last_upload,
            naming,
            state,
        } = v1::Entry::from(entry);
        Entry {
            format: VERSION,
            key,
            run_id,
            base_url,
            server,
            fragments,
            acked,
            phase,
            finalized_reason,
            last_error,
            warnings,
            last_upload,
            naming,
            state,
            artifacts: entry.artifacts.iter().map(Artifact::from).collect(),
        }
    }
}

impl From<&ArtifactProgress> for Artifact {
    fn from(a: &ArtifactProgress) -> Artifact {
        let (state, reason) = match &a.state {
            ArtifactState::Queued => (State::Queued, None),
            ArtifactState::Uploading => (State::Uploading, None),
            ArtifactState::Committed => (State::Committed, None),
            ArtifactState::NotUploadable(why) => (State::NotUploadable, Some(why.clone())),
        };
        Artifact {
            fragment: a.fragment as u64,
            offset: a.offset,
            name: a.name.clone(),
            kind: a.kind.clone(),
            digest: a.digest.clone(),
            files: a.files,
            state,
            reason,
            server_id: a.server_id.clone(),
            acked: a.acked.clone(),
            manifest_digest: a.manifest_digest.clone(),
        }
    }
}

impl TryFrom<Entry> for RunLedger {
    type Error = String;

    fn try_from(entry: Entry) -> Result<RunLedger, String> {
        let mut ledger = RunLedger::try_from(v1::Entry {
            format: v1::VERSION,
            key: entry.key,
            run_id: entry.run_id,
            base_url: entry.base_url,
            server: entry.server,
            fragments: entry.fragments,
            acked: entry.acked,
            phase: entry.phase,
            finalized_reason: entry.finalized_reason,
            last_error: entry.last_error,
            warnings: entry.warnings,
            last_upload: entry.last_upload,
            naming: entry.naming,
            state: entry.state,
        })?;
        ledger.artifacts = entry
            .artifacts
            .into_iter()
            .map(ArtifactProgress::try_from)
            .collect::<Result<_, String>>()?;
        Ok(ledger)
    }
}

impl TryFrom<Artifact> for ArtifactProgress {
    type Error = String;

    fn try_from(a: Artifact) -> Result<ArtifactProgress, String> {
        let state = match (a.state, a.reason) {
            (State::Queued, _) => ArtifactState::Queued,
            (State::Uploading, _) => ArtifactState::Uploading,
            (State::Committed, _) => ArtifactState::Committed,
            (State::NotUploadable, reason) => {
                ArtifactState::NotUploadable(reason.unwrap_or_default())
            }
        };
        Ok(ArtifactProgress {
            fragment: usize::try_from(a.fragment)
                .map_err(|_| format!("artifact fragment {} is too large", a.fragment))?,
            offset: a.offset,
            name: a.name,
            kind: a.kind,
            digest: a.digest,
            files: a.files,
            state,
            server_id: a.server_id,
            acked: a.acked,
            manifest_digest: a.manifest_digest,
        })
    }
}
