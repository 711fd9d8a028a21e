//! W&B artifacts: each `artifact` record of a run (`run.log_artifact` in
//! offline mode) uploaded as the official client's saver does, exactly
//! once. This folder owns the artifact protocol, the staging-file rule and
//! the manifest; the run's upload (`upload/`) hands it each record when
//! the batch holding it is sent, before the run's files, and keeps its
//! progress in the ledger ([`ArtifactProgress`]).
//!
//! The steps, as wandb-core takes them: `CreateArtifact` (the record's own
//! entity and project; type, name, description, metadata, aliases, digest)
//! → `CreateArtifactManifest` (`includeUpload: false`) →
//! `CreateArtifactFiles` (storage layout V2, each file with its MD5) → a PUT
//! per file the server asks for (`Content-MD5` among the headers it hands
//! out; multipart from [`MULTIPART_FROM`] bytes) →
//! `CreateArtifactManifest` with the manifest's MD5 and
//! `includeUpload: true` → PUT of the manifest → `CommitArtifact` (and
//! `UseArtifact` for a record marked `use_after_commit`). Reference entries
//! (`s3://…`, `gs://…`, `file://…`) go into the manifest only and are never
//! fetched. A `use_artifact` record feeds only the official client's job
//! builder (no request), so it sends nothing here either.
//!
//! Exactly once: the ledger holds each artifact's progress (the version's
//! id, the files acknowledged, the manifest, committed), saved as each step
//! is acknowledged and before the run's cursors pass the record. An upload
//! cut short at any point reads the record again and continues:
//! `CreateArtifact` is asked again, and the server (deduplicating by digest)
//! answers with the same version, `PENDING` (continue, sending only the
//! files not acknowledged) or `COMMITTED` (done). A committed artifact is
//! never asked for again.
//!
//! - `staging.rs`: the rule for reading the staging files (the one place
//!   syncd reads outside a run directory), MD5s, a file as a streamed body.
//! - `manifest.rs`: the manifest JSON, as wandb-core spells it.
//! - `ops.rs`: the GraphQL operations.

mod manifest;
mod ops;
mod staging;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::fs::hex;
use crate::ledger::{ArtifactProgress, ArtifactState, LedgerError};
use crate::sink::wandb::client::{Client, SinkError};
use crate::source::wandb::proto::{ArtifactManifestEntry, ArtifactRecord};

/// Files from this size up are sent in parts (wandb-core's threshold).
pub(crate) const MULTIPART_FROM: u64 = 2 << 30;
/// A part's size (wandb-core's), unless that would make over 10,000 parts.
const PART_SIZE: u64 = 100 << 20;
const MAX_PARTS: u64 = 10_000;
/// Files asked for in one `CreateArtifactFiles`.
const FILES_PER_REQUEST: usize = 100;

/// The multipart threshold and part size. The client chooses them (it
/// sends the parts' MD5s), so tests lower them with
/// `SYNCD_ARTIFACT_MULTIPART_BYTES` and `SYNCD_ARTIFACT_PART_BYTES`.
fn multipart_sizes() -> (u64, u64) {
    static SIZES: OnceLock<(u64, u64)> = OnceLock::new();
    *SIZES.get_or_init(|| {
        let read = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        (
            read("SYNCD_ARTIFACT_MULTIPART_BYTES", MULTIPART_FROM),
            read("SYNCD_ARTIFACT_PART_BYTES", PART_SIZE),
        )
    })
}

/// The part size for a file of `size` bytes, if it is sent in parts.
fn part_size(size: u64) -> Option<u64> {
    let (from, part) = multipart_sizes();
    if size < from {
        return None;
    }
    if size.div_ceil(part) <= MAX_PARTS {
        return Some(part);
    }
    Some(size.div_ceil(MAX_PARTS).div_ceil(4096) * 4096)
}

/// An `artifact` record read from a run, and where it is.
pub(crate) struct Logged {
    pub fragment: usize,
    pub offset: u64,
    pub record: ArtifactRecord,
}

impl Logged {
    /// Its progress before anything is asked of the server.
    pub(crate) fn queued(&self) -> ArtifactProgress {
        ArtifactProgress {
            fragment: self.fragment,
            offset: self.offset,
            name: self.record.name.clone(),
            kind: self.record.kind.clone(),
            digest: self.record.digest.clone(),
            files: uploaded_entries(&self.record).count() as u64,
            state: ArtifactState::Queued,
            server_id: None,
            acked: BTreeMap::new(),
            manifest_digest: None,
        }
    }
}

fn uploaded_entries(record: &ArtifactRecord) -> impl Iterator<Item = &ArtifactManifestEntry> {
    record
        .manifest
        .iter()
        .flat_map(|m| m.contents.iter())
        .filter(|e| !e.local_path.is_empty())
}

