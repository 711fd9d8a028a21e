//! What a run *is*, rebuilt from its records one at a time: identity, config
//! and summary trees, history and system-metrics rows, console lines, files to
//! upload, artifacts, exit. [`RunState::apply`] consumes records in order and
//! returns what each one changed, so an uploader can stream rows out without
//! the state ever holding the run's history.
//!
//! Views hold what a run *is* now, not how far it has been sent: that is the
//! ledger's ([`crate::ledger`]), and what goes on the wire is the sink's.

pub(crate) mod console;
pub(crate) mod rows;
pub(crate) mod tree;

use std::collections::BTreeMap;

use indexmap::IndexMap;
use prost::Message;
use serde::Serialize;

use self::console::{Console, Stream};
use super::proto::{self, Record, RecordType};
use super::value::{Map, ParseError, Value};

/// Who and what the run is, from its `run` and `environment` records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunIdentity {
    pub run_id: Option<String>,
    pub entity: Option<String>,
    pub project: Option<String>,
    pub display_name: Option<String>,
    pub group: Option<String>,
    pub job_type: Option<String>,
    pub tags: Vec<String>,
    pub notes: Option<String>,
    /// Unix seconds.
    pub start_time: Option<f64>,
    /// The run continues an earlier one (`resumed`, or 0.31's `resume` flag).
    pub resumed: bool,
    pub host: Option<String>,
    pub program: Option<String>,
    pub git: Option<proto::GitRepoRecord>,
    /// `SLURM_*` variables the writer captured, without the prefix, lowercased.
    pub slurm: BTreeMap<String, String>,
    /// The writing SDK, from the header record (`0.31.0+…`).
    pub producer: Option<String>,
}

impl RunIdentity {
    pub fn slurm_job_id(&self) -> Option<&str> {
        self.slurm.get("job_id").map(String::as_str)
    }

    fn apply_run(&mut self, run: &proto::RunRecord) {
        set_nonempty(&mut self.run_id, &run.run_id);
        set_nonempty(&mut self.entity, &run.entity);
        set_nonempty(&mut self.project, &run.project);
        set_nonempty(&mut self.display_name, &run.display_name);
        set_nonempty(&mut self.group, &run.run_group);
        set_nonempty(&mut self.job_type, &run.job_type);
        set_nonempty(&mut self.notes, &run.notes);
        set_nonempty(&mut self.host, &run.host);
        if !run.tags.is_empty() || self.run_id.is_none() {
            self.tags = run.tags.clone();
        }
        if self.start_time.is_none() {
            self.start_time = run.start_time.map(|t| t.as_secs_f64());
        }
        self.resumed |= run.resumed || run.resume;
        if let Some(git) = run
            .git
            .as_ref()
            .filter(|g| !g.commit.is_empty() || !g.remote_url.is_empty())
        {
            self.git = Some(git.clone());
        }
    }

    fn apply_environment(&mut self, env: &proto::EnvironmentRecord) {
        set_nonempty(&mut self.program, &env.program);
        set_nonempty(&mut self.host, &env.host);
        if self.git.is_none() {
            self.git = env
                .git
                .clone()
                .filter(|g| !g.commit.is_empty() || !g.remote_url.is_empty());
        }
        self.slurm
            .extend(env.slurm.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

fn set_nonempty(slot: &mut Option<String>, value: &str) {
    if !value.is_empty() {
        *slot = Some(value.to_string());
    }
}

/// Serializes for `inspect --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Upload as soon as seen.
    Now,
    /// Upload when the run ends.
    End,
    /// Upload now and again whenever it changes.
    Live,
}

impl Policy {
    fn from_proto(policy: i32) -> Policy {
        match policy {
            1 => Policy::End,
            2 => Policy::Live,
            _ => Policy::Now,
        }
    }
}

/// wandb's file type. Serializes for `inspect --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Other,
    /// Written by wandb itself (requirements.txt, …).
    Wandb,
    Media,
    Artifact,
}

/// A file the run asked to upload, relative to the run's `files/` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub policy: Policy,
    pub kind: FileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: i32,
    pub runtime_secs: i32,
    /// Written by runs that finished without marking the run complete.
    pub not_complete: bool,
}

