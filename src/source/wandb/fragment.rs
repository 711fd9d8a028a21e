//! One `.wandb` file read end to end: how many records of which type, where a
//! resumed read would start, how the file ends, what is damaged, and the
//! materialised run state. A run is one or more such fragments (see
//! [`super::run`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::framing::{LogReader, ReadError, Tail};
use super::metadata;
use super::proto::{Record, RecordKind};
use super::record;
use super::views::RunState;

/// Whether the process writing a file is still there. The reader cannot know;
/// the caller decides (from Slurm, a quiescence timeout, or because a later
/// fragment of the same run exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Alive,
    Gone,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// After corruption, skip to the next block and keep reading (like
    /// wandb's Go reader) instead of stopping.
    pub recover: bool,
}

/// The state a `.wandb` file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileClass {
    /// 0 bytes: the writer never flushed its header.
    Empty,
    /// Only the 7-byte header: a run that has just started (or never logged).
    HeaderOnly,
    /// Valid so far, no exit record yet; the writer may still append.
    Growing,
    /// Has an exit record.
    Finished,
    /// No exit record and the writer is gone: the run was cut off (killed,
    /// timed out, node failure). Everything before the cut is readable.
    Truncated,
    /// Bad header, checksum mismatch or impossible chunk before the tail.
    Corrupt,
}

impl FileClass {
    pub fn name(self) -> &'static str {
        match self {
            FileClass::Empty => "empty",
            FileClass::HeaderOnly => "header-only",
            FileClass::Growing => "growing",
            FileClass::Finished => "finished",
            FileClass::Truncated => "truncated",
            FileClass::Corrupt => "corrupt",
        }
    }
}

/// A damaged region and what was readable before it.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptionReport {
    pub offset: u64,
    /// Complete records read before the damage (all of them good).
    pub good_records_before: u64,
    pub reason: String,
    /// Where reading went on with `recover`; `None` when it stopped there.
    pub resumed_at: Option<u64>,
}

/// Facts about one `.wandb` file.
#[derive(Debug)]
pub struct Fragment {
    pub path: PathBuf,
    pub size: u64,
    pub modified: Option<SystemTime>,
    pub records: u64,
    pub kinds: BTreeMap<RecordKind, u64>,
    /// Offset after the last complete record: where an incremental read resumes.
    pub cursor: u64,
    pub tail: Tail,
    pub corruption: Vec<CorruptionReport>,
    /// Records whose framing is intact but whose protobuf does not decode.
    pub malformed_records: u64,
    pub state: RunState,
    pub problems: Vec<String>,
}

impl Fragment {
    pub fn count(&self, kind: RecordKind) -> u64 {
        self.kinds.get(&kind).copied().unwrap_or(0)
    }

    pub fn classify(&self, writer: Writer) -> FileClass {
        if self.size == 0 {
            return FileClass::Empty;
        }
        if !self.corruption.is_empty() {
            return FileClass::Corrupt;
        }
        if self.state.exit.is_some() {
            return FileClass::Finished;
        }
        if self.records == 0 && self.tail.is_clean() {
            return FileClass::HeaderOnly;
        }
        match writer {
            Writer::Alive => FileClass::Growing,
            Writer::Gone => FileClass::Truncated,
        }
    }
}

/// Reads a whole `.wandb` file. I/O errors opening or reading it are
/// returned; everything about its content is in the [`Fragment`].
pub fn read_fragment(path: &Path, options: ReadOptions) -> std::io::Result<Fragment> {
    read_fragment_leaving_out(path, options, |_| Vec::new())
}