/// Why an artifact's upload stopped the run's upload (to be retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Saves the artifact's progress: durably (`true`) at the steps that
/// decide something, else as a live checkpoint.
pub(crate) type Save<'a> =
    dyn FnMut(&ArtifactProgress, bool) -> Result<(), LedgerError> + Send + 'a;

/// Uploads `logged` from `progress` on, for a run whose files belong to
/// `owner` (uid). Returns when it is committed or found not uploadable
/// (the rest of the run goes on); an error the run's upload should retry
/// (the server unreachable, a key refused, a step that failed however
/// often it was tried) stops with [`Stop`], the progress saved.
pub(crate) async fn upload(
    client: &Client,
    logged: &Logged,
    owner: u32,
    progress: &mut ArtifactProgress,
    save: &mut Save<'_>,
) -> Result<(), Stop> {
    if matches!(
        progress.state,
        ArtifactState::Committed | ArtifactState::NotUploadable(_)
    ) {
        return Ok(());
    }
    match steps(client, logged, owner, progress, save).await {
        Ok(()) => Ok(()),
        Err(Step::NotUploadable(why)) => {
            tracing::warn!(artifact = %logged.record.name, reason = %why, "artifact not uploadable");
            progress.state = ArtifactState::NotUploadable(why);
            save(progress, true)?;
            Ok(())
        }
        Err(Step::Stop(stop)) => Err(stop),
    }
}

enum Step {
    NotUploadable(String),
    Stop(Stop),
}

impl From<LedgerError> for Step {
    fn from(e: LedgerError) -> Step {
        Step::Stop(Stop::Ledger(e))
    }
}

impl From<SinkError> for Step {
    /// The server refusing the artifact (a GraphQL error, a 4xx other than
    /// the key's) ends its upload, not the run's.
    fn from(e: SinkError) -> Step {
        match e {
            SinkError::Rejected { .. } | SinkError::GraphQl { .. } | SinkError::Protocol { .. }
                if !e.is_auth() =>
            {
                Step::NotUploadable(format!(
                    "the server refused it: {}",
                    crate::errors::one_line(&e)
                ))
            }
            e => Step::Stop(Stop::Sink(e)),
        }
    }
}

/// A staging file checked, with the MD5s its upload needs.
struct Checked {
    parts: Option<Vec<[u8; 16]>>,
}

