//! Cutting what a step produced into FileStream requests: every request
//! stays under [`filestream::MAX_REQUEST_BYTES`] counting JSON escapes,
//! lines keep their fixed offsets, and console lines go as consecutive
//! ranges (one range of `output.log` per request).

use crate::sink::wandb::client::{Client, SinkError};
use crate::sink::wandb::filestream::{self, Lines, Request};
use crate::sink::wandb::ops::ServerRun;

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
