//! Format 1, as syncd has written it since the ledger began. Frozen: these
//! types are the JSON of every format-1 entry on users' disks (the goldens
//! in `tests/fixtures/ledger/v1-*` hold examples), so nothing here changes
//! (no field renamed, added, reordered or retyped). A new format is a new
//! module, and format 1 is migrated to it.
//!
//! Field order is the order written. Fields marked `default` were added
//! within format 1 and are absent from older entries; the two marked
//! `skip_serializing_if` are left out while unused, so that entries without
//! them kept their bytes.
//!
//! How values are spelled: a path as [`crate::paths::serde_path`] writes it
//! (its string when UTF-8, else its bytes in hex); config and summary each
//! as one extended-JSON object text ([`Value::write_object`], which keeps
//! `NaN` and `Infinity`); raw protobuf records in standard base64.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::ledger::{Acked, ErrorNote, FileAck, FragmentProgress, Phase, RunLedger};
use crate::naming::Naming;
use crate::sink::wandb::ops::ServerRun;
use crate::source::wandb::proto::{GitRepoRecord, Timestamp};
use crate::source::wandb::value::{Map, Value};
use crate::source::wandb::views::console::{Console, ConsoleLine, ConsoleParts, CursorParts};
use crate::source::wandb::views::{
    ArtifactInfo, ExitInfo, FileEntry, FileKind, Policy, RunIdentity, RunState,
};