async fn steps(
    client: &Client,
    logged: &Logged,
    owner: u32,
    progress: &mut ArtifactProgress,
    save: &mut Save<'_>,
) -> Result<(), Step> {
    let record = &logged.record;
    let Some(manifest) = &record.manifest else {
        return Err(Step::NotUploadable("the record has no manifest".into()));
    };
    if !manifest.manifest_file_path.is_empty() {
        return Err(Step::NotUploadable(format!(
            "its manifest is in a separate file ({}), which syncd does not read",
            manifest.manifest_file_path
        )));
    }
    if record.incremental_beta1 || !record.distributed_id.is_empty() {
        return Err(Step::NotUploadable(
            "incremental and distributed artifacts are not uploaded by syncd".into(),
        ));
    }
    // Every file still to send is checked before the server is asked for
    // anything: a staging copy that is gone or refused leaves no pending
    // version behind.
    let mut checked: BTreeMap<&str, Checked> = BTreeMap::new();
    for entry in uploaded_entries(record) {
        if progress.acked.contains_key(&entry.path) || checked.contains_key(entry.path.as_str()) {
            continue;
        }
        checked.insert(&entry.path, check(entry, owner)?);
    }

    let region = manifest
        .storage_policy_config
        .iter()
        .find(|c| c.key == "storageRegion")
        .and_then(|c| serde_json::from_str::<String>(&c.value_json).ok());
    let created = ops::create_artifact(client, record, region.as_deref()).await?;
    if progress.server_id.as_deref() != Some(created.id.as_str()) {
        // A version other than the one begun (the server forgot it): its
        // files were acknowledged for that one.
        progress.acked.clear();
        progress.manifest_digest = None;
    }
    progress.server_id = Some(created.id.clone());
    match created.state.as_str() {
        "COMMITTED" => {
            // Done before (by us, before a kill, or by anyone with the same
            // content): nothing more to send.
            if record.use_after_commit {
                ops::use_artifact(client, record, &created.id).await?;
            }
            progress.state = ArtifactState::Committed;
            progress.acked.clear();
            save(progress, true)?;
            return Ok(());
        }
        "PENDING" | "DELETED" => {}
        other => {
            return Err(Step::NotUploadable(format!(
                "the server has it in state {other:?}"
            )));
        }
    }
    progress.state = ArtifactState::Uploading;
    save(progress, true)?;

    let base_id = if record.base_id.is_empty() {
        created.latest_id.clone()
    } else {
        Some(record.base_id.clone())
    };
    let slot =
        ops::create_artifact_manifest(client, record, &created.id, base_id.as_deref(), "", false)
            .await?;

    let todo: Vec<&ArtifactManifestEntry> = {
        let mut seen = std::collections::HashSet::new();
        uploaded_entries(record)
            .filter(|e| !progress.acked.contains_key(&e.path) && seen.insert(e.path.as_str()))
            .collect()
    };
    // Files acknowledged for a version the server no longer has were not
    // checked above.
    for entry in &todo {
        if !checked.contains_key(entry.path.as_str()) {
            checked.insert(&entry.path, check(entry, owner)?);
        }
    }
    for batch in todo.chunks(FILES_PER_REQUEST) {
        let specs: Vec<ops::FileSpec> = batch
            .iter()
            .map(|e| ops::FileSpec {
                name: &e.path,
                md5: &e.digest,
                parts: checked[e.path.as_str()]
                    .parts
                    .as_ref()
                    .map(|parts| parts.iter().map(|p| hex(p)).collect()),
            })
            .collect();
        let slots = ops::create_artifact_files(client, &created.id, &slot.id, &specs).await?;
        for (entry, file) in batch.iter().zip(slots) {
            if let Some((upload_id, urls)) = &file.multipart {
                let parts = checked[entry.path.as_str()].parts.as_deref().unwrap_or(&[]);
                put_parts(client, entry, owner, &file, upload_id, urls, parts).await?;
            } else if let Some(url) = &file.upload_url {
                put_file(client, entry, owner, url, &file.upload_headers).await?;
            }
            // Without an upload URL the server stores the content already.
            progress.acked.insert(entry.path.clone(), file.birth_id);
            save(progress, false)?;
        }
    }

    let body = manifest::encode(manifest, &progress.acked);
    let digest = staging::md5_base64(&body);
    let slot = ops::create_artifact_manifest(
        client,
        record,
        &created.id,
        base_id.as_deref(),
        &digest,
        true,
    )
    .await?;
    let Some(url) = &slot.upload_url else {
        return Err(Step::NotUploadable(
            "the server gave no upload URL for its manifest".into(),
        ));
    };
    let body = bytes::Bytes::from(body);
    client
        .put_streamed(
            "artifact manifest",
            url,
            headers(&slot.upload_headers),
            body.len() as u64,
            || reqwest::Body::from(body.clone()),
        )
        .await?;
    progress.manifest_digest = Some(digest);
    save(progress, false)?;

    if record.finalize {
        ops::commit_artifact(client, &created.id).await?;
        if record.use_after_commit {
            ops::use_artifact(client, record, &created.id).await?;
        }
    }
    progress.state = ArtifactState::Committed;
    progress.acked.clear();
    save(progress, true)?;
    Ok(())
}

/// Checks a staging file under the rule (see `staging.rs`) and that it is
/// the content the record logged; computes its parts' MD5s when it is sent
/// in parts.
fn check(entry: &ArtifactManifestEntry, owner: u32) -> Result<Checked, Step> {
    let refused = |why: String| Step::NotUploadable(format!("file {:?}: {why}", entry.path));
    let staged = staging::open(&entry.local_path, owner, entry.size).map_err(refused)?;
    let parts = part_size(staged.size);
    let (md5, part_md5s) =
        staging::md5s(&staged, parts).map_err(|e| refused(format!("{}: {e}", entry.local_path)))?;
    if md5 != entry.digest {
        return Err(refused(format!(
            "{}: its MD5 is {md5}, but the artifact logged {} (the file changed)",
            entry.local_path, entry.digest
        )));
    }
    Ok(Checked {
        parts: parts.map(|_| part_md5s),
    })
}

/// The headers `CreateArtifactFiles` handed out (`Name:Value` each).
fn headers(list: &[String]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for header in list {
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            map.insert(name, value);
        }
    }
    map
}

async fn put_file(
    client: &Client,
    entry: &ArtifactManifestEntry,
    owner: u32,
    url: &str,
    upload_headers: &[String],
) -> Result<(), Step> {
    // Opened again under the rule: what is sent is what was checked.
    let staged = staging::open(&entry.local_path, owner, entry.size)
        .map_err(|why| Step::NotUploadable(format!("file {:?}: {why}", entry.path)))?;
    let (file, size) = (staged.file, staged.size);
    client
        .put_streamed(
            &format!("artifact file {}", entry.path),
            url,
            headers(upload_headers),
            size,
            || reqwest::Body::wrap(staging::FileBody::new(file.clone(), 0, size)),
        )
        .await?;
    Ok(())
}

