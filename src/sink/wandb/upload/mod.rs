//! One run's upload to W&B: read new records from the ledger's cursors,
//! turn them into what the server stores, send, and move the cursors only
//! after the server answered 2xx. A step is: read up to a batch → send
//! everything it produced → checkpoint. A step's requests go out while
//! the next batch is read and encoded (one step in flight at a time, so
//! the server sees them in order); its checkpoint is saved once they all
//! succeeded. A crash anywhere repeats at most the last two steps, and
//! because every line goes to a fixed offset, repeating them overwrites.
//!
//! - `mod.rs`: the read loop, records applied to the run's state, the
//!   flush that starts a step, and the checkpoints.
//! - `batch.rs`: how pending lines are cut into requests under the
//!   server's size limits, and a step's requests sent on a task of their
//!   own (file uploads alongside the FileStream requests).
//! - `files.rs`: which run files are uploaded, and the symlink policy
//!   (only the run's own data leaves the machine).
//! - `output_log.rs`: `output.log`, rebuilt from the console records
//!   through a spool file in the state directory.
//! - `upsert.rs`: the run's identity on the server (`UpsertBucket`) and
//!   the digests that say when it must be sent again.
//! - `finish.rs`: completing a run, or finalizing one whose writer is gone.

mod batch;
mod files;
mod finish;
mod output_log;
mod upsert;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use prost::Message;

use crate::engine::job::{
    Failure, Progress, RunJob, RunOutcome, SyncOptions, WouldSend, failed_outcome,
};
use crate::fs::sha256_hex;
use crate::ledger::{ErrorNote, FragmentProgress, Ledger, LedgerError, Phase, RunLedger};
use crate::sink::wandb::artifact;
use crate::sink::wandb::client::{Client, Reserved, SEND_WINDOW_BYTES, SinkError};
use crate::sink::wandb::filestream::{self, Lines, Request};
use crate::sink::wandb::ops;
use crate::sink::wandb::run_config;
use crate::source::wandb::framing::{LogReader, ReadError, Tail};
use crate::source::wandb::proto::{self, Record, RecordType};
use crate::source::wandb::value::Value;
use crate::source::wandb::views::Update;
use crate::source::wandb::views::console::Stream;

use batch::{Outbox, Sent, Step, StepTask, send_to_stream, take_console};

/// Why a step failed; its kind decides the run's [`Failure`] class.
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

impl From<artifact::Stop> for StepError {
    fn from(stop: artifact::Stop) -> StepError {
        match stop {
            artifact::Stop::Sink(e) => StepError::Sink(e),
            artifact::Stop::Ledger(e) => StepError::Ledger(e),
        }
    }
}

/// Everything produced by records since the last checkpoint.
#[derive(Default)]
struct Pending {
    history: Vec<String>,
    events: Vec<String>,
    alerts: Vec<proto::AlertRecord>,
    artifacts: Vec<artifact::Logged>,
    preempting: bool,
    bytes: usize,
    records: u64,
}

/// A step whose requests are under way, and the checkpoint to save once
/// the server acknowledged all of them: the run as it was when the step
/// was cut (the reading has moved on since).
struct InFlight {
    task: StepTask,
    checkpoint: RunLedger,
}

/// Records read between two yields to the other tasks on the thread.
const YIELD_EVERY: u64 = 256;

/// How much of the send window a run takes at a time as its batch grows.
const WINDOW_STEP: usize = 256 * 1024;

/// How a run ends, sent with its last step.
#[derive(Debug, Clone, Copy)]
struct RunEnd {
    /// The exit code the run is completed with; `None` leaves it open on
    /// the server (an exit record that says "not complete").
    complete: Option<i32>,
    phase: Phase,
}

/// One run's upload under way.
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
    /// The step sent last, until it is acknowledged and checkpointed.
    in_flight: Option<InFlight>,
    /// The share of the server's send window the batch being read holds.
    reserved: Option<Reserved>,
}

