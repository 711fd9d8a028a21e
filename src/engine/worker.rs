//! One run's upload: read new records from the ledger's cursors, turn them
//! into what the server stores, send, and move the cursors only after the
//! server answered 2xx. A step is: read up to a batch → send everything it
//! produced → checkpoint. A crash anywhere repeats at most the last step,
//! and because every line goes to a fixed offset, repeating it overwrites.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;

use crate::ledger::{
    ErrorNote, FileAck, FragmentProgress, Ledger, LedgerError, Phase, RunLedger, sha256_hex,
};
use crate::naming::{JobManifest, Naming, NamingRule, name_run, read_manifest};
use crate::project::search_root;
use crate::sink::wandb::client::{Client, SinkError};
use crate::sink::wandb::filestream::{self, Lines, Request};
use crate::sink::wandb::ops::{self, ServerRun, UpsertRun};
use crate::sink::wandb::run_config;
use crate::source::wandb::framing::{LogReader, ReadError, Tail};
use crate::source::wandb::proto::{self, Record, RecordType};
use crate::source::wandb::value::Value;
use crate::source::wandb::views::console::Stream;
use crate::source::wandb::views::{FileKind, Policy, Update};

/// How runs are synced (the same for every run of one `syncd sync`).
#[derive(Debug, Clone)]
pub struct SyncOptions {
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
pub struct Verdict {
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
pub struct RunJob {
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
    /// The entity and project of the run's `.env`, for a run that names
    /// none and is given none on the command line.
    pub entity: Option<String>,
    pub project: Option<String>,
}

impl RunJob {
    pub fn new(id: String, fragments: Vec<PathBuf>) -> RunJob {
        RunJob {
            id,
            fragments,
            found_under: None,
            manifest: None,
            entity: None,
            project: None,
        }
    }

    /// The directory of the oldest fragment.
    pub fn run_dir(&self) -> &Path {
        self.fragments
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(Path::new("."))
    }

    /// Where the search for the run's `.env` and manifest stops.
    pub fn search_root(&self) -> PathBuf {
        search_root(self.run_dir(), self.found_under.as_deref())
    }

    /// Reads the job manifest into [`RunJob::manifest`].
    pub fn read_manifest(&mut self) {
        self.manifest = read_manifest(self.run_dir(), &self.search_root()).map(Box::new);
    }
}

/// Progress of one run, for display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub bytes_read: u64,
    pub bytes_total: u64,
}

/// What happened to one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunOutcome {
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
pub struct WouldSend {
    pub lines: u64,
    pub files: u64,
    pub bytes: u64,
}

/// How a failed run should be treated by whoever retries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
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

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: ReadError },
    #[error("{0}")]
    Corrupt(String),
}

/// Everything produced by records since the last checkpoint.
#[derive(Default)]
struct Pending {
    history: Vec<String>,
    events: Vec<String>,
    alerts: Vec<proto::AlertRecord>,
    preempting: bool,
    bytes: usize,
    records: u64,
}

struct RunSync<'a> {
    client: Option<&'a Client>,
    ledger: &'a Ledger,
    options: &'a SyncOptions,
    /// The run as being read: ahead of what the server acknowledged.
    entry: RunLedger,
    /// The run as last saved: state and cursors that agree. Only this is
    /// ever written outside a checkpoint, so a crash can never pair a state
    /// with a cursor it does not belong to (that would apply records twice).
    checkpoint: RunLedger,
    pending: Pending,
    fragment_dirs: Vec<PathBuf>,
    history_sent: u64,
    files_uploaded: Vec<String>,
    /// Records read by this invocation.
    records_read: u64,
    /// A dry run's count of what would be sent.
    would_send: WouldSend,
    /// The run being synced: its manifest and `.env` defaults.
    job: &'a RunJob,
}