/// Serializes for `inspect --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactInfo {
    pub name: String,
    pub kind: String,
    pub entries: usize,
}

/// The effect of one record, for consumers that stream.
#[derive(Debug)]
pub enum Update {
    History {
        row: Map,
        step: Option<i64>,
    },
    Events {
        row: Map,
    },
    Config,
    Summary,
    Console,
    Files,
    Run,
    Environment,
    Exit(ExitInfo),
    Alert(proto::AlertRecord),
    Preempting,
    Artifact(ArtifactInfo),
    Metric,
    Telemetry,
    /// Records with no effect on the uploaded run (header, final, footer, …).
    Nothing,
}

/// Everything materialised so far from a run's records: an uploader
/// checkpoints it (the ledger stores it in its own format) and continues
/// from a cursor without re-reading the run.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    pub identity: RunIdentity,
    pub config: Map,
    pub summary: Map,
    pub files: IndexMap<String, FileEntry>,
    pub console: Console,
    pub history_rows: u64,
    pub first_step: Option<i64>,
    pub last_step: Option<i64>,
    pub events_rows: u64,
    pub exit: Option<ExitInfo>,
    pub artifacts: Vec<ArtifactInfo>,
    pub alerts: u64,
    pub preempting: bool,
    pub metrics: Vec<String>,
    /// All `telemetry` records concatenated: decoding the concatenation gives
    /// their protobuf merge, which is what wandb reports.
    pub telemetry: Vec<u8>,
    /// `metric` records as written, in order.
    pub metric_records: Vec<Vec<u8>>,
    /// `environment` records by writer id, each writer's records concatenated.
    pub environments: IndexMap<String, Vec<u8>>,
    /// Sub-messages that did not decode (their record's framing was intact).
    pub malformed_records: u64,
    /// Values that were not valid extended JSON (kept as strings).
    pub value_errors: u64,
    /// Not checkpointed: a run read on from a checkpoint reports only the
    /// count.
    pub first_value_error: Option<ParseError>,
    /// Added to `_step` in history rows and the summary: a resumed fragment
    /// continues the steps of the ones before it (set by the reader of a
    /// multi-fragment run).
    pub step_offset: i64,
    /// Start of the fragment being read; system-metric rows count their
    /// `_runtime` from it.
    pub fragment_start: Option<proto::Timestamp>,
}

