//! Cutting what a step produced into FileStream requests, and sending a
//! step's requests. Every request stays under
//! [`filestream::MAX_REQUEST_BYTES`] counting JSON escapes, lines keep
//! their fixed offsets, and console lines go as consecutive ranges (one
//! range of `output.log` per request).
//!
//! A step's requests go out on a task of their own ([`StepTask`]) so that
//! the run reads and encodes its next batch meanwhile. Inside a step, the
//! file uploads (`CreateRunFiles`, then the PUTs, several at a time) go
//! alongside the FileStream requests, which go one after the other, in
//! order; the closing request (the `uploaded` list, the exit code) goes
//! last, once both are done: the server is told of a file only once it is
//! stored, and of the end only once everything else arrived.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tracing::Instrument as _;

use crate::sink::retry::{current_observer, observe_retries};
use crate::sink::wandb::client::{Client, Reserved, SinkError};
use crate::sink::wandb::filestream::{self, Lines, Request};
use crate::sink::wandb::ops::{self, ServerRun};

use super::files::SpooledLog;
use super::output_log;

/// PUTs of one step in flight at once: a run that saved many files sends
/// them without waiting a round trip for each, and without opening a
/// connection per file.
const PARALLEL_PUTS: usize = 8;

/// One step's requests, encoded, ready to go.
pub(super) struct Step {
    pub server: ServerRun,
    /// Files to store, by name (their acknowledgements are the caller's).
    pub files: BTreeMap<String, Vec<u8>>,
    /// `output.log` rebuilt in its spool, stored as `output.log` (its
    /// acknowledgement is the caller's too); the spool is removed once
    /// stored.
    pub output_log: Option<SpooledLog>,
    /// FileStream bodies, sent in this order.
    pub bodies: Vec<filestream::Encoded>,
    /// History lines the bodies carry.
    pub history_lines: u64,
    /// Sent after everything else, with the names of the files stored; not
    /// sent when it is still empty then.
    pub closing: Request,
}

/// What a step's requests achieved.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// Files stored, by name in order.
    pub uploaded: Vec<String>,
    /// Files the server handed no upload URL for (not stored).
    pub refused: Vec<String>,
    pub history_lines: u64,
}

impl Step {
    async fn send(self, client: Client) -> Result<Sent, SinkError> {
        let Step {
            server,
            files,
            output_log,
            bodies,
            history_lines,
            mut closing,
        } = self;
        let stream = async {
            for body in bodies {
                client
                    .file_stream(&server.entity, &server.project, &server.name, body)
                    .await?;
            }
            Ok(())
        };
        let (mut sent, ()) =
            tokio::try_join!(put_files(&client, &server, files, output_log), stream)?;
        closing.uploaded = sent.uploaded.clone();
        if !closing.is_empty() {
            send_to_stream(&client, &server, &closing).await?;
        }
        sent.history_lines = history_lines;
        Ok(sent)
    }
}

/// Asks for upload URLs for `files` (and `output.log`, from its spool),
/// then PUTs them, [`PARALLEL_PUTS`] at a time. The first failure ends the
/// step (the PUTs still under way are dropped).
async fn put_files(
    client: &Client,
    server: &ServerRun,
    mut files: BTreeMap<String, Vec<u8>>,
    output_log: Option<SpooledLog>,
) -> Result<Sent, SinkError> {
    let mut sent = Sent::default();
    if files.is_empty() && output_log.is_none() {
        return Ok(sent);
    }
    let mut names: Vec<String> = files.keys().cloned().collect();
    if output_log.is_some() {
        names.push(filestream::OUTPUT.into());
        names.sort();
    }
    let targets = ops::create_run_files(client, server, &names).await?;
    let headers = Arc::new(targets.headers);
    let mut output_log = output_log.map(Arc::new);
    let mut puts = tokio::task::JoinSet::new();
    for (name, url) in targets.files {
        let body = if name == filestream::OUTPUT
            && let Some(spool) = &output_log
        {
            PutBody::Spool(Arc::clone(spool))
        } else {
            match files.remove(&name) {
                Some(bytes) => PutBody::Bytes(bytes),
                None => continue,
            }
        };
        let Some(url) = url else {
            sent.refused.push(name);
            continue;
        };
        while puts.len() >= PARALLEL_PUTS {
            sent.uploaded.push(joined(puts.join_next().await)?);
        }
        let (client, headers) = (client.clone(), Arc::clone(&headers));
        puts.spawn(with_context(async move {
            let what = format!("upload of {name}");
            match body {
                PutBody::Bytes(bytes) => client.put(&what, &url, &headers, bytes).await,
                // Streamed from the spool, a piece at a time, on every
                // attempt: the log is never held whole.
                PutBody::Spool(spool) => {
                    client
                        .put_body(&what, &url, &headers, || {
                            reqwest::Body::wrap(output_log::FileBody::open(
                                &spool.path,
                                spool.ack.size,
                            ))
                        })
                        .await
                }
            }
            .map(|()| name)
        }));
    }
    while let Some(put) = puts.join_next().await {
        sent.uploaded.push(joined(Some(put))?);
    }
    // Stored (or not wanted): the spool has served; a failure above leaves
    // it to be made again by the next finish.
    if let Some(spool) = output_log.take() {
        let _ = std::fs::remove_file(&spool.path);
    }
    sent.uploaded.sort();
    Ok(sent)
}

