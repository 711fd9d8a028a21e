//! What the server remembers: runs keyed by (entity, project, name), FileStream
//! lines stored by offset, uploaded bytes, the operation and request logs, and
//! the snapshot built from them. Everything lives in memory behind one mutex;
//! nothing on the request path parses line contents or touches the disk.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::artifacts::{Artifact, artifact_snapshot};
use super::{Endpoint, Fault, RateLimit};

pub const HISTORY: &str = "wandb-history.jsonl";
pub const EVENTS: &str = "wandb-events.jsonl";
pub const SUMMARY: &str = "wandb-summary.json";
pub const OUTPUT: &str = "output.log";

/// The short `UpsertBucket` parameters kept as sent (GraphQL variable names).
/// `summaryMetrics` is a JSON string and is stored parsed.
pub const PARAMS: &[&str] = &[
    "tags",
    "notes",
    "displayName",
    "groupName",
    "jobType",
    "host",
    "program",
    "commit",
    "repo",
    "description",
    "state",
    "sweep",
];

pub type RunKey = (String, String, String);

#[derive(Clone, Default)]
pub struct Run {
    pub id: String,
    pub config_raw: Option<String>,
    pub params: Map<String, Value>,
    pub summary_metrics: Option<Value>,
    pub upserts: u64,
    /// FileStream files: line `i` of the server-side file, `None` for a gap.
    pub files: BTreeMap<String, Vec<Option<String>>>,
    /// Names listed in FileStream `uploaded`, first-seen order.
    pub uploaded: Vec<String>,
    /// Bodies of `PUT /storage/...`, by path relative to the run's files dir.
    pub storage: BTreeMap<String, Vec<u8>>,
    pub complete: Option<bool>,
    pub exitcode: Option<Value>,
    pub preempting: bool,
    pub alerts: Vec<Value>,
    pub history_lines_received: u64,
    pub gaps: u64,
    pub file_stream_requests: u64,
    pub heartbeats: u64,
}

impl Run {
    pub fn lines(&self, file: &str) -> usize {
        self.files.get(file).map_or(0, Vec::len)
    }

    /// The last stored line of `file`, skipping gaps.
    pub fn last_line(&self, file: &str) -> Option<&str> {
        self.files
            .get(file)?
            .iter()
            .rev()
            .find_map(|l| l.as_deref())
    }
}

#[derive(Clone, Default)]
pub struct Counters {
    pub requests: u64,
    /// Request body bytes as they came over the wire (before gunzip).
    pub bytes_received: u64,
    pub graphql: u64,
    pub file_stream: u64,
    pub storage_puts: u64,
    /// `PUT /artifacts/...` (files, parts, manifests), refused ones too.
    pub artifact_puts: u64,
    pub heartbeats: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub not_implemented: u64,
    pub faults_injected: u64,
    pub history_lines_received: u64,
    pub gaps: u64,
    pub storage_auth_violations: u64,
    pub missing_upload_headers: u64,
    /// Artifact PUTs refused because the body's md5 was not the one given.
    pub artifact_md5_mismatches: u64,
    /// Artifact PUTs that carried no `Content-MD5` header.
    pub artifact_puts_without_md5: u64,
}

pub struct FaultRule {
    pub endpoint: Endpoint,
    pub fault: Fault,
    /// Matching requests still to let through before the fault applies.
    pub skip: usize,
    pub remaining: usize,
}

pub struct State {
    pub api_key: String,
    pub default_entity: String,
    pub upload_headers: Vec<String>,
    pub port: u16,
    pub stopped: bool,
    pub rate_limit: Option<RateLimit>,
    pub faults: Vec<FaultRule>,
    pub runs: BTreeMap<RunKey, Run>,
    /// Artifact versions in creation order (id `artifact-<n>`).
    pub artifacts: Vec<Artifact>,
    /// GraphQL operations in arrival order: `{name, variables, status, fault}`.
    pub operations: Vec<Value>,
    /// Every request: `{method, path, op, status, fault}`; status 0 = dropped.
    pub requests: Vec<Value>,
    pub counters: Counters,
    next_id: u64,
}

impl State {
    pub fn new(api_key: String, default_entity: String, upload_headers: Vec<String>) -> Self {
        State {
            api_key,
            default_entity,
            upload_headers,
            port: 0,
            stopped: false,
            rate_limit: None,
            faults: Vec::new(),
            runs: BTreeMap::new(),
            artifacts: Vec::new(),
            operations: Vec::new(),
            requests: Vec::new(),
            counters: Counters::default(),
            next_id: 0,
        }
    }

    /// Takes one use of the first armed fault rule that matches this request.
    pub fn take_fault(&mut self, kind: Kind, op: Option<&str>, files: &[String]) -> Option<Fault> {
        let rule = self
            .faults
            .iter_mut()
            .find(|r| r.remaining > 0 && r.endpoint.matches(kind, op, files))?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.remaining -= 1;
        self.counters.faults_injected += 1;
        Some(rule.fault.clone())
    }