impl RunState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, record: Record) -> Update {
        let Some(kind) = record.record_type else {
            return Update::Nothing;
        };
        let mut errors = Vec::new();
        let update = match kind {
            RecordType::History(history) => {
                let (mut row, mut step) = rows::history_row(&history, &mut errors);
                if self.step_offset != 0
                    && let Some(s) = step.as_mut()
                {
                    *s += self.step_offset;
                    row.insert("_step".into(), Value::from_i64(*s));
                }
                self.history_rows += 1;
                if let Some(step) = step {
                    self.first_step.get_or_insert(step);
                    self.last_step = Some(self.last_step.map_or(step, |s| s.max(step)));
                }
                Update::History { row, step }
            }
            RecordType::Stats(stats) => {
                self.events_rows += 1;
                let row = rows::events_row(&stats, self.fragment_start, &mut errors);
                Update::Events { row }
            }
            RecordType::Summary(summary) => {
                errors = tree::apply(
                    &mut self.summary,
                    &summary.update,
                    &summary.remove,
                    tree::Objects::Replace,
                );
                let sets_step = summary
                    .update
                    .iter()
                    .any(|u| tree::item_path(&u.key, &u.nested_key) == ["_step"]);
                if self.step_offset != 0
                    && sets_step
                    && let Some(step) = self.summary.get("_step").and_then(Value::as_i64)
                {
                    self.summary
                        .insert("_step".into(), Value::from_i64(step + self.step_offset));
                }
                Update::Summary
            }
            RecordType::Config(config) => {
                errors = tree::apply(
                    &mut self.config,
                    &config.update,
                    &config.remove,
                    tree::Objects::Merge,
                );
                Update::Config
            }
            RecordType::Run(run) => {
                self.identity.apply_run(&run);
                if run.start_time.is_some() {
                    self.fragment_start = run.start_time;
                }
                if let Some(config) = &run.config {
                    errors.extend(tree::apply(
                        &mut self.config,
                        &config.update,
                        &config.remove,
                        tree::Objects::Merge,
                    ));
                }
                if let Some(summary) = &run.summary {
                    errors.extend(tree::apply(
                        &mut self.summary,
                        &summary.update,
                        &summary.remove,
                        tree::Objects::Replace,
                    ));
                }
                Update::Run
            }
            RecordType::Environment(raw) => {
                match proto::EnvironmentRecord::decode(raw.as_slice()) {
                    Ok(env) => {
                        self.identity.apply_environment(&env);
                        // Records of one writer merge (protobuf concatenation
                        // is a merge); each writer is reported separately.
                        self.environments
                            .entry(env.writer_id)
                            .or_default()
                            .extend_from_slice(&raw);
                    }
                    Err(_) => self.malformed_records += 1,
                }
                Update::Environment
            }
            RecordType::Header(header) => {
                if let Some(info) = header.version_info {
                    set_nonempty(&mut self.identity.producer, &info.producer);
                }
                Update::Nothing
            }
            RecordType::OutputRaw(out) => {
                let stream = if out.output_type == 0 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                self.console.write(stream, &out.line);
                Update::Console
            }
            // Legacy `output` records duplicate what `output_raw` carries; the
            // official sync ignores them too.
            RecordType::Output(_) => Update::Nothing,
            RecordType::OutputLogger(out) => {
                self.console.write(Stream::Stdout, &out.line);
                Update::Console
            }
            RecordType::Files(files) => {
                for item in files.files {
                    let kind = match item.kind {
                        1 => FileKind::Wandb,
                        2 => FileKind::Media,
                        3 => FileKind::Artifact,
                        _ => FileKind::Other,
                    };
                    self.files.insert(
                        item.path,
                        FileEntry {
                            policy: Policy::from_proto(item.policy),
                            kind,
                        },
                    );
                }
                Update::Files
            }
            RecordType::Exit(exit) => {
                let info = ExitInfo {
                    code: exit.exit_code,
                    runtime_secs: exit.runtime,
                    not_complete: exit.not_complete,
                };
                self.exit = Some(info);
                Update::Exit(info)
            }
            RecordType::Alert(alert) => {
                self.alerts += 1;
                Update::Alert(alert)
            }
            RecordType::Preempting(_) => {
                self.preempting = true;
                Update::Preempting
            }
            RecordType::Artifact(artifact) => {
                let info = ArtifactInfo {
                    name: artifact.name,
                    kind: artifact.kind,
                    entries: artifact.manifest.map_or(0, |m| m.contents.len()),
                };
                self.artifacts.push(info.clone());
                Update::Artifact(info)
            }
            RecordType::Metric(raw) => {
                match proto::MetricRecord::decode(raw.as_slice()) {
                    Ok(metric) => {
                        let name = if metric.name.is_empty() {
                            metric.glob_name
                        } else {
                            metric.name
                        };
                        if !self.metrics.contains(&name) {
                            self.metrics.push(name);
                        }
                    }
                    Err(_) => self.malformed_records += 1,
                }
                self.metric_records.push(raw);
                Update::Metric
            }
            RecordType::Telemetry(raw) => {
                self.telemetry.extend_from_slice(&raw);
                Update::Telemetry
            }
            RecordType::Tbrecord(_)
            | RecordType::Final(_)
            | RecordType::Footer(_)
            | RecordType::NoopLinkArtifact(_)
            | RecordType::UseArtifact(_)
            | RecordType::Request(_) => Update::Nothing,
        };
        if !errors.is_empty() {
            self.value_errors += errors.len() as u64;
            if self.first_value_error.is_none() {
                self.first_value_error = errors.into_iter().next();
            }
        }
        update
    }
}