async fn put_parts(
    client: &Client,
    entry: &ArtifactManifestEntry,
    owner: u32,
    slot: &ops::FileSlot,
    upload_id: &str,
    urls: &[(u64, String)],
    parts: &[[u8; 16]],
) -> Result<(), Step> {
    let staged = staging::open(&entry.local_path, owner, entry.size)
        .map_err(|why| Step::NotUploadable(format!("file {:?}: {why}", entry.path)))?;
    let Some(part) = part_size(staged.size) else {
        return Err(Step::NotUploadable(format!(
            "file {:?}: the server asked for parts of a file sent whole",
            entry.path
        )));
    };
    if urls.len() != parts.len() {
        return Err(Step::NotUploadable(format!(
            "file {:?}: {} parts, but the server gave {} URLs",
            entry.path,
            parts.len(),
            urls.len()
        )));
    }
    let content_type = slot
        .upload_headers
        .iter()
        .find_map(|h| h.strip_prefix("Content-Type:"))
        .unwrap_or("")
        .to_string();
    let mut etags = vec![String::new(); parts.len()];
    for (number, url) in urls {
        let index = number
            .checked_sub(1)
            .filter(|i| (*i as usize) < parts.len())
            .ok_or_else(|| {
                Step::NotUploadable(format!(
                    "file {:?}: the server named part {number}",
                    entry.path
                ))
            })? as usize;
        let start = index as u64 * part;
        let len = part.min(staged.size - start);
        let mut map = HeaderMap::new();
        let md5 = BASE64.encode(parts[index]);
        for (name, value) in [
            ("content-md5", md5.as_str()),
            // The length goes from the body's exact size.
            ("content-type", content_type.as_str()),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.insert(HeaderName::from_static(name), value);
            }
        }
        let file = staged.file.clone();
        let etag = client
            .put_streamed(
                &format!("artifact file {} part {number}", entry.path),
                url,
                map,
                len,
                || reqwest::Body::wrap(staging::FileBody::new(file.clone(), start, len)),
            )
            .await?;
        etags[index] = etag.ok_or_else(|| SinkError::Protocol {
            what: format!("artifact file {} part {number}", entry.path),
            message: "no ETag in the answer".into(),
        })?;
    }
    let storage_path = slot.storage_path.as_deref().unwrap_or_default();
    ops::complete_multipart(client, &slot.birth_id, storage_path, upload_id, &etags).await?;
    Ok(())
}

/// An artifact as `sync --json`, `status` and `inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ArtifactStatus {
    pub name: String,
    /// Its type (`dataset`, `model`, …), named as in `inspect`.
    pub kind: String,
    /// `queued`, `uploading`, `committed` or `not uploadable`.
    pub state: &'static str,
    /// Why it is not uploadable.
    pub reason: Option<String>,
    /// Files it uploads, and how many the server has acknowledged so far
    /// (all of them once committed).
    pub files: u64,
    pub files_acked: u64,
    /// The version's id on the server.
    pub server_id: Option<String>,
}

impl From<&ArtifactProgress> for ArtifactStatus {
    fn from(p: &ArtifactProgress) -> ArtifactStatus {
        let (state, reason) = match &p.state {
            ArtifactState::Queued => ("queued", None),
            ArtifactState::Uploading => ("uploading", None),
            ArtifactState::Committed => ("committed", None),
            ArtifactState::NotUploadable(why) => ("not uploadable", Some(why.clone())),
        };
        ArtifactStatus {
            name: p.name.clone(),
            kind: p.kind.clone(),
            state,
            reason,
            files: p.files,
            files_acked: if p.state == ArtifactState::Committed {
                p.files
            } else {
                p.acked.len() as u64
            },
            server_id: p.server_id.clone(),
        }
    }
}

/// The artifacts of a run's ledger entry as shown: each one with progress,
/// then those read before syncd uploaded artifacts (a ledger entry of an
/// older syncd, whose cursors are past their records), which never will be.
pub(crate) fn statuses(entry: &crate::ledger::RunLedger) -> Vec<ArtifactStatus> {
    let mut shown: Vec<ArtifactStatus> = entry.artifacts.iter().map(ArtifactStatus::from).collect();
    for info in entry.state.artifacts.iter().skip(entry.artifacts.len()) {
        shown.push(ArtifactStatus {
            name: info.name.clone(),
            kind: info.kind.clone(),
            state: "not uploadable",
            reason: Some("read by a syncd that did not upload artifacts".into()),
            files: info.entries as u64,
            files_acked: 0,
            server_id: None,
        });
    }
    shown
}