/// Syncs one run. Never panics on bad input; every failure ends up in the
/// outcome (and in the ledger).
pub(crate) async fn sync_run(
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
pub(crate) async fn sync_known_run(
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
        // An entry that does not load (damaged, or a newer syncd's) is never
        // replaced, and its run is not uploaded from the start behind the
        // user's back (that would send every alert and file again): the run
        // stops until a person moves the entry away (or upgrades syncd, for
        // a newer one's). Power losses do not get here: durable copies are
        // replaced atomically, and a live checkpoint cut short falls back to
        // its durable copy.
        Err(e @ (LedgerError::Damaged { .. } | LedgerError::UnknownFormat { .. })) => {
            let outcome = RunOutcome {
                failure: Some(Failure::Permanent),
                ..failed_outcome(job, key, crate::errors::one_line(&e))
            };
            return (outcome, None);
        }
        Err(e) => return (failed_outcome(job, key, crate::errors::one_line(&e)), None),
    };
    let mut run = RunSync::new(client, ledger, options, job, entry);
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
        if stores && let Err(save) = ledger.save(&stored) {
            // The error is also in the outcome; the ledger keeps the last
            // checkpoint, which is what the next upload starts from.
            tracing::warn!(key = %stored.key, error = %save, "cannot record the failure in the ledger");
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
        artifacts_not_uploaded: entry.state.artifacts.len().saturating_sub(
            entry
                .artifacts
                .iter()
                .filter(|a| a.state == crate::ledger::ArtifactState::Committed)
                .count(),
        ),
        artifacts: artifact::statuses(entry),
        warnings: entry.warnings.clone(),
        error: result.err().map(|e| crate::errors::one_line(&e)),
        would_send: options.dry_run.then_some(run.would_send),
        failure,
    };
    (outcome, stores.then_some(run.checkpoint))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl<'a> RunSync<'a> {
    /// An upload of `job` starting from `entry`, its ledger entry as stored.
    fn new(
        client: Option<&'a Client>,
        ledger: &'a Ledger,
        options: &'a SyncOptions,
        job: &'a RunJob,
        entry: RunLedger,
    ) -> RunSync<'a> {
        RunSync {
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
            in_flight: None,
            reserved: None,
        }
    }

    /// The client, unless nothing is to be sent (a dry run, or no client).
    fn sending_client(&self) -> Option<&'a Client> {
        self.client.filter(|_| !self.options.dry_run)
    }

    async fn sync(
        &mut self,
        job: &RunJob,
        on_progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), StepError> {
        let result = self.read_and_send(job, on_progress).await;
        // Even when reading failed, the step under way is waited for: its
        // checkpoint is good, and keeps the next upload from sending it again.
        let drained = self.drain().await;
        result.and(drained)
    }

    async fn read_and_send(
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
                        self.flush(index, cursor, None).await?;
                        self.drain().await?;
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
                if let Some(RecordType::Artifact(logged)) = &record.record_type {
                    self.pending.artifacts.push(artifact::Logged {
                        fragment: index,
                        offset: record_start,
                        record: logged.clone(),
                    });
                }
                self.apply(index, record);
                self.pending.records += 1;
                self.records_read += 1;
                if self.records_read.is_multiple_of(YIELD_EVERY) {
                    // The step under way (its connection's writes and reads)
                    // and other runs get the thread now and then.
                    tokio::task::yield_now().await;
                }
                let batch = self.pending.bytes + self.entry.state.console.unsent_bytes();
                if batch >= self.options.batch_bytes || !self.reserve(batch).await {
                    self.flush(index, end, None).await?;
                    on_progress(Progress {
                        bytes_read: read_before + end - start,
                        bytes_total: total,
                    });
                }
            }
            let cursor = reader.cursor();
            let tail = reader.tail().unwrap_or(Tail::Clean);
            let last = index + 1 == job.fragments.len();
            if last {
                // The pending lines go with the run's end, if it ends.
                self.finish(index, cursor, tail, path).await?;
            } else {
                self.flush(index, cursor, None).await?;
            }
            read_before += sizes[index].saturating_sub(start);
            on_progress(Progress {
                bytes_read: read_before,
                bytes_total: total,
            });
        }
        Ok(())
    }

    /// Holds `bytes` of the server's send window for the batch being read,
    /// taking more as it grows. `false` when other runs' batches hold the
    /// rest: this batch ends here (and gives its share back once sent).
    /// Holding none, a run waits for a share instead (a batch of one record
    /// would be a request per record).
    async fn reserve(&mut self, bytes: usize) -> bool {
        let Some(client) = self.sending_client() else {
            return true;
        };
        let held = self.reserved.as_ref().map_or(0, Reserved::num_permits);
        if bytes <= held || held >= SEND_WINDOW_BYTES {
            return true;
        }
        let more = (bytes - held)
            .next_multiple_of(WINDOW_STEP)
            .min(SEND_WINDOW_BYTES - held);
        let taken = match client.try_reserve(more) {
            Some(taken) => taken,
            None if held == 0 => client.reserve(more).await,
            None => return false,
        };
        match &mut self.reserved {
            Some(reserved) => reserved.merge(taken),
            None => self.reserved = Some(taken),
        }
        true
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
                None => self
                    .entry
                    .fragments
                    .push(FragmentProgress::unread(path.clone())),
            }
        }
        if moved && self.sending_client().is_some() {
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
        let Some(client) = self.sending_client() else {
            return Ok(());
        };
        if self.entry.state.identity.run_id.is_none() {
            return Ok(()); // no run to send to yet: the flush sends them
        }
        // After the step under way: it may carry older text of these lines.
        self.drain().await?;
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

    /// Starts a step: sends everything pending (and with `end`, how the
    /// run ends), then records `cursor` for fragment `index` once the server
    /// acknowledged it. The step before is waited for first. A step that
    /// ends the run or carries alerts is waited for here; any other goes on
    /// while the next batch is read.
    async fn flush(
        &mut self,
        index: usize,
        cursor: u64,
        end: Option<RunEnd>,
    ) -> Result<(), StepError> {
        let finishing = end.is_some();
        let pending = std::mem::take(&mut self.pending);
        let console = self.entry.state.console.take_changed();
        let Some(client) = self.sending_client() else {
            let console_bytes: usize = console.iter().map(|l| l.text.len()).sum();
            self.would_send.lines +=
                (pending.history.len() + pending.events.len() + console.len()) as u64;
            self.would_send.bytes += (pending.bytes + console_bytes) as u64;
            if self.entry.state.identity.run_id.is_some() {
                let output = self.output_log_to_send(finishing).await;
                self.count_files(finishing, output);
            }
            self.entry.acked.history_lines += pending.history.len() as u64;
            self.entry.acked.events_lines += pending.events.len() as u64;
            self.entry.acked.console_lines = self.entry.state.console.line_count();
            self.entry.fragments[index].cursor = cursor;
            if let Some(end) = end {
                self.entry.acked.complete = end.complete;
                self.entry.phase = end.phase;
            }
            return Ok(());
        };
        if self.entry.state.identity.run_id.is_none() {
            // No run record yet (the file has only its header): nothing to
            // create the run from. Keep the cursor where it was.
            if let Some(end) = end {
                self.entry.acked.complete = end.complete;
                self.entry.phase = end.phase;
            }
            return Ok(());
        }
        // One step in flight: the server sees the steps in order (a newer
        // summary or console line is never overwritten by an older one).
        self.drain().await?;
        let server = self.ensure_server_run(client).await?;
        self.upsert_if_changed(client, &server).await?;
        // As the official client: an artifact is saved when its record is
        // sent, before the run's files. No step is in flight here (drained
        // above), so the progress saved onto the last checkpoint is also in
        // the run as read, and in the checkpoint of the step cut below.
        self.upload_artifacts(client, &pending.artifacts).await?;
        let output = self.output_log_to_send(finishing).await;
        let (files, output_log) = self.files_for_step(finishing, output);

        // FileStream: history and events at their fixed offsets, console
        // ranges one per request, the whole summary when it changed.
        let acked = &self.entry.acked;
        let history = Lines {
            offset: acked.history_base + acked.history_lines,
            lines: pending.history,
        };
        let events = Lines {
            offset: acked.events_base + acked.events_lines,
            lines: pending.events,
        };
        // Console lines are formatted as they are put in a request, so a
        // record of a hundred megabytes of output is never held formatted
        // (or serialized) whole.
        let now = SystemTime::now();
        let console_base = acked.console_base;
        let console = console
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
        let preempting = pending.preempting && !acked.preempting;
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
        let mut outbox = Outbox {
            uploaded: Vec::new(),
            preempting,
            summary,
            history,
            events,
            console,
        };
        // Encoded here, request by request, each request's lines dropped
        // once encoded: the batch is held once, as lines or as bodies.
        let mut step = Step {
            server: server.clone(),
            files,
            output_log,
            bodies: Vec::new(),
            history_lines: history_count,
            closing: Request {
                complete: end.and_then(|e| e.complete),
                ..Default::default()
            },
        };
        while let Some(request) = outbox.next_request() {
            step.bodies.push(request.to_json());
        }
        drop(outbox);
        // The step's share of the send window goes with it, given back as
        // soon as its requests are done (not when the run next looks: a run
        // waiting for a share must not wait on its own).
        let task = StepTask::spawn(client, step, self.reserved.take());

        // The run as it will be once the step is acknowledged.
        let acked = &mut self.entry.acked;
        acked.history_lines += history_count;
        acked.events_lines += events_count;
        acked.console_lines = self.entry.state.console.line_count();
        acked.summary_sha256 = Some(summary_sha);
        acked.preempting |= pending.preempting;
        self.entry.fragments[index].cursor = cursor;
        self.entry.last_upload = Some(now_rfc3339());
        self.entry.last_error = None;
        match end {
            Some(end) => {
                acked.complete = end.complete;
                self.entry.phase = end.phase;
            }
            None if matches!(self.entry.phase, Phase::Queued | Phase::Failed) => {
                self.entry.phase = Phase::Live;
            }
            None => {}
        }
        if !finishing && pending.alerts.is_empty() {
            self.in_flight = Some(InFlight {
                task,
                checkpoint: self.entry.clone(),
            });
            return Ok(());
        }
        // Alerts go after the step's lines, and before its checkpoint.
        let sent = task.wait().await?;
        self.acknowledged(&sent, None);
        self.send_alerts(client, &server, &pending.alerts).await?;
        self.entry.acked.alerts += pending.alerts.len() as u64;
        let checkpoint = self.entry.clone();
        self.save_checkpoint(checkpoint)
    }

    /// Waits for the step under way, if any, and saves its checkpoint.
    async fn drain(&mut self) -> Result<(), StepError> {
        let Some(InFlight {
            task,
            mut checkpoint,
        }) = self.in_flight.take()
        else {
            return Ok(());
        };
        let sent = task.wait().await?;
        self.acknowledged(&sent, Some(&mut checkpoint));
        self.save_checkpoint(checkpoint)
    }

    /// Takes in what a step's requests achieved: the files stored, and
    /// those the server did not want (not acknowledged, so they are offered
    /// again), in the run as read and in the step's `checkpoint`.
    fn acknowledged(&mut self, sent: &Sent, mut checkpoint: Option<&mut RunLedger>) {
        self.history_sent += sent.history_lines;
        self.files_uploaded.extend(sent.uploaded.iter().cloned());
        for name in &sent.refused {
            let warning = format!("the server did not want files/{name} (no upload URL)");
            self.entry.acked.files.remove(name);
            self.entry.warn(warning.clone());
            if let Some(checkpoint) = checkpoint.as_deref_mut() {
                checkpoint.acked.files.remove(name);
                checkpoint.warn(warning);
            }
        }
    }

    /// Sends a step's alerts, each at most once.
    async fn send_alerts(
        &mut self,
        client: &Client,
        server: &ops::ServerRun,
        alerts: &[proto::AlertRecord],
    ) -> Result<(), StepError> {
        let first_alert = self.entry.acked.alerts;
        for (i, alert) in alerts.iter().enumerate() {
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
                server,
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

        Ok(())
    }

    /// Uploads the artifacts whose records this batch read, each from the
    /// progress the ledger has for it (see [`artifact`]). Their progress is
    /// saved onto the last checkpoint, so it holds whatever the cursors are.
    async fn upload_artifacts(
        &mut self,
        client: &Client,
        logged: &[artifact::Logged],
    ) -> Result<(), StepError> {
        if logged.is_empty() {
            return Ok(());
        }
        // The staging files must belong to whoever owns the run.
        let run_dir = self.job.run_dir();
        let owner =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(run_dir).map_err(|e| {
                StepError::Read {
                    path: run_dir.to_path_buf(),
                    source: e.into(),
                }
            })?);
        for one in logged {
            let same = |a: &crate::ledger::ArtifactProgress| {
                a.fragment == one.fragment && a.offset == one.offset
            };
            let at = match self.entry.artifacts.iter().position(same) {
                Some(at) => at,
                None => {
                    self.entry.artifacts.push(one.queued());
                    self.entry.artifacts.len() - 1
                }
            };
            let mut progress = self.entry.artifacts[at].clone();
            let (ledger, checkpoint) = (self.ledger, &mut self.checkpoint);
            let mut save = |p: &crate::ledger::ArtifactProgress, durable: bool| {
                match checkpoint.artifacts.iter_mut().find(|a| same(a)) {
                    Some(stored) => *stored = p.clone(),
                    None => checkpoint.artifacts.push(p.clone()),
                }
                if durable {
                    ledger.save(checkpoint)
                } else {
                    ledger.save_unsynced(checkpoint)
                }
            };
            let result = artifact::upload(client, one, owner, &mut progress, &mut save).await;
            self.entry.artifacts[at] = progress;
            result?;
        }
        Ok(())
    }

    /// Saves `checkpoint`, a state of the run and the cursors it belongs
    /// to, as the last checkpoint.
    fn save_checkpoint(&mut self, checkpoint: RunLedger) -> Result<(), StepError> {
        // Each checkpoint of a live run costs two fsyncs when durable; only
        // settled runs need to survive a power loss (a lost checkpoint
        // re-sends lines to the same offsets: nothing is duplicated).
        if matches!(checkpoint.phase, Phase::Synced | Phase::Finalized) {
            self.ledger.save(&checkpoint)?;
        } else {
            self.ledger.save_unsynced(&checkpoint)?;
        }
        self.checkpoint = checkpoint;
        Ok(())
    }

    /// Records a decision that holds whatever the cursors are (the server's
    /// identity, say) without checkpointing the state read past them.
    fn save_decision(&mut self, decide: impl FnOnce(&mut RunLedger)) -> Result<(), StepError> {
        decide(&mut self.checkpoint);
        self.ledger.save(&self.checkpoint)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
