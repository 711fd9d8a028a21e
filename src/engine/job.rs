//! What the engine asks of an upload and what it gets back, whatever the
//! tracker: the run to sync ([`RunJob`]), how ([`SyncOptions`], with the
//! [`Verdict`] of a run whose writer is gone), and what happened
//! ([`RunOutcome`], its [`Failure`] class for the scheduler). The steps
//! themselves (read, send, checkpoint) belong to the sink
//! (`sink::wandb::upload`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ledger::Phase;
use crate::naming::{JobManifest, NamingRule, read_manifest};
use crate::project::search_root;
use crate::source::wandb::metadata;

/// How runs are synced (the same for every run of one `syncd sync`).
#[derive(Debug, Clone)]
pub(crate) struct SyncOptions {
    pub entity: Option<String>,
    pub project: Option<String>,
    /// Complete runs that have no exit record and whose writer is gone.
    pub finalize: bool,
    /// The writer is known to be gone (the daemon asked the scheduler): a
    /// run without exit record is completed as failed now, and the verdict
    /// is recorded in the run.
    pub verdict: Option<Verdict>,
    /// A newest fragment unchanged this long counts as abandoned by its writer.
    pub stale_after: std::time::Duration,
    /// Read and count, send nothing, write no ledger.
    pub dry_run: bool,
    /// Flush to the server after this many bytes of new lines.
    pub batch_bytes: usize,
    /// How runs are named and grouped on the server.
    pub naming: NamingRule,
}

/// Why a run without exit record is finalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Human sentence for the ledger and `status`.
    pub reason: String,
    /// Slurm's final job state (`TIMEOUT`, `CANCELLED`, …), recorded in the
    /// run's summary (`slurm_state`) and tags (`slurm:TIMEOUT`).
    pub slurm_state: Option<String>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            entity: None,
            project: None,
            finalize: false,
            verdict: None,
            stale_after: std::time::Duration::from_secs(600),
            dry_run: false,
            batch_bytes: 4 * 1024 * 1024,
            naming: NamingRule::default(),
        }
    }
}

/// A run to sync: its id and its fragments, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct RunJob {
    pub id: String,
    pub fragments: Vec<PathBuf>,
    /// The watched root or command-line path the run was found under: it
    /// bounds the search for its `.env` and job manifest.
    /// Shared: every run found under one root has the same.
    pub found_under: Option<Arc<Path>>,
    /// The job manifest the sbatch templates wrote, read by whoever plans
    /// the upload (once per run, not once per upload).
    /// Boxed: most runs have none, and the daemon holds thousands of jobs.
    pub manifest: Option<Box<JobManifest>>,
    /// The Slurm variables of the run's `wandb-metadata.json`, read with
    /// the manifest: writers before wandb 0.21 record them only there, and
    /// the run is named from them as `syncd inspect` shows it. Empty for
    /// most runs, which costs no allocation.
    pub metadata_slurm: BTreeMap<String, String>,
    /// The entity and project of the run's `.env`, for a run that names
    /// none and is given none on the command line.
    pub entity: Option<String>,
    pub project: Option<String>,
}

impl RunJob {
    pub(crate) fn new(id: String, fragments: Vec<PathBuf>) -> RunJob {
        RunJob {
            id,
            fragments,
            found_under: None,
            manifest: None,
            metadata_slurm: BTreeMap::new(),
            entity: None,
            project: None,
        }
    }

    /// The directory of the oldest fragment.
    pub(crate) fn run_dir(&self) -> &Path {
        self.fragments
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(Path::new("."))
    }

    /// Where the search for the run's `.env` and manifest stops.
    pub(crate) fn search_root(&self) -> PathBuf {
        search_root(self.run_dir(), self.found_under.as_deref())
    }

    /// Reads what the run's job left beside its records: the job manifest
    /// into [`RunJob::manifest`], the metadata's Slurm variables into
    /// [`RunJob::metadata_slurm`].
    pub(crate) fn read_job_files(&mut self) {
        self.manifest = read_manifest(self.run_dir(), &self.search_root()).map(Box::new);
        self.metadata_slurm = metadata::slurm_variables(self.run_dir());
    }
}

/// Progress of one run, for display.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub bytes_read: u64,
    pub bytes_total: u64,
}

/// What happened to one run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RunOutcome {
    pub run_id: String,
    pub key: String,
    pub phase: Phase,
    /// `entity/project/name` on the server.
    pub server_path: Option<String>,
    pub history_lines: u64,
    pub events_lines: u64,
    pub console_lines: u64,
    /// History lines sent by this invocation (resends included).
    pub history_lines_sent: u64,
    pub files_uploaded: Vec<String>,
    pub exit_code: Option<i32>,
    pub artifacts_not_uploaded: usize,
    /// Each artifact the run logged and where its upload stands.
    pub artifacts: Vec<crate::sink::wandb::artifact::ArtifactStatus>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
    /// A dry run's account of what a real sync would send now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_send: Option<WouldSend>,
    /// What kind of failure `error` is, for a scheduler to react to.
    #[serde(skip)]
    pub failure: Option<Failure>,
}

/// What a dry run found a real sync would send: lines of history, system
/// metrics and console, files (with the summary, config and metadata a
/// completed run gets), and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct WouldSend {
    pub lines: u64,
    pub files: u64,
    pub bytes: u64,
}

/// How a failed run should be treated by whoever retries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server could not be reached: every run is affected.
    Offline,
    /// The key was refused: no run will do better until it changes.
    Auth,
    /// The server refused this run for good (403, 404, 410, 422…).
    Permanent,
    /// The run's files are damaged; retrying cannot help until they change.
    Corrupt,
    /// The run's settings are refused (its `.env`, no key for its server):
    /// nothing is tried until they change.
    Config,
    /// Anything else: retry later.
    Transient,
}

/// The outcome of a run that could not be tried: its target is refused.
pub(crate) fn not_attempted(job: &RunJob, error: String) -> RunOutcome {
    RunOutcome {
        failure: Some(Failure::Config),
        ..failed_outcome(job, String::new(), error)
    }
}

/// The outcome of a run that failed before anything was tried (its ledger
/// entry could not be read, say): retried later.
pub(crate) fn failed_outcome(job: &RunJob, key: String, error: String) -> RunOutcome {
    RunOutcome {
        run_id: job.id.clone(),
        key,
        phase: Phase::Failed,
        server_path: None,
        history_lines: 0,
        events_lines: 0,
        console_lines: 0,
        history_lines_sent: 0,
        files_uploaded: Vec::new(),
        exit_code: None,
        artifacts_not_uploaded: 0,
        artifacts: Vec::new(),
        warnings: Vec::new(),
        error: Some(error),
        would_send: None,
        failure: Some(Failure::Transient),
    }
}