pub(super) const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
    pub format: u32,
    pub key: String,
    pub run_id: String,
    pub base_url: String,
    pub server: Option<Server>,
    pub fragments: Vec<Fragment>,
    pub acked: Acks,
    pub phase: RunPhase,
    pub finalized_reason: Option<String>,
    pub last_error: Option<Error>,
    pub warnings: Vec<String>,
    pub last_upload: Option<String>,
    #[serde(default)]
    pub naming: Option<Names>,
    pub state: State,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Server {
    entity: String,
    project: String,
    name: String,
    storage_id: String,
    history_line_count: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Fragment {
    #[serde(with = "crate::paths::serde_path")]
    path: PathBuf,
    cursor: u64,
    records: u64,
    step_offset: i64,
    exit: Option<Exit>,
    #[serde(default)]
    run_seen: bool,
}

#[derive(Serialize, Deserialize)]
struct Exit {
    code: i32,
    runtime_secs: i32,
    not_complete: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Acks {
    history_lines: u64,
    events_lines: u64,
    console_lines: u64,
    history_base: u64,
    events_base: u64,
    console_base: u64,
    config_sha256: Option<String>,
    params_sha256: Option<String>,
    summary_sha256: Option<String>,
    files: BTreeMap<String, FileAcked>,
    alerts: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    alerts_attempted: u64,
    preempting: bool,
    complete: Option<i32>,
}

#[derive(Serialize, Deserialize)]
struct FileAcked {
    size: u64,
    sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime_ns: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RunPhase {
    Queued,
    Live,
    Synced,
    Finalized,
    Failed,
    Quarantined,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Error {
    at: String,
    message: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Names {
    display_name: Option<String>,
    group: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct State {
    identity: Identity,
    /// Extended JSON.
    config: String,
    summary: String,
    files: IndexMap<String, File>,
    console: ConsoleState,
    history_rows: u64,
    first_step: Option<i64>,
    last_step: Option<i64>,
    events_rows: u64,
    exit: Option<Exit>,
    artifacts: Vec<Artifact>,
    alerts: u64,
    preempting: bool,
    metrics: Vec<String>,
    /// Base64.
    telemetry: String,
    metric_records: Vec<String>,
    environments: IndexMap<String, String>,
    malformed_records: u64,
    value_errors: u64,
    #[serde(default)]
    step_offset: i64,
    #[serde(default)]
    fragment_start: Option<Time>,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    run_id: Option<String>,
    entity: Option<String>,
    project: Option<String>,
    display_name: Option<String>,
    group: Option<String>,
    job_type: Option<String>,
    tags: Vec<String>,
    notes: Option<String>,
    start_time: Option<f64>,
    resumed: bool,
    host: Option<String>,
    program: Option<String>,
    git: Option<Git>,
    slurm: BTreeMap<String, String>,
    producer: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Git {
    remote_url: String,
    commit: String,
}

#[derive(Serialize, Deserialize)]
struct Time {
    seconds: i64,
    nanos: i32,
}

#[derive(Serialize, Deserialize)]
struct File {
    policy: FilePolicy,
    kind: Kind,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FilePolicy {
    Now,
    End,
    Live,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Other,
    Wandb,
    Media,
    Artifact,
}

#[derive(Serialize, Deserialize)]
struct Artifact {
    name: String,
    kind: String,
    entries: u64,
}

#[derive(Serialize, Deserialize)]
struct ConsoleState {
    lines: Vec<Line>,
    first_index: u64,
    next_index: u64,
    stdout: Cursor,
    stderr: Cursor,
    changed: Vec<u64>,
    finished_unsent: Vec<Line>,
    finished_unsent_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    index: u64,
    stream: Stream,
    text: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    rows: Vec<u64>,
    row: u64,
    col: u64,
    pending_escape: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

// ---------------------------------------------------------------------------
// From the in-memory types (saving)

impl From<&RunLedger> for Entry {
    fn from(entry: &RunLedger) -> Entry {
        Entry {
            format: VERSION,
            key: entry.key.clone(),
            run_id: entry.run_id.clone(),
            base_url: entry.base_url.clone(),
            server: entry.server.as_ref().map(|s| Server {
                entity: s.entity.clone(),
                project: s.project.clone(),
                name: s.name.clone(),
                storage_id: s.storage_id.clone(),
                history_line_count: s.history_line_count,
            }),
            fragments: entry
                .fragments
                .iter()
                .map(|f| Fragment {
                    path: f.path.clone(),
                    cursor: f.cursor,
                    records: f.records,
                    step_offset: f.step_offset,
                    exit: f.exit.map(Exit::from),
                    run_seen: f.run_seen,
                })
                .collect(),
            acked: Acks::from(&entry.acked),
            phase: match entry.phase {
                Phase::Queued => RunPhase::Queued,
                Phase::Live => RunPhase::Live,
                Phase::Synced => RunPhase::Synced,
                Phase::Finalized => RunPhase::Finalized,
                Phase::Failed => RunPhase::Failed,
                Phase::Quarantined => RunPhase::Quarantined,
            },
            finalized_reason: entry.finalized_reason.clone(),
            last_error: entry.last_error.as_ref().map(|e| Error {
                at: e.at.clone(),
                message: e.message.clone(),
            }),
            warnings: entry.warnings.clone(),
            last_upload: entry.last_upload.clone(),
            naming: entry.naming.as_ref().map(|n| Names {
                display_name: n.display_name.clone(),
                group: n.group.clone(),
            }),
            state: State::from(&entry.state),
        }
    }
}

impl From<ExitInfo> for Exit {
    fn from(exit: ExitInfo) -> Exit {
        Exit {
            code: exit.code,
            runtime_secs: exit.runtime_secs,
            not_complete: exit.not_complete,
        }
    }
}

impl From<&Acked> for Acks {
    fn from(acked: &Acked) -> Acks {
        Acks {
            history_lines: acked.history_lines,
            events_lines: acked.events_lines,
            console_lines: acked.console_lines,
            history_base: acked.history_base,
            events_base: acked.events_base,
            console_base: acked.console_base,
            config_sha256: acked.config_sha256.clone(),
            params_sha256: acked.params_sha256.clone(),
            summary_sha256: acked.summary_sha256.clone(),
            files: acked
                .files
                .iter()
                .map(|(path, ack)| {
                    let ack = FileAcked {
                        size: ack.size,
                        sha256: ack.sha256.clone(),
                        mtime_ns: ack.mtime_ns,
                    };
                    (path.clone(), ack)
                })
                .collect(),
            alerts: acked.alerts,
            alerts_attempted: acked.alerts_attempted,
            preempting: acked.preempting,
            complete: acked.complete,
        }
    }
}

impl From<&RunState> for State {
    fn from(state: &RunState) -> State {
        let object = |map: &Map| {
            let mut text = String::new();
            Value::write_object(map, &mut text);
            text
        };
        let id = &state.identity;
        State {
            identity: Identity {
                run_id: id.run_id.clone(),
                entity: id.entity.clone(),
                project: id.project.clone(),
                display_name: id.display_name.clone(),
                group: id.group.clone(),
                job_type: id.job_type.clone(),
                tags: id.tags.clone(),
                notes: id.notes.clone(),
                start_time: id.start_time,
                resumed: id.resumed,
                host: id.host.clone(),
                program: id.program.clone(),
                git: id.git.as_ref().map(|g| Git {
                    remote_url: g.remote_url.clone(),
                    commit: g.commit.clone(),
                }),
                slurm: id.slurm.clone(),
                producer: id.producer.clone(),
            },
            config: object(&state.config),
            summary: object(&state.summary),
            files: state
                .files
                .iter()
                .map(|(path, file)| (path.clone(), File::from(file)))
                .collect(),
            console: ConsoleState::from(state.console.parts()),
            history_rows: state.history_rows,
            first_step: state.first_step,
            last_step: state.last_step,
            events_rows: state.events_rows,
            exit: state.exit.map(Exit::from),
            artifacts: state
                .artifacts
                .iter()
                .map(|a| Artifact {
                    name: a.name.clone(),
                    kind: a.kind.clone(),
                    entries: a.entries as u64,
                })
                .collect(),
            alerts: state.alerts,
            preempting: state.preempting,
            metrics: state.metrics.clone(),
            telemetry: BASE64.encode(&state.telemetry),
            metric_records: state
                .metric_records
                .iter()
                .map(|r| BASE64.encode(r))
                .collect(),
            environments: state
                .environments
                .iter()
                .map(|(writer, records)| (writer.clone(), BASE64.encode(records)))
                .collect(),
            malformed_records: state.malformed_records,
            value_errors: state.value_errors,
            step_offset: state.step_offset,
            fragment_start: state.fragment_start.map(|t| Time {
                seconds: t.seconds,
                nanos: t.nanos,
            }),
        }
    }
}

impl From<&FileEntry> for File {
    fn from(file: &FileEntry) -> File {
        File {
            policy: match file.policy {
                Policy::Now => FilePolicy::Now,
                Policy::End => FilePolicy::End,
                Policy::Live => FilePolicy::Live,
            },
            kind: match file.kind {
                FileKind::Other => Kind::Other,
                FileKind::Wandb => Kind::Wandb,
                FileKind::Media => Kind::Media,
                FileKind::Artifact => Kind::Artifact,
            },
        }
    }
}

impl From<ConsoleParts> for ConsoleState {
    fn from(parts: ConsoleParts) -> ConsoleState {
        let cursor = |c: CursorParts| Cursor {
            rows: c.rows,
            row: c.row as u64,
            col: c.col as u64,
            pending_escape: c.pending_escape,
        };
        ConsoleState {
            lines: parts.lines.into_iter().map(Line::from).collect(),
            first_index: parts.first_index,
            next_index: parts.next_index,
            stdout: cursor(parts.stdout),
            stderr: cursor(parts.stderr),
            changed: parts.changed,
            finished_unsent: parts.finished_unsent.into_iter().map(Line::from).collect(),
            finished_unsent_bytes: parts.finished_unsent_bytes as u64,
        }
    }
}

impl From<ConsoleLine> for Line {
    fn from(line: ConsoleLine) -> Line {
        use crate::source::wandb::views::console::Stream as S;
        Line {
            index: line.index,
            stream: match line.stream {
                S::Stdout => Stream::Stdout,
                S::Stderr => Stream::Stderr,
            },
            text: line.text,
        }
    }
}

// ---------------------------------------------------------------------------
// To the in-memory types (loading): what JSON alone does not check (the
// texts inside strings, numbers that must fit) fails as a damaged entry.

impl TryFrom<Entry> for RunLedger {
    type Error = String;

    fn try_from(entry: Entry) -> Result<RunLedger, String> {
        Ok(RunLedger {
            key: entry.key,
            run_id: entry.run_id,
            base_url: entry.base_url,
            server: entry.server.map(|s| ServerRun {
                entity: s.entity,
                project: s.project,
                name: s.name,
                storage_id: s.storage_id,
                history_line_count: s.history_line_count,
            }),
            fragments: entry
                .fragments
                .into_iter()
                .map(|f| FragmentProgress {
                    path: f.path,
                    cursor: f.cursor,
                    records: f.records,
                    step_offset: f.step_offset,
                    exit: f.exit.map(ExitInfo::from),
                    run_seen: f.run_seen,
                })
                .collect(),
            acked: Acked::from(entry.acked),
            phase: match entry.phase {
                RunPhase::Queued => Phase::Queued,
                RunPhase::Live => Phase::Live,
                RunPhase::Synced => Phase::Synced,
                RunPhase::Finalized => Phase::Finalized,
                RunPhase::Failed => Phase::Failed,
                RunPhase::Quarantined => Phase::Quarantined,
            },
            finalized_reason: entry.finalized_reason,
            last_error: entry.last_error.map(|e| ErrorNote {
                at: e.at,
                message: e.message,
            }),
            warnings: entry.warnings,
            last_upload: entry.last_upload,
            naming: entry.naming.map(|n| Naming {
                display_name: n.display_name,
                group: n.group,
            }),
            state: RunState::try_from(entry.state)?,
            // Format 1 was written before artifacts were uploaded.
            artifacts: Vec::new(),
        })
    }
}

impl From<Exit> for ExitInfo {
    fn from(exit: Exit) -> ExitInfo {
        ExitInfo {
            code: exit.code,
            runtime_secs: exit.runtime_secs,
            not_complete: exit.not_complete,
        }
    }
}

impl From<Acks> for Acked {
    fn from(acked: Acks) -> Acked {
        Acked {
            history_lines: acked.history_lines,
            events_lines: acked.events_lines,
            console_lines: acked.console_lines,
            history_base: acked.history_base,
            events_base: acked.events_base,
            console_base: acked.console_base,
            config_sha256: acked.config_sha256,
            params_sha256: acked.params_sha256,
            summary_sha256: acked.summary_sha256,
            files: acked
                .files
                .into_iter()
                .map(|(path, ack)| {
                    let ack = FileAck {
                        size: ack.size,
                        sha256: ack.sha256,
                        mtime_ns: ack.mtime_ns,
                    };
                    (path, ack)
                })
                .collect(),
            alerts: acked.alerts,
            alerts_attempted: acked.alerts_attempted,
            preempting: acked.preempting,
            complete: acked.complete,
        }
    }
}

impl TryFrom<State> for RunState {
    type Error = String;

    fn try_from(state: State) -> Result<RunState, String> {
        let object = |what: &str, text: &str| match Value::parse(text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(format!("state.{what} is not a JSON object")),
            Err(e) => Err(format!("state.{what}: {e}")),
        };
        let bytes = |what: &str, text: &str| {
            BASE64
                .decode(text)
                .map_err(|e| format!("state.{what} is not base64: {e}"))
        };
        let size =
            |what: &str, n: u64| usize::try_from(n).map_err(|_| format!("{what} {n} is too large"));
        let id = state.identity;
        let console = state.console;
        let cursor = |c: Cursor| -> Result<CursorParts, String> {
            Ok(CursorParts {
                rows: c.rows,
                row: size("a console row", c.row)?,
                col: size("a console column", c.col)?,
                pending_escape: c.pending_escape,
            })
        };
        let console = Console::from_parts(ConsoleParts {
            lines: console.lines.into_iter().map(ConsoleLine::from).collect(),
            first_index: console.first_index,
            next_index: console.next_index,
            stdout: cursor(console.stdout)?,
            stderr: cursor(console.stderr)?,
            changed: console.changed,
            finished_unsent: console
                .finished_unsent
                .into_iter()
                .map(ConsoleLine::from)
                .collect(),
            finished_unsent_bytes: size("a byte count", console.finished_unsent_bytes)?,
        })
        .map_err(|e| format!("state.console: {e}"))?;
        Ok(RunState {
            identity: RunIdentity {
                run_id: id.run_id,
                entity: id.entity,
                project: id.project,
                display_name: id.display_name,
                group: id.group,
                job_type: id.job_type,
                tags: id.tags,
                notes: id.notes,
                start_time: id.start_time,
                resumed: id.resumed,
                host: id.host,
                program: id.program,
                git: id.git.map(|g| GitRepoRecord {
                    remote_url: g.remote_url,
                    commit: g.commit,
                }),
                slurm: id.slurm,
                producer: id.producer,
            },
            config: object("config", &state.config)?,
            summary: object("summary", &state.summary)?,
            files: state
                .files
                .into_iter()
                .map(|(path, file)| (path, FileEntry::from(file)))
                .collect(),
            console,
            history_rows: state.history_rows,
            first_step: state.first_step,
            last_step: state.last_step,
            events_rows: state.events_rows,
            exit: state.exit.map(ExitInfo::from),
            artifacts: state
                .artifacts
                .into_iter()
                .map(|a| {
                    Ok(ArtifactInfo {
                        name: a.name,
                        kind: a.kind,
                        entries: size("an artifact's entry count", a.entries)?,
                    })
                })
                .collect::<Result<_, String>>()?,
            alerts: state.alerts,
            preempting: state.preempting,
            metrics: state.metrics,
            telemetry: bytes("telemetry", &state.telemetry)?,
            metric_records: state
                .metric_records
                .iter()
                .map(|r| bytes("metric_records", r))
                .collect::<Result<_, String>>()?,
            environments: state
                .environments
                .into_iter()
                .map(|(writer, records)| Ok((writer, bytes("environments", &records)?)))
                .collect::<Result<_, String>>()?,
            malformed_records: state.malformed_records,
            value_errors: state.value_errors,
            first_value_error: None,
            step_offset: state.step_offset,
            fragment_start: state.fragment_start.map(|t| Timestamp {
                seconds: t.seconds,
                nanos: t.nanos,
            }),
        })
    }
}

impl From<File> for FileEntry {
    fn from(file: File) -> FileEntry {
        FileEntry {
            policy: match file.policy {
                FilePolicy::Now => Policy::Now,
                FilePolicy::End => Policy::End,
                FilePolicy::Live => Policy::Live,
            },
            kind: match file.kind {
                Kind::Other => FileKind::Other,
                Kind::Wandb => FileKind::Wandb,
                Kind::Media => FileKind::Media,
                Kind::Artifact => FileKind::Artifact,
            },
        }
    }
}

impl From<Line> for ConsoleLine {
    fn from(line: Line) -> ConsoleLine {
        use crate::source::wandb::views::console::Stream as S;
        ConsoleLine {
            index: line.index,
            stream: match line.stream {
                Stream::Stdout => S::Stdout,
                Stream::Stderr => S::Stderr,
            },
            text: line.text,
        }
    }
}