/// Syncs one run. Never panics on bad input; every failure ends up in the
/// outcome (and in the ledger).
pub async fn sync_run(
    client: Option<&Client>,
    ledger: &Ledger,
    options: &SyncOptions,
    job: &RunJob,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> RunOutcome {
    sync_known_run(client, ledger, options, job, None, on_progress)
        .await
        .0
}

/// `sync_run` for a caller that keeps its runs' ledger entries in memory
/// (the daemon, which holds the lease, so nobody else writes them): starts
/// from `known`, the entry as this run's last upload left it, instead of
/// reading and parsing it again, and gives back the entry as stored now
/// (`None` when nothing is stored: a dry run or no client).
#[tracing::instrument(name = "upload", skip_all, fields(run = %job.id, path = %job.run_dir().display()))]
pub async fn sync_known_run(
    client: Option<&Client>,
    ledger: &Ledger,
    options: &SyncOptions,
    job: &RunJob,
    known: Option<RunLedger>,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> (RunOutcome, Option<RunLedger>) {
    let base_url = client.map_or_else(String::new, |c| c.base_url().to_string());
    let key = match &known {
        Some(entry) => entry.key.clone(),
        None => crate::ledger::run_key(
            &job.id,
            &job.fragments[0],
            &base_url,
            options.entity.as_deref(),
            options.project.as_deref(),
        ),
    };
    let stores = !options.dry_run && client.is_some();
    let loaded = match known {
        Some(entry) => Ok(Some(entry)),
        None => ledger.load_run(
            &key,
            &crate::ledger::legacy_run_key(
                &job.id,
                &job.fragments[0],
                &base_url,
                options.entity.as_deref(),
                options.project.as_deref(),
            ),
            stores,
        ),
    };
    let entry = match loaded {
        Ok(Some(entry)) => entry,
        Ok(None) => RunLedger::new(key.clone(), job.id.clone(), base_url),
        // A checkpoint cut short by a power loss: start over. Every line goes
        // to its fixed offset again, so the server ends up the same.
        Err(LedgerError::Damaged { path, reason }) => {
            let mut fresh = RunLedger::new(key.clone(), job.id.clone(), base_url);
            fresh.warn(format!(
                "the ledger {} was damaged ({reason}); the run was uploaded again from the start",
                crate::paths::display(&path)
            ));
            fresh
        }
        Err(e) => return (failed_outcome(job, key, e.to_string()), None),
    };
    let mut run = RunSync {
        client,
        ledger,
        options,
        checkpoint: entry.clone(),
        entry,
        pending: Pending::default(),
        fragment_dirs: job
            .fragments
            .iter()
            .map(|p| p.parent().unwrap_or(Path::new(".")).to_path_buf())
            .collect(),
        history_sent: 0,
        files_uploaded: Vec::new(),
        records_read: 0,
        would_send: WouldSend::default(),
        job,
    };
    let result = run.sync(job, on_progress).await;
    let failure = result.as_ref().err().map(|e| match e {
        StepError::Sink(s) if s.is_offline() => Failure::Offline,
        StepError::Sink(s) if s.is_auth() => Failure::Auth,
        StepError::Sink(SinkError::Rejected { .. } | SinkError::GraphQl { .. }) => {
            Failure::Permanent
        }
        StepError::Corrupt(_) => Failure::Corrupt,
        _ => Failure::Transient,
    });
    if let Err(e) = &result {
        // The error goes onto the last checkpoint, never onto the state read
        // past it (saved with the old cursors, that state would make the next
        // sync apply the same records twice).
        let mut stored = run.checkpoint.clone();
        stored.phase = if matches!(e, StepError::Corrupt(_)) {
            Phase::Quarantined
        } else {
            Phase::Failed
        };
        stored.last_error = Some(ErrorNote {
            at: now_rfc3339(),
            message: e.to_string(),
        });
        stored.warnings = run.entry.warnings.clone();
        if !options.dry_run && client.is_some() {
            // Best effort: the error is also in the outcome.
            let _ = ledger.save(&stored);
        }
        run.checkpoint = stored.clone();
        run.entry = stored;
    }
    let entry = &run.entry;
    let outcome = RunOutcome {
        run_id: job.id.clone(),
        key,
        // A dry run changed nothing: the run is where the ledger has it
        // (`queued` for one never uploaded), with what would be sent.
        phase: if options.dry_run {
            run.checkpoint.phase
        } else {
            entry.phase
        },
        server_path: entry
            .server
            .as_ref()
            .map(|s| format!("{}/{}/{}", s.entity, s.project, s.name)),
        history_lines: entry.acked.history_lines,
        events_lines: entry.acked.events_lines,
        console_lines: entry.acked.console_lines,
        history_lines_sent: run.history_sent,
        files_uploaded: run.files_uploaded.clone(),
        exit_code: entry.acked.complete,
        artifacts_not_uploaded: entry.state.artifacts.len(),
        warnings: entry.warnings.clone(),
        error: result.err().map(|e| e.to_string()),
        would_send: options.dry_run.then_some(run.would_send),
        failure,
    };
    (outcome, stores.then_some(run.checkpoint))
}

/// The display name and group an upsert set.
fn sent_naming(upsert: &UpsertRun) -> Naming {
    Naming {
        display_name: upsert.display_name.clone(),
        group: upsert.group.clone(),
    }
}

/// The outcome of a run that could not be tried: its target is refused.
pub fn not_attempted(job: &RunJob, error: String) -> RunOutcome {
    RunOutcome {
        failure: Some(Failure::Config),
        ..failed_outcome(job, String::new(), error)
    }
}

fn failed_outcome(job: &RunJob, key: String, error: String) -> RunOutcome {
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
        warnings: Vec::new(),
        error: Some(error),
        would_send: None,
        failure: Some(Failure::Transient),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl RunSync<'_> {
    async fn sync(
        &mut self,
        job: &RunJob,
        on_progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), StepError> {
        self.check_fragments(job)?;
        let sizes: Vec<u64> = job
            .fragments
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .collect();
        let total: u64 = sizes.iter().sum();
        if self.entry.phase == Phase::Synced
            && self
                .entry
                .fragments
                .iter()
                .zip(&sizes)
                .all(|(f, s)| f.cursor >= *s)
        {
            return Ok(()); // complete on the server and nothing new on disk
        }
        let mut read_before: u64 = self.entry.fragments.iter().map(|f| f.cursor).sum();
        on_progress(Progress {
            bytes_read: read_before,
            bytes_total: total,
        });
        for (index, path) in job.fragments.iter().enumerate() {
            let start = self.entry.fragments[index].cursor;
            let file = crate::fs::open_regular(path).map_err(|e| StepError::Read {
                path: path.clone(),
                source: e.into(),
            })?;
            let mut reader = LogReader::open(file, start).map_err(|e| StepError::Read {
                path: path.clone(),
                source: e,
            })?;
            loop {
                let raw = match reader.next_record() {
                    Ok(Some(raw)) => raw,
                    Ok(None) => break,
                    Err(ReadError::Corrupt(c)) => {
                        // Everything before the damage is uploaded; the run is
                        // held back (quarantined) with the reason.
                        let cursor = reader.cursor();
                        self.flush(index, cursor, false).await?;
                        return Err(StepError::Corrupt(format!(
                            "{}: {c}; records before it were uploaded, the rest is held back",
                            crate::paths::display(path)
                        )));
                    }
                    Err(e) => {
                        return Err(StepError::Read {
                            path: path.clone(),
                            source: e,
                        });
                    }
                };
                let (record_start, end) = (raw.start, raw.end);
                let decoded = Record::decode(raw.payload);
                // The record is decoded (copied out): a big one's reassembly
                // buffer is not kept for the rest of the file.
                reader.release_large_buffer();
                let mut record = match decoded {
                    Ok(record) => record,
                    Err(_) => {
                        self.entry.warn(format!(
                            "{}: a record at byte {record_start} does not decode; skipped",
                            crate::paths::display(path),
                        ));
                        continue;
                    }
                };
                for refused in filestream::leave_out_oversized_values(&mut record) {
                    self.entry.warn(format!(
                        "{}: record at byte {record_start}: {refused}",
                        path.display()
                    ));
                }
                self.write_big_console_output(&mut record).await?;
                self.apply(index, record);
                self.pending.records += 1;
                self.records_read += 1;
                if self.pending.bytes + self.entry.state.console.unsent_bytes()
                    >= self.options.batch_bytes
                {
                    self.flush(index, end, false).await?;
                    on_progress(Progress {
                        bytes_read: read_before + end - start,
                        bytes_total: total,
                    });
                }
            }
            let cursor = reader.cursor();
            let tail = reader.tail().unwrap_or(Tail::Clean);
            let last = index + 1 == job.fragments.len();
            if !last || self.pending.records > 0 {
                self.flush(index, cursor, false).await?;
            }
            read_before += sizes[index].saturating_sub(start);
            on_progress(Progress {
                bytes_read: read_before,
                bytes_total: total,
            });
            if last {
                self.finish(index, cursor, tail, path).await?;
            }
        }
        Ok(())
    }

    /// The ledger's fragments must be a prefix of the run's fragments now.
    fn check_fragments(&mut self, job: &RunJob) -> Result<(), StepError> {
        let mut moved = false;
        for (i, path) in job.fragments.iter().enumerate() {
            match self.entry.fragments.get(i) {
                // The same file by another path (another spelling, a
                // symlinked or moved directory above the run): recorded
                // and shown by the path it has now.
                Some(known) if crate::ledger::same_fragment(&known.path, path) => {
                    if known.path != *path {
                        self.entry.fragments[i].path = path.clone();
                        if let Some(stored) = self.checkpoint.fragments.get_mut(i) {
                            stored.path = path.clone();
                        }
                        moved = true;
                    }
                }
                Some(known) => {
                    return Err(StepError::Corrupt(format!(
                        "fragment {} of run {} was {} and is now {}; move the ledger {} away to upload the run again",
                        i + 1,
                        job.id,
                        crate::paths::display(&known.path),
                        crate::paths::display(path),
                        self.entry.key
                    )));
                }
                None => self.entry.fragments.push(FragmentProgress {
                    path: path.clone(),
                    cursor: 0,
                    records: 0,
                    step_offset: 0,
                    exit: None,
                    run_seen: false,
                }),
            }
        }
        if moved && !self.options.dry_run && self.client.is_some() {
            self.ledger.save(&self.checkpoint)?;
        }
        Ok(())
    }

    /// Applies one record of fragment `index`.
    fn apply(&mut self, index: usize, record: Record) {
        // A resumed fragment (wandb 0.31's `resume`) continues the steps of
        // the fragments before it, as the official sync renumbers them.
        if let Some(RecordType::Run(run)) = &record.record_type
            && !self.entry.fragments[index].run_seen
        {
            self.entry.fragments[index].run_seen = true;
            if index > 0 {
                let state = &mut self.entry.state;
                if run.resume {
                    state.step_offset = state.last_step.map_or(0, |s| s + 1);
                }
                // wandb-metadata.json describes the newest fragment's process.
                state.environments.clear();
            }
            self.entry.fragments[index].step_offset = self.entry.state.step_offset;
        }
        let update = self.entry.state.apply(record);
        self.entry.fragments[index].records += 1;
        match update {
            Update::History { row, .. } => {
                let mut line = String::new();
                Value::write_object(&row, &mut line);
                self.push_line(line, true);
            }
            Update::Events { row } => {
                let mut line = String::new();
                Value::write_object(&row, &mut line);
                self.push_line(line, false);
            }
            Update::Alert(alert) => self.pending.alerts.push(alert),
            Update::Preempting => self.pending.preempting = true,
            Update::Exit(exit) => self.entry.fragments[index].exit = Some(exit),
            _ => {}
        }
    }

    fn push_line(&mut self, line: String, history: bool) {
        let size = filestream::json_string_len(&line);
        if size > filestream::MAX_LINE_BYTES {
            let what = if history { "history" } else { "system metrics" };
            // Each value fits (see `leave_out_oversized_values`), but not
            // all of them in one line, and a line cannot be split.
            self.entry.warn(format!(
                "a {what} row of {size} bytes is over the server's 10 MiB line limit and was not uploaded"
            ));
            return;
        }
        self.pending.bytes += line.len();
        if history {
            self.pending.history.push(line);
        } else {
            self.pending.events.push(line);
        }
    }

    /// Console output far bigger than a batch (a run printing a hundred
    /// megabytes at once) is fed to the console in pieces, and the lines it
    /// makes are sent as they pile up instead of all being held (twice,
    /// formatted) until the record's checkpoint. Sending them before the
    /// checkpoint is safe: each line goes to its fixed place in `output.log`,
    /// so a sync that stops before the checkpoint sends the same lines to
    /// the same places again. The last piece stays in the record, which is
    /// then applied as usual.
    async fn write_big_console_output(&mut self, record: &mut Record) -> Result<(), StepError> {
        let piece = self.options.batch_bytes.max(64 * 1024);
        let (stream, text) = match &mut record.record_type {
            Some(RecordType::OutputRaw(out)) if out.line.len() > piece => (
                if out.output_type == 0 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                },
                &mut out.line,
            ),
            Some(RecordType::OutputLogger(out)) if out.line.len() > piece => {
                (Stream::Stdout, &mut out.line)
            }
            _ => return Ok(()),
        };
        let whole = std::mem::take(text);
        let mut at = 0;
        while whole.len() - at > piece {
            let mut end = at + piece;
            while !whole.is_char_boundary(end) {
                end -= 1;
            }
            self.entry.state.console.write(stream, &whole[at..end]);
            at = end;
            if self.entry.state.console.unsent_bytes() >= self.options.batch_bytes {
                self.send_console_early().await?;
            }
        }
        *text = whole[at..].to_string();
        Ok(())
    }

    /// Sends the console lines changed so far, without a checkpoint (see
    /// [`RunSync::write_big_console_output`]).
    async fn send_console_early(&mut self) -> Result<(), StepError> {
        if self.options.dry_run || self.client.is_none() {
            return Ok(());
        }
        if self.entry.state.identity.run_id.is_none() {
            return Ok(()); // no run to send to yet: the flush sends them
        }
        let client = self.client.expect("checked above");
        let server = self.ensure_server_run(client).await?;
        let base = self.entry.acked.console_base;
        let now = SystemTime::now();
        let mut console = self
            .entry
            .state
            .console
            .take_changed()
            .into_iter()
            .map(|l| {
                (
                    base + l.index,
                    filestream::console_line(&l.text, l.stream == Stream::Stderr, now),
                )
            })
            .peekable();
        loop {
            let mut room = filestream::MAX_REQUEST_BYTES;
            let Some(output) = take_console(&mut console, &mut room, true) else {
                break;
            };
            let request = Request {
                output: Some(output),
                ..Default::default()
            };
            send_to_stream(client, &server, &request).await?;
        }
        Ok(())
    }

    /// Sends everything pending, then records `cursor` for fragment `index`.
    async fn flush(&mut self, index: usize, cursor: u64, finishing: bool) -> Result<(), StepError> {
        let pending = std::mem::take(&mut self.pending);
        let console = self.entry.state.console.take_changed();
        if self.options.dry_run || self.client.is_none() {
            let console_bytes: usize = console.iter().map(|l| l.text.len()).sum();
            self.would_send.lines +=
                (pending.history.len() + pending.events.len() + console.len()) as u64;
            self.would_send.bytes += (pending.bytes + console_bytes) as u64;
            if self.entry.state.identity.run_id.is_some() {
                self.count_files(finishing);
            }
            self.entry.acked.history_lines += pending.history.len() as u64;
            self.entry.acked.events_lines += pending.events.len() as u64;
            self.entry.acked.console_lines = self.entry.state.console.line_count();
            self.entry.fragments[index].cursor = cursor;
            return Ok(());
        }
        if self.entry.state.identity.run_id.is_none() {
            // No run record yet (the file has only its header): nothing to
            // create the run from. Keep the cursor where it was.
            return Ok(());
        }
        let client = self.client.expect("checked above");
        let server = self.ensure_server_run(client).await?;
        self.upsert_if_changed(client, &server).await?;
        let mut uploaded = self.upload_files(client, &server, finishing).await?;

        // FileStream: history and events at their fixed offsets, console
        // ranges one per request, the whole summary when it changed.
        let acked = &self.entry.acked;
        let mut history = Lines {
            offset: acked.history_base + acked.history_lines,
            lines: pending.history,
        };
        let mut events = Lines {
            offset: acked.events_base + acked.events_lines,
            lines: pending.events,
        };
        // Console lines are formatted as they are put in a request, so a
        // record of a hundred megabytes of output is never held formatted
        // (or serialized) whole.
        let now = SystemTime::now();
        let console_base = acked.console_base;
        let mut console = console
            .into_iter()
            .map(|l| {
                (
                    console_base + l.index,
                    filestream::console_line(&l.text, l.stream == Stream::Stderr, now),
                )
            })
            .peekable();
        let summary = run_config::summary_json(&self.entry.state);
        let summary_sha = sha256_hex(summary.as_bytes());
        let mut summary =
            (acked.summary_sha256.as_deref() != Some(summary_sha.as_str())).then_some(summary);
        let mut preempting = pending.preempting && !acked.preempting;
        if let Some(size) = summary
            .as_deref()
            .map(filestream::json_string_len)
            .filter(|size| *size > filestream::MAX_LINE_BYTES)
        {
            self.entry.warn(format!(
                "the summary ({size} bytes) is over the server's 10 MiB line limit and was not streamed (wandb-summary.json is uploaded as a file at the end)"
            ));
            summary = None;
        }
        let (history_count, events_count) = (history.lines.len() as u64, events.lines.len() as u64);
        loop {
            let mut request = Request::default();
            let mut room = filestream::MAX_REQUEST_BYTES;
            request.uploaded = std::mem::take(&mut uploaded);
            request.preempting = std::mem::take(&mut preempting);
            room = room.saturating_sub(request.bytes());
            if let Some(size) = summary.as_deref().map(filestream::json_string_len)
                && (size <= room || request.is_empty())
            {
                request.summary = summary.take();
                room = room.saturating_sub(size);
            }
            let empty = request.is_empty();
            take_lines(&mut history, &mut request.history, &mut room, empty);
            let empty = request.is_empty();
            take_lines(&mut events, &mut request.events, &mut room, empty);
            let empty = request.is_empty();
            request.output = take_console(&mut console, &mut room, empty);
            if request.is_empty() {
                break;
            }
            send_to_stream(client, &server, &request).await?;
            self.history_sent += request.history.as_ref().map_or(0, |l| l.lines.len() as u64);
        }
        let first_alert = self.entry.acked.alerts;
        for (i, alert) in pending.alerts.iter().enumerate() {
            let ordinal = first_alert + i as u64;
            if ordinal < self.entry.acked.alerts_attempted {
                // Attempted before a lost answer or a kill: at most once.
                continue;
            }
            // Durably recorded before the request leaves.
            self.entry.acked.alerts_attempted = ordinal + 1;
            self.save_decision(|stored| stored.acked.alerts_attempted = ordinal + 1)?;
            // The record holds milliseconds, as the API takes them.
            let sent = ops::notify_alert(
                client,
                &server,
                &alert.title,
                &alert.text,
                &alert.level,
                alert.wait_duration,
            )
            .await;
            match sent {
                Ok(()) => {}
                Err(e @ SinkError::Unconfirmed { .. }) => self.entry.warn(format!(
                    "alert {:?} may not have been sent, and is not sent again (alerts are sent at most once): {e}",
                    alert.title
                )),
                // Certainly not delivered (no connection, 429s, a refused
                // key): it may go later, with the run's data.
                Err(e) if e.is_auth() || matches!(e, SinkError::Exhausted { .. }) => {
                    self.entry.acked.alerts_attempted = ordinal;
                    self.save_decision(|stored| stored.acked.alerts_attempted = ordinal)?;
                    return Err(e.into());
                }
                // A notification the server refuses must not hold the run's
                // data back.
                Err(e) => {
                    self.entry
                        .warn(format!("alert {:?} was not sent: {e}", alert.title));
                }
            }
        }

        let acked = &mut self.entry.acked;
        acked.history_lines += history_count;
        acked.events_lines += events_count;
        acked.console_lines = self.entry.state.console.line_count();
        acked.summary_sha256 = Some(summary_sha);
        acked.alerts += pending.alerts.len() as u64;
        acked.preempting |= pending.preempting;
        self.entry.fragments[index].cursor = cursor;
        self.entry.last_upload = Some(now_rfc3339());
        self.entry.last_error = None;
        if self.entry.phase == Phase::Queued || self.entry.phase == Phase::Failed {
            self.entry.phase = Phase::Live;
        }
        self.save_checkpoint()?;
        Ok(())
    }

    /// The run on the server, created on first contact.
    async fn ensure_server_run(&mut self, client: &Client) -> Result<ServerRun, StepError> {
        if let Some(server) = &self.entry.server {
            return Ok(server.clone());
        }
        let upsert = self.upsert_params(true);
        let server = ops::upsert_bucket(client, &upsert).await?;
        if server.history_line_count > 0
            && self.entry.acked.history_lines == 0
            && self.entry.acked.history_base == 0
        {
            self.entry.warn(format!(
                "the server already had {} history lines for this run (an earlier upload); they are rewritten in place",
                server.history_line_count
            ));
        }
        self.entry.acked.config_sha256 = upsert.config.as_deref().map(|c| sha256_hex(c.as_bytes()));
        self.entry.acked.params_sha256 = Some(self.params_digest());
        self.entry.naming = Some(sent_naming(&upsert));
        self.entry.server = Some(server.clone());
        // Remember the server identity before any line is sent, on the last
        // checkpoint (the records read since are not acknowledged yet).
        let (server_run, acked) = (self.entry.server.clone(), self.entry.acked.clone());
        let warnings = self.entry.warnings.clone();
        let naming = self.entry.naming.clone();
        self.save_decision(|stored| {
            stored.server = server_run;
            stored.naming = naming;
            stored.acked.config_sha256 = acked.config_sha256;
            stored.acked.params_sha256 = acked.params_sha256;
            stored.warnings = warnings;
        })?;
        Ok(server)
    }

    fn save_checkpoint(&mut self) -> Result<(), StepError> {
        // Each checkpoint of a live run costs two fsyncs when durable; only
        // settled runs need to survive a power loss (a lost checkpoint
        // re-sends lines to the same offsets: nothing is duplicated).
        if matches!(self.entry.phase, Phase::Synced | Phase::Finalized) {
            self.ledger.save(&self.entry)?;
        } else {
            self.ledger.save_unsynced(&self.entry)?;
        }
        self.checkpoint = self.entry.clone();
        Ok(())
    }

    /// Records a decision that holds whatever the cursors are (the server's
    /// identity, say) without checkpointing the state read past them.
    fn save_decision(&mut self, decide: impl FnOnce(&mut RunLedger)) -> Result<(), StepError> {
        decide(&mut self.checkpoint);
        self.ledger.save(&self.checkpoint)?;
        Ok(())
    }

    /// The display name and group the naming rule gives the run now.
    fn naming(&self) -> Naming {
        let state = &self.entry.state;
        name_run(
            &self.options.naming,
            &state.identity,
            &state.config,
            self.job.manifest.as_deref(),
        )
    }

    fn upsert_params(&self, with_config: bool) -> UpsertRun {
        let identity = &self.entry.state.identity;
        let naming = self.naming();
        UpsertRun {
            storage_id: self
                .entry
                .server
                .as_ref()
                .map(|s| s.storage_id.clone())
                .filter(|s| !s.is_empty()),
            name: identity
                .run_id
                .clone()
                .unwrap_or_else(|| self.entry.run_id.clone()),
            entity: self
                .entry
                .server
                .as_ref()
                .map(|s| s.entity.clone())
                .or_else(|| self.options.entity.clone())
                .or_else(|| identity.entity.clone())
                .or_else(|| self.job.entity.clone()),
            project: self
                .entry
                .server
                .as_ref()
                .map(|s| s.project.clone())
                .or_else(|| self.options.project.clone())
                .or_else(|| identity.project.clone())
                .or_else(|| self.job.project.clone()),
            group: naming.group.or_else(|| identity.group.clone()),
            display_name: naming
                .display_name
                .or_else(|| identity.display_name.clone()),
            notes: identity.notes.clone(),
            commit: identity
                .git
                .as_ref()
                .map(|g| g.commit.clone())
                .filter(|c| !c.is_empty()),
            repo: identity
                .git
                .as_ref()
                .map(|g| g.remote_url.clone())
                .filter(|r| !r.is_empty()),
            config: with_config.then(|| run_config::upsert_config(&self.entry.state)),
            host: identity.host.clone(),
            program: identity.program.clone(),
            job_type: identity.job_type.clone(),
            // Like wandb: no tags is null, not an empty list.
            tags: (!identity.tags.is_empty()).then(|| identity.tags.clone()),
            summary_metrics: None,
        }
    }

    fn params_digest(&self) -> String {
        let p = self.upsert_params(false);
        sha256_hex(
            format!(
                "{:?}",
                (
                    p.group,
                    p.display_name,
                    p.notes,
                    p.commit,
                    p.repo,
                    p.host,
                    p.program,
                    p.job_type,
                    p.tags
                )
            )
            .as_bytes(),
        )
    }

    async fn upsert_if_changed(
        &mut self,
        client: &Client,
        server: &ServerRun,
    ) -> Result<(), StepError> {
        let config = run_config::upsert_config(&self.entry.state);
        let config_sha = sha256_hex(config.as_bytes());
        let params_sha = self.params_digest();
        let config_changed = self.entry.acked.config_sha256.as_deref() != Some(config_sha.as_str());
        let params_changed = self.entry.acked.params_sha256.as_deref() != Some(params_sha.as_str());
        if !config_changed && !params_changed {
            return Ok(());
        }
        let mut upsert = if params_changed {
            self.upsert_params(false)
        } else {
            UpsertRun {
                storage_id: Some(server.storage_id.clone()).filter(|s| !s.is_empty()),
                name: server.name.clone(),
                entity: Some(server.entity.clone()),
                project: Some(server.project.clone()),
                ..Default::default()
            }
        };
        if config_changed {
            upsert.config = Some(config);
        }
        ops::upsert_bucket(client, &upsert).await?;
        if params_changed {
            self.entry.naming = Some(sent_naming(&upsert));
        }
        self.entry.acked.config_sha256 = Some(config_sha);
        self.entry.acked.params_sha256 = Some(params_sha);
        Ok(())
    }

    /// Uploads files that are new or changed; returns their names for the
    /// FileStream `uploaded` list. End-policy and generated files go only
    /// when the run finishes.
    async fn upload_files(
        &mut self,
        client: &Client,
        server: &ServerRun,
        finishing: bool,
    ) -> Result<Vec<String>, StepError> {
        let (mut contents, mtimes) = self.files_to_send(finishing);
        if contents.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = contents.keys().cloned().collect();
        let targets = ops::create_run_files(client, server, &names).await?;
        let mut uploaded = Vec::new();
        for (name, url) in targets.files {
            let Some(bytes) = contents.remove(&name) else {
                continue;
            };
            let ack = FileAck {
                size: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
                mtime_ns: mtimes.get(&name).copied(),
            };
            match url {
                Some(url) => {
                    client
                        .put(&format!("upload of {name}"), &url, &targets.headers, bytes)
                        .await?;
                    self.entry.acked.files.insert(name.clone(), ack);
                    self.files_uploaded.push(name.clone());
                    uploaded.push(name);
                }
                None => self.entry.warn(format!(
                    "the server did not want files/{name} (no upload URL)"
                )),
            }
        }
        Ok(uploaded)
    }

    /// A dry run's [`RunSync::upload_files`]: counts what would be sent and
    /// takes it as sent (in memory only), so it is counted once.
    fn count_files(&mut self, finishing: bool) {
        let (contents, mtimes) = self.files_to_send(finishing);
        for (name, bytes) in contents {
            self.would_send.files += 1;
            self.would_send.bytes += bytes.len() as u64;
            let ack = FileAck {
                size: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
                mtime_ns: mtimes.get(&name).copied(),
            };
            self.entry.acked.files.insert(name, ack);
        }
    }

    /// The run's files that the server does not have as they are now, by
    /// name, with the mtime each had when read.
    #[allow(clippy::type_complexity)]
    fn files_to_send(
        &mut self,
        finishing: bool,
    ) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, i64>) {
        let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        // Each file's mtime when read, for its acknowledgement.
        let mut mtimes: BTreeMap<String, i64> = BTreeMap::new();
        let listed: Vec<(String, Policy, FileKind)> = self
            .entry
            .state
            .files
            .iter()
            .map(|(p, e)| (p.clone(), e.policy, e.kind))
            .collect();
        for (path, policy, kind) in listed {
            if kind == FileKind::Artifact || (policy == Policy::End && !finishing) {
                continue;
            }
            let Some(found) = self.find_run_file(&path) else {
                continue;
            };
            // While the run is live, a file whose size and mtime are what was
            // uploaded is not read again (a file saved with the "live" policy
            // can be large, and every upload would read and hash it); the
            // final upload compares contents.
            let ack = self.entry.acked.files.get(&path);
            if !finishing
                && ack.is_some_and(|a| a.size == found.size && a.mtime_ns == Some(found.mtime_ns))
            {
                continue;
            }
            if let Some(bytes) = self.read_found(&path, &found) {
                mtimes.insert(path.clone(), found.mtime_ns);
                contents.insert(path, bytes);
            }
        }
        if finishing {
            if let Some(bytes) = self.read_run_file(filestream::OUTPUT) {
                contents.insert(filestream::OUTPUT.into(), bytes);
            }
            contents.insert(
                "wandb-summary.json".into(),
                run_config::summary_json(&self.entry.state).into_bytes(),
            );
            contents.insert(
                "config.yaml".into(),
                run_config::config_yaml(&self.entry.state).into_bytes(),
            );
            if let Some(metadata) = run_config::metadata_json(&self.entry.state) {
                contents.insert("wandb-metadata.json".into(), metadata.into_bytes());
            }
        }
        contents.retain(|path, bytes| match self.entry.acked.files.get_mut(path) {
            Some(ack) if ack.size == bytes.len() as u64 && ack.sha256 == sha256_hex(bytes) => {
                // The same bytes, touched: remember the new mtime so that
                // it is not read again.
                ack.mtime_ns = mtimes.get(path).copied();
                false
            }
            _ => true,
        });
        (contents, mtimes)
    }

    /// A run file's bytes from the newest fragment that has it.
    fn read_run_file(&mut self, rel: &str) -> Option<Vec<u8>> {
        let found = self.find_run_file(rel)?;
        self.read_found(rel, &found)
    }

    /// The bytes of run file `rel`; a file that cannot be read, is not a
    /// regular file, or leads out of its run directory (through a symlink
    /// in any component: `files/sub -> /etc`, `files -> /etc`) is reported
    /// (once) and skipped. Only the run's own data leaves the machine.
    fn read_found(&mut self, rel: &str, found: &FoundFile) -> Option<Vec<u8>> {
        use std::io::Read;
        let read = crate::fs::open_beneath(&found.run_dir, &found.path).and_then(|mut file| {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map(|_| bytes)
        });
        match read {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.entry.warn(match crate::fs::refusal(&e) {
                    Some(refused @ crate::fs::Refused::Outside(_)) => format!(
                        "files/{rel} {refused}; not uploaded (copy the file into the run to upload it)"
                    ),
                    Some(refused) => format!("files/{rel} {refused}; not uploaded"),
                    None => format!("files/{rel}: cannot read ({e}); not uploaded"),
                });
                None
            }
        }
    }

    /// Where run file `rel` is: in the newest fragment that has it. Whether
    /// it may be read is decided when it is opened ([`Self::read_found`]).
    fn find_run_file(&mut self, rel: &str) -> Option<FoundFile> {
        if rel.split('/').any(|part| part == "..") || rel.starts_with('/') {
            self.entry.warn(format!(
                "files/{rel}: a path outside the run directory; not uploaded"
            ));
            return None;
        }
        for dir in self.fragment_dirs.iter().rev() {
            let path = dir.join("files").join(rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            // The file's own size and mtime (a symlink's target's).
            let meta = std::fs::metadata(&path).unwrap_or(meta);
            return Some(FoundFile {
                size: meta.len(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                path,
                run_dir: dir.clone(),
            });
        }
        None
    }

    /// After the newest fragment: complete the run if that fragment ended,
    /// or, when asked to, finalize a run whose writer is gone.
    async fn finish(
        &mut self,
        index: usize,
        cursor: u64,
        tail: Tail,
        path: &Path,
    ) -> Result<(), StepError> {
        let code = match self.entry.fragments[index].exit {
            Some(exit) if exit.not_complete => None,
            Some(exit) => Some(exit.code),
            None => match self.finalize_code(tail, path) {
                Some(code) => Some(code),
                None => return self.mark_live(),
            },
        };
        let settled = matches!(self.entry.phase, Phase::Synced | Phase::Finalized);
        if settled && self.entry.acked.complete == code && self.records_read == 0 {
            return Ok(());
        }
        let phase = if self.entry.finalized_reason.is_some() {
            Phase::Finalized
        } else {
            Phase::Synced
        };
        if self.options.dry_run
            || self.client.is_none()
            || self.entry.state.identity.run_id.is_none()
        {
            if self.entry.state.identity.run_id.is_some() {
                self.count_files(true);
            }
            self.entry.acked.complete = code;
            self.entry.phase = phase;
            return Ok(());
        }
        let client = self.client.expect("checked above");
        let server = self.ensure_server_run(client).await?;
        self.upsert_if_changed(client, &server).await?;
        let uploaded = self.upload_files(client, &server, true).await?;
        let summary = run_config::summary_json(&self.entry.state);
        let summary_sha = sha256_hex(summary.as_bytes());
        let summary = (self.entry.acked.summary_sha256.as_deref() != Some(summary_sha.as_str()))
            .then_some(summary);
        // An exit record that says "not complete" leaves the run open.
        let request = Request {
            uploaded,
            summary,
            complete: code,
            ..Default::default()
        };
        if !request.is_empty() {
            send_to_stream(client, &server, &request).await?;
        }
        self.entry.acked.complete = code;
        self.entry.acked.summary_sha256 = Some(summary_sha);
        self.entry.fragments[index].cursor = cursor;
        self.entry.phase = phase;
        self.entry.last_upload = Some(now_rfc3339());
        self.save_checkpoint()?;
        Ok(())
    }

    /// Exit code 1 for a run without exit record, when `--finalize` asks for
    /// it and the newest file has been quiet for `stale_after`; the reason is
    /// recorded. `None` leaves the run open.
    fn finalize_code(&mut self, tail: Tail, path: &Path) -> Option<i32> {
        if let Some(verdict) = &self.options.verdict {
            self.entry.finalized_reason = Some(verdict.reason.clone());
            if let Some(state) = &verdict.slurm_state {
                let run = &mut self.entry.state;
                run.summary
                    .insert("slurm_state".into(), Value::String(state.clone()));
                let tag = format!("slurm:{state}");
                if !run.identity.tags.contains(&tag) {
                    run.identity.tags.push(tag);
                }
            }
            return Some(1);
        }
        if !self.options.finalize {
            return None;
        }
        let age = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        if age.is_none_or(|a| a < self.options.stale_after) {
            self.entry.warn(format!(
                "not finalized: {} changed less than {} ago, its writer may still be running",
                crate::paths::display(path),
                humantime::format_duration(self.options.stale_after)
            ));
            return None;
        }
        self.entry.finalized_reason = Some(match tail {
            Tail::Clean => {
                "no exit record: the run was cut off (killed, timed out or crashed)".to_string()
            }
            Tail::Incomplete { bytes, .. } | Tail::Torn { bytes, .. } => format!(
                "no exit record, and {bytes} bytes of an unfinished record at the end: \
                 the run was cut off (killed, timed out or crashed)"
            ),
        });
        Some(1)
    }

    fn mark_live(&mut self) -> Result<(), StepError> {
        self.entry.phase = Phase::Live;
        if !self.options.dry_run && self.client.is_some() {
            self.save_checkpoint()?;
        }
        Ok(())
    }
}

/// A run file on disk.
struct FoundFile {
    path: PathBuf,
    /// The fragment's run directory, which the file must lie within.
    run_dir: PathBuf,
    size: u64,
    mtime_ns: i64,
}

/// Moves as many lines from `source` into `slot` as fit in `room` bytes
/// (one that does not fit only into an `empty` request: a line is never over
/// [`filestream::MAX_LINE_BYTES`], so a request never is over the cap).
fn take_lines(source: &mut Lines, slot: &mut Option<Lines>, room: &mut usize, empty: bool) {
    if source.lines.is_empty() {
        return;
    }
    let mut take = 0;
    let mut used = 0;
    for line in &source.lines {
        let size = filestream::json_string_len(line) + 1;
        if used + size > *room && !(take == 0 && empty) {
            break;
        }
        used += size;
        take += 1;
    }
    if take == 0 {
        return;
    }
    let rest = source.lines.split_off(take);
    let lines = std::mem::replace(&mut source.lines, rest);
    *slot = Some(Lines {
        offset: source.offset,
        lines,
    });
    source.offset += take as u64;
    *room = room.saturating_sub(used);
}

/// The next consecutive console lines that fit in `room` (one that does not
/// fit only into an `empty` request; console lines are wrapped well under
/// the line limit). The server takes one range of `output.log` per request.
fn take_console(
    console: &mut std::iter::Peekable<impl Iterator<Item = (u64, String)>>,
    room: &mut usize,
    empty: bool,
) -> Option<Lines> {
    let mut taken: Option<Lines> = None;
    while let Some((index, line)) = console.peek() {
        let size = filestream::json_string_len(line) + 1;
        let next_offset = taken.as_ref().map(|t| t.offset + t.lines.len() as u64);
        if next_offset.is_some_and(|next| next != *index)
            || (size > *room && !(taken.is_none() && empty))
        {
            break;
        }
        *room = room.saturating_sub(size);
        let (index, line) = console.next().expect("peeked");
        taken
            .get_or_insert_with(|| Lines {
                offset: index,
                lines: Vec::new(),
            })
            .lines
            .push(line);
    }
    taken
}

/// Posts one FileStream request to the run's stream on the server.
async fn send_to_stream(
    client: &Client,
    server: &ServerRun,
    request: &Request,
) -> Result<(), SinkError> {
    client
        .file_stream(
            &server.entity,
            &server.project,
            &server.name,
            request.to_json(),
        )
        .await?;
    Ok(())
}