/// What a PUT sends: bytes read already, or the `output.log` spool.
enum PutBody {
    Bytes(Vec<u8>),
    Spool(Arc<SpooledLog>),
}

/// A PUT task's result; a panic in it is the caller's panic.
fn joined(
    put: Option<Result<Result<String, SinkError>, tokio::task::JoinError>>,
) -> Result<String, SinkError> {
    match put.expect("a PUT is in flight") {
        Ok(result) => result,
        Err(e) => Err(task_ended(e)),
    }
}

fn task_ended(e: tokio::task::JoinError) -> SinkError {
    match e.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        // Only a runtime shutting down cancels these tasks.
        Err(e) => SinkError::Protocol {
            what: "upload".into(),
            message: format!("cancelled: {e}"),
        },
    }
}

/// `future` as a task of its own runs it: with the retry observer and the
/// span of the run's upload (a task inherits neither).
fn with_context<F>(future: F) -> impl Future<Output = F::Output> + Send + 'static
where
    F: Future + Send + 'static,
{
    let observer = current_observer();
    async move {
        match observer {
            Some(observer) => observe_retries(observer, future).await,
            None => future.await,
        }
    }
    .instrument(tracing::Span::current())
}

/// A step's requests under way on their own task. Dropped unfinished (the
/// upload failed or was given up), it stops them: nothing of a run is sent
/// once its upload ended, so a later upload of the run never races an
/// older one's requests.
pub(super) struct StepTask(tokio::task::JoinHandle<Result<Sent, SinkError>>);

impl StepTask {
    /// Starts `step`; `reserved`, its share of the send window, is given
    /// back once its requests are done.
    pub(super) fn spawn(client: &Client, step: Step, reserved: Option<Reserved>) -> StepTask {
        let client = client.clone();
        StepTask(tokio::spawn(with_context(async move {
            let sent = step.send(client).await;
            drop(reserved);
            sent
        })))
    }

    /// Waits for every request of the step.
    pub(super) async fn wait(mut self) -> Result<Sent, SinkError> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(e) => Err(task_ended(e)),
        }
    }
}

impl Drop for StepTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one flush sends over FileStream, taken request by request.
pub(super) struct Outbox<I: Iterator<Item = (u64, String)>> {
    /// Files uploaded in this step, for the stream's `uploaded` list.
    pub uploaded: Vec<String>,
    pub preempting: bool,
    /// The whole summary, when it changed (never over the line limit).
    pub summary: Option<String>,
    pub history: Lines,
    pub events: Lines,
    /// Console lines, formatted as they are taken, with their index in
    /// `output.log`.
    pub console: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = (u64, String)>> Outbox<I> {
    /// The next request: the `uploaded` list and `preempting` first, then
    /// the summary, history, events and console, as much of each as fits
    /// (anything that does not fit goes alone in a request of its own);
    /// `None` once everything went.
    pub(super) fn next_request(&mut self) -> Option<Request> {
        let mut request = Request {
            uploaded: std::mem::take(&mut self.uploaded),
            preempting: std::mem::take(&mut self.preempting),
            ..Default::default()
        };
        let mut room = filestream::MAX_REQUEST_BYTES.saturating_sub(request.bytes());
        if let Some(size) = self.summary.as_deref().map(filestream::json_string_len)
            && (size <= room || request.is_empty())
        {
            request.summary = self.summary.take();
            room = room.saturating_sub(size);
        }
        let empty = request.is_empty();
        take_lines(&mut self.history, &mut request.history, &mut room, empty);
        let empty = request.is_empty();
        take_lines(&mut self.events, &mut request.events, &mut room, empty);
        let empty = request.is_empty();
        request.output = take_console(&mut self.console, &mut room, empty);
        (!request.is_empty()).then_some(request)
    }
}

/// Moves as many lines from `source` into `slot` as fit in `room` bytes
/// (one that does not fit only into an `empty` request: a line is never over
/// [`filestream::MAX_LINE_BYTES`], so a request never is over the cap).
pub(super) fn take_lines(
    source: &mut Lines,
    slot: &mut Option<Lines>,
    room: &mut usize,
    empty: bool,
) {
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
pub(super) fn take_console(
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
pub(super) async fn send_to_stream(
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