    /// The run for a key, created empty if it does not exist; `true` if created.
    pub fn run_entry(&mut self, key: RunKey) -> (&mut Run, bool) {
        let created = !self.runs.contains_key(&key);
        if created {
            self.next_id += 1;
            let id = format!("run-{}", self.next_id);
            self.runs.insert(
                key.clone(),
                Run {
                    id,
                    ..Run::default()
                },
            );
        }
        (self.runs.get_mut(&key).expect("just inserted"), created)
    }

    pub fn entity_or_default(&self, entity: Option<&str>) -> String {
        entity
            .filter(|e| !e.is_empty())
            .unwrap_or(&self.default_entity)
            .to_string()
    }

    /// `POST /files/{e}/{p}/{r}/file_stream`: lines stored by offset (overwrite).
    pub fn file_stream(&mut self, key: RunKey, body: &Value) -> Result<Value, String> {
        let obj = body
            .as_object()
            .ok_or("file_stream body is not a JSON object")?;
        let stopped = self.stopped;
        let (run, _) = self.run_entry(key);
        run.file_stream_requests += 1;
        let heartbeat = obj.is_empty();
        if heartbeat {
            run.heartbeats += 1;
        }
        let mut received = 0u64;
        let mut gaps = 0u64;
        if let Some(files) = obj.get("files") {
            let files = files.as_object().ok_or("`files` is not an object")?;
            for (name, chunk) in files {
                let offset = chunk.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
                let content = match chunk.get("content") {
                    Some(Value::Array(c)) => c.as_slice(),
                    None | Some(Value::Null) => &[],
                    Some(_) => return Err(format!("`files.{name}.content` is not an array")),
                };
                let lines = run.files.entry(name.clone()).or_default();
                if offset > lines.len() {
                    gaps += (offset - lines.len()) as u64;
                    lines.resize(offset, None);
                }
                for (i, line) in content.iter().enumerate() {
                    let text = match line {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    match lines.get_mut(offset + i) {
                        Some(slot) => *slot = Some(text),
                        None => lines.push(Some(text)),
                    }
                }
                if name == HISTORY {
                    received += content.len() as u64;
                }
            }
        }
        if let Some(uploaded) = obj.get("uploaded").and_then(Value::as_array) {
            for name in uploaded.iter().filter_map(Value::as_str) {
                if !run.uploaded.iter().any(|u| u == name) {
                    run.uploaded.push(name.to_string());
                }
            }
        }
        if obj.get("preempting").and_then(Value::as_bool) == Some(true) {
            run.preempting = true;
        }
        if let Some(complete) = obj.get("complete").and_then(Value::as_bool) {
            run.complete = Some(complete);
        }
        if let Some(code) = obj.get("exitcode") {
            run.exitcode = Some(code.clone());
        }
        run.history_lines_received += received;
        run.gaps += gaps;
        self.counters.history_lines_received += received;
        self.counters.gaps += gaps;
        if heartbeat {
            self.counters.heartbeats += 1;
        }
        Ok(if stopped {
            json!({"exitcode": null, "limits": {}, "stopped": true})
        } else {
            json!({"exitcode": null, "limits": {}})
        })
    }

    /// A copy of what the snapshot is built from, so the (slow) building
    /// happens outside the lock and never holds up requests.
    pub fn observe(&self) -> Observed {
        Observed {
            runs: self.runs.clone(),
            artifacts: self.artifacts.clone(),
            operations: self.operations.clone(),
            requests: self.requests.clone(),
            counters: self.counters.clone(),
        }
    }
}

pub struct Observed {
    runs: BTreeMap<RunKey, Run>,
    artifacts: Vec<Artifact>,
    operations: Vec<Value>,
    requests: Vec<Value>,
    counters: Counters,
}

impl Observed {
    pub fn snapshot(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|(key, run)| run_snapshot(key, run))
            .collect();
        let artifacts: Vec<Value> = self
            .artifacts
            .iter()
            .map(|a| artifact_snapshot(&self.artifacts, a))
            .collect();
        let c = &self.counters;
        json!({
            "runs": runs,
            "artifacts": artifacts,
            "operations": self.operations,
            "requests": self.requests,
            "counters": {
                "requests": c.requests,
                "bytes_received": c.bytes_received,
                "graphql": c.graphql,
                "file_stream": c.file_stream,
                "storage_puts": c.storage_puts,
                "artifact_puts": c.artifact_puts,
                "heartbeats": c.heartbeats,
                "unauthorized": c.unauthorized,
                "bad_requests": c.bad_requests,
                "not_implemented": c.not_implemented,
                "faults_injected": c.faults_injected,
                "history_lines_received": c.history_lines_received,
                "gaps": c.gaps,
                "storage_auth_violations": c.storage_auth_violations,
                "missing_upload_headers": c.missing_upload_headers,
                "artifact_md5_mismatches": c.artifact_md5_mismatches,
                "artifact_puts_without_md5": c.artifact_puts_without_md5,
            },
        })
    }
}