/// [`read_fragment`], with `leave_out` applied to each record before it is
/// applied to the state: it removes what an upload would leave out and
/// describes each thing removed (a problem of the fragment). The rule is
/// the sink's (a server's limits); the reader only applies it.
pub fn read_fragment_leaving_out(
    path: &Path,
    options: ReadOptions,
    mut leave_out: impl FnMut(&mut Record) -> Vec<String>,
) -> std::io::Result<Fragment> {
    let file = crate::fs::open_regular(path)?;
    let meta = file.metadata()?;
    let mut fragment = Fragment {
        path: path.to_path_buf(),
        size: meta.len(),
        modified: meta.modified().ok(),
        records: 0,
        kinds: BTreeMap::new(),
        cursor: 0,
        tail: Tail::Clean,
        corruption: Vec::new(),
        malformed_records: 0,
        state: RunState::new(),
        problems: Vec::new(),
    };
    if fragment.size == 0 {
        fragment
            .problems
            .push("file is empty: the writer never flushed the W&B header".into());
        return Ok(fragment);
    }
    let mut reader = match LogReader::open(file, 0) {
        Ok(reader) => reader,
        Err(ReadError::Corrupt(c)) => {
            fragment.corruption.push(CorruptionReport {
                offset: c.offset,
                good_records_before: 0,
                reason: c.kind.to_string(),
                resumed_at: None,
            });
            fragment
                .problems
                .push(format!("not a W&B transaction log: {}", c.kind));
            return Ok(fragment);
        }
        Err(ReadError::Io(e)) => return Err(e),
        Err(e @ ReadError::BadStart(_)) => return Err(std::io::Error::other(e)),
    };
    loop {
        match reader.next_record() {
            Ok(Some(raw)) => {
                fragment.records += 1;
                match record::peek(raw.payload) {
                    Ok(head) => *fragment.kinds.entry(head.kind).or_default() += 1,
                    Err(_) => {
                        fragment.malformed_records += 1;
                        continue;
                    }
                }
                let start = raw.start;
                let decoded = Record::decode_payload(raw.payload);
                reader.release_large_buffer();
                match decoded {
                    Ok(mut rec) => {
                        // What the upload leaves out is left out here too,
                        // and said.
                        for refused in leave_out(&mut rec) {
                            fragment
                                .problems
                                .push(format!("record at byte {start}: {refused}"));
                        }
                        fragment.state.apply(rec);
                    }
                    Err(_) => fragment.malformed_records += 1,
                }
            }
            Ok(None) => break,
            Err(ReadError::Corrupt(c)) => {
                let resumed_at = options.recover.then(|| reader.recover());
                fragment.corruption.push(CorruptionReport {
                    offset: c.offset,
                    good_records_before: fragment.records,
                    reason: c.kind.to_string(),
                    resumed_at,
                });
                if !options.recover {
                    break;
                }
            }
            Err(ReadError::Io(e)) => return Err(e),
            Err(e @ ReadError::BadStart(_)) => return Err(std::io::Error::other(e)),
        }
    }
    fragment.cursor = reader.cursor();
    fragment.tail = reader.tail().unwrap_or(Tail::Clean);
    if let Some(run_dir) = path.parent() {
        metadata::fill_gaps(&mut fragment.state.identity, run_dir);
    }
    describe_problems(&mut fragment);
    Ok(fragment)
}

fn describe_problems(f: &mut Fragment) {
    for c in &f.corruption {
        let then = match c.resumed_at {
            Some(at) => format!("; reading resumed at byte {at}"),
            None => {
                "; records after it were not read (use --recover to skip the damaged block)".into()
            }
        };
        f.problems.push(format!(
            "corrupt at byte {} after {} good records: {}{then}",
            c.offset, c.good_records_before, c.reason
        ));
    }
    match f.tail {
        Tail::Clean => {}
        Tail::Incomplete { at, bytes } => f.problems.push(format!(
            "ends with an incomplete record ({bytes} bytes from byte {at}): still being written, or cut off"
        )),
        Tail::Torn { at, bytes } => f.problems.push(format!(
            "last chunk fails its checksum ({bytes} bytes from byte {at}): a write in flight, or damage"
        )),
    }
    let malformed = f.malformed_records + f.state.malformed_records;
    if malformed > 0 {
        f.problems.push(format!(
            "{malformed} records have valid framing but do not decode as W&B records"
        ));
    }
    if f.state.value_errors > 0 {
        let first = f
            .state
            .first_value_error
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default();
        f.problems.push(format!(
            "{} values are not valid JSON (first: {first})",
            f.state.value_errors
        ));
    }
    if f.records > 0 && f.count(RecordKind::Run) == 0 {
        f.problems
            .push("no run record: the run's id, project and config are unknown".into());
    }
}