/// One run's part of the snapshot.
pub fn run_snapshot((entity, project, name): &RunKey, run: &Run) -> Value {
    let raw = |file: &str| -> Vec<Value> {
        run.files
            .get(file)
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        l.as_deref()
                            .map_or(Value::Null, |s| Value::String(s.into()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let history: Vec<Value> = run
        .files
        .get(HISTORY)
        .map(|lines| {
            lines
                .iter()
                .map(|l| l.as_deref().and_then(parse_lenient).unwrap_or(Value::Null))
                .collect()
        })
        .unwrap_or_default();
    let storage: Map<String, Value> = run
        .storage
        .iter()
        .map(|(path, bytes)| {
            let sha: String = Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (path.clone(), json!({"size": bytes.len(), "sha256": sha}))
        })
        .collect();
    let stream_files: Map<String, Value> = run
        .files
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.len())))
        .collect();
    let config = run.config_raw.as_deref().map_or(Value::Null, |c| {
        parse_lenient(c).unwrap_or_else(|| c.into())
    });
    let mut out = json!({
        "entity": entity,
        "project": project,
        "name": name,
        "id": run.id,
        "upserts": run.upserts,
        "config": config,
        "summaryMetrics": run.summary_metrics,
        "summary": run.last_line(SUMMARY).and_then(parse_lenient),
        "history": history,
        "history_raw": raw(HISTORY),
        "events": raw(EVENTS),
        "output": raw(OUTPUT),
        "stream_files": stream_files,
        "uploaded": run.uploaded,
        "storage": storage,
        "complete": run.complete,
        "exitcode": run.exitcode,
        "preempting": run.preempting,
        "alerts": run.alerts,
        "history_lines_received": run.history_lines_received,
        "gaps": run.gaps,
        "file_stream_requests": run.file_stream_requests,
        "heartbeats": run.heartbeats,
    });
    for param in PARAMS {
        out[*param] = run.params.get(*param).cloned().unwrap_or(Value::Null);
    }
    // A W&B run's tags are a list, empty until some are set; an upsert
    // with `tags: null` leaves them as they are (and the resume query
    // answers the same list).
    if out["tags"].is_null() {
        out["tags"] = json!([]);
    }
    out
}

/// Parses W&B "extended JSON": bare `NaN`, `Infinity` and `-Infinity` outside
/// strings become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub fn parse_lenient(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(text) {
        return Some(v);
    }
    serde_json::from_slice(&quote_non_finite(text)).ok()
}

fn quote_non_finite(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len() + 16);
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            out.push(c);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        let token = ["NaN", "Infinity", "-Infinity"]
            .into_iter()
            .find(|t| b[i..].starts_with(t.as_bytes()));
        match (c, token) {
            (b'"', _) => {
                in_string = true;
                out.push(c);
                i += 1;
            }
            (_, Some(t)) => {
                out.push(b'"');
                out.extend_from_slice(t.as_bytes());
                out.push(b'"');
                i += t.len();
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Which kind of endpoint a request went to (for fault matching and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Graphql,
    FileStream,
    Storage,
    /// `PUT /artifacts/...`: artifact files, parts and manifests.
    ArtifactStorage,
    Other,
}

impl Endpoint {
    fn matches(&self, kind: Kind, op: Option<&str>, files: &[String]) -> bool {
        match self {
            Endpoint::Graphql => kind == Kind::Graphql,
            Endpoint::Operation(name) => kind == Kind::Graphql && op == Some(name.as_str()),
            Endpoint::FileStream => kind == Kind::FileStream,
            Endpoint::FileStreamWith(file) => kind == Kind::FileStream && files.contains(file),
            Endpoint::Storage => kind == Kind::Storage,
            Endpoint::ArtifactStorage => kind == Kind::ArtifactStorage,
            Endpoint::ArtifactFile(name) => kind == Kind::ArtifactStorage && files.contains(name),
        }
    }
}

impl Fault {
    /// A short label for the logs.
    pub fn label(&self) -> String {
        match self {
            Fault::Status {
                code,
                retry_after: Some(s),
            } => format!("status {code}, Retry-After {s}"),
            Fault::Status {
                code,
                retry_after: None,
            } => format!("status {code}"),
            Fault::Drop => "drop".into(),
            Fault::DropAfterProcessing => "drop after processing".into(),
            Fault::Delay(d) => format!("delay {}", fmt_duration(*d)),
            Fault::GraphqlError(m) => format!("graphql error: {m}"),
            Fault::Hang => "hang".into(),
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_parser_quotes_bare_non_finite_tokens_only_outside_strings() {
        let v =
            parse_lenient(r#"{"a":NaN,"b":[Infinity,-Infinity],"c":"NaN \"Infinity\"","d":1e300}"#)
                .unwrap();
        assert_eq!(v["a"], "NaN");
        assert_eq!(v["b"], json!(["Infinity", "-Infinity"]));
        assert_eq!(v["c"], "NaN \"Infinity\"");
        assert_eq!(v["d"], json!(1e300));
        assert!(parse_lenient("{nope").is_none());
    }
}
