//! A W&B-protocol test server (the contract is §6.3 of the protocol research):
//! `POST /graphql`, `POST /files/{e}/{p}/{r}/file_stream`, `PUT /storage/...`,
//! the artifact protocol (`PUT /artifacts/...`, see [`artifacts`]) and
//! `GET /_state`, with per-endpoint fault injection.
//!
//! It runs on its own tokio runtime inside the test process, binds an
//! ephemeral port on 127.0.0.1 only, and stops when the [`WandbServer`] is
//! dropped. State is kept the way wandb's own backend spy keeps it: FileStream
//! lines are stored by offset (`file[offset + i] = line`). Lines re-sent at
//! the same offset overwrite (and still count in `history_lines_received`);
//! lines re-sent at a new offset show up as extra lines, as on the real server.
//!
//! ```ignore
//! let server = WandbServer::start();
//! server.inject(Endpoint::FileStream, Fault::Status { code: 429, retry_after: Some(1) }, 2);
//! // ... run a client with WANDB_BASE_URL=server.base_url(), WANDB_API_KEY=server.api_key()
//! let run = server.run("fxfinish").unwrap();
//! assert_eq!(run["complete"], true);
//! ```

mod artifacts;
mod graphql;
#[cfg(test)]
mod selftest;
mod state;

pub use artifacts::sha256_hex;
pub use state::parse_lenient;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use state::{Kind, State};

/// Accepted by the official client's key check (`[\w-]+`, at least 40 characters).
pub const DEFAULT_API_KEY: &str = "syncdtest0123456789abcdef0123456789abcdef";

/// Where a fault applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Every `POST /graphql`.
    Graphql,
    /// `POST /graphql` of one operation, e.g. `"UpsertBucket"`.
    Operation(String),
    /// `POST /files/.../file_stream`.
    FileStream,
    /// `POST /files/.../file_stream` carrying lines of this file, e.g.
    /// `"wandb-history.jsonl"`.
    FileStreamWith(String),
    /// `PUT /storage/...` (the upload URLs handed out by `CreateRunFiles`).
    Storage,
    /// `PUT /artifacts/...`: every artifact file, part and manifest upload.
    ArtifactStorage,
    /// `PUT /artifacts/...` of one artifact file (its path in the artifact,
    /// also for its multipart parts) or, as `"wandb_manifest.json"`, of a
    /// manifest.
    ArtifactFile(String),
}

/// What happens to a request a fault rule matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status (body `{"errors":[...]}`), not processed.
    Status { code: u16, retry_after: Option<u64> },
    /// Close the connection without an answer; the request is not processed.
    Drop,
    /// Process the request, then close the connection without an answer
    /// (the client cannot know its data arrived: it will resend).
    DropAfterProcessing,
    /// Wait this long, then process and answer normally.
    Delay(Duration),
    /// Answer 200 with `{"data":null,"errors":[{"message":...}]}`, not processed.
    GraphqlError(String),
    /// Never answer and never process (until the client gives up or the
    /// server stops): a server that hangs mid-protocol.
    Hang,
}

/// `RateLimit-Remaining` / `RateLimit-Reset` values added to every answer.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub remaining: u64,
    pub reset: u64,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub api_key: String,
    /// Used when `UpsertBucket` names no entity.
    pub default_entity: String,
    /// `"Name:Value"` strings returned as `uploadHeaders`; PUTs must carry them.
    pub upload_headers: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api_key: DEFAULT_API_KEY.into(),
            default_entity: "default-entity".into(),
            upload_headers: Vec::new(),
        }
    }
}

pub struct WandbServer {
    runtime: Option<tokio::runtime::Runtime>,
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    api_key: String,
}

impl WandbServer {
    pub fn start() -> Self {
        Self::with_options(Options::default())
    }

    pub fn with_options(options: Options) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wandb-test-server")
            .enable_all()
            .build()
            .expect("start the test server's runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .expect("bind the test server to 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let mut state = State::new(
            options.api_key.clone(),
            options.default_entity,
            options.upload_headers,
        );
        state.port = addr.port();
        let state = Arc::new(Mutex::new(state));
        runtime.spawn(accept_loop(listener, state.clone()));
        WandbServer {
            runtime: Some(runtime),
            state,
            addr,
            api_key: options.api_key,
        }
    }

    /// `http://127.0.0.1:PORT`, for `WANDB_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The next `n` requests matching `endpoint` get `fault`. Rules are tried
    /// in the order they were added; the first armed match is used.
    pub fn inject(&self, endpoint: Endpoint, fault: Fault, n: usize) {
        self.inject_after(endpoint, fault, 0, n);
    }

    /// Like [`inject`](Self::inject), but the first `skip` matching requests
    /// pass untouched (e.g. hit only the final FileStream request of a sync).
    pub fn inject_after(&self, endpoint: Endpoint, fault: Fault, skip: usize, n: usize) {
        self.lock().faults.push(state::FaultRule {
            endpoint,
            fault,
            skip,
            remaining: n,
        });
    }

    /// Disarms every fault rule.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn set_rate_limit(&self, rate_limit: Option<RateLimit>) {
        self.lock().rate_limit = rate_limit;
    }

    pub fn set_upload_headers(&self, headers: Vec<String>) {
        self.lock().upload_headers = headers;
    }

    /// A query appended to every artifact upload URL handed out, as a
    /// presigned URL carries its signature.
    pub fn set_artifact_url_query(&self, query: &str) {
        self.lock().artifact_url_query = query.to_string();
    }

    /// Answer FileStream requests with `"stopped": true`.
    pub fn set_stopped(&self, stopped: bool) {
        self.lock().stopped = stopped;
    }

    /// Upload URLs handed out name this port of 127.0.0.1 instead of the
    /// server's own: that of a proxy in front of it, so uploads go through
    /// the proxy too. (The sync bench's delaying proxy.)
    #[allow(dead_code)]
    pub fn set_upload_port(&self, port: u16) {
        self.lock().port = port;
    }

    /// The same JSON as `GET /_state`: `{"runs":[...], "artifacts":[...],
    /// "operations":[...], "requests":[...], "counters":{...}}` (artifacts as
    /// in [`artifacts`](Self::artifacts)).
    ///
    /// Each run has `entity`, `project`, `name`, `id`, `upserts`, `config`
    /// (parsed), the `UpsertBucket` parameters under their GraphQL names
    /// (`tags`, `notes`, `displayName`, `groupName`, `jobType`, `host`,
    /// `program`, `commit`, `repo`, `description`, `state`, `sweep`,
    /// `summaryMetrics`), `summary` (last `wandb-summary.json` line, parsed),
    /// `history` (parsed leniently: `NaN`/`Infinity` become strings; `null` for
    /// gaps or unparsable lines) and `history_raw`, `events`, `output` (raw
    /// lines), `stream_files` (line counts), `uploaded` (FileStream names),
    /// `storage` (`{path: {size, sha256}}` of PUTs), `complete`, `exitcode`,
    /// `preempting`, `alerts`, `history_lines_received` (all history lines
    /// received, overwrites included), `gaps`, `file_stream_requests`,
    /// `heartbeats`.
    pub fn snapshot(&self) -> Value {
        let observed = self.lock().observe();
        observed.snapshot()
    }

    /// The snapshot of the (first) run named `name`, in any entity or project.
    pub fn run(&self, name: &str) -> Option<Value> {
        let found = {
            let state = self.lock();
            let (key, run) = state.runs.iter().find(|((_, _, n), _)| n == name)?;
            (key.clone(), run.clone())
        };
        Some(state::run_snapshot(&found.0, &found.1))
    }

    /// GraphQL operation names in arrival order (faulted and refused ones too).
    pub fn operation_names(&self) -> Vec<String> {
        self.lock()
            .operations
            .iter()
            .map(|o| o["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Every artifact version, in creation order, as in the snapshot's
    /// `artifacts`: `id`, `entity`, `project`, `name` (collection), `type`,
    /// `version` (`"v0"`…, `null` while pending), `digest`, `aliases`
    /// (sorted; `latest` on the newest committed version), `state`
    /// (`PENDING`/`COMMITTED`), `description`, `metadata` (parsed),
    /// `created_by` (run name), `used_by` (run names), `creates` (CreateArtifact
    /// calls that returned it), `commits`, `manifest` (the uploaded manifest,
    /// parsed), `entries` (its contents by path, with `birthArtifact` as
    /// `name:version`), `files` (by path: `md5`, `birthArtifactID`,
    /// `upload_requested`, `stored_here`, `puts`, `multipart`, `size` and
    /// `sha256` of the bytes the server holds for it), `manifest_puts`.
    pub fn artifacts(&self) -> Vec<Value> {
        let observed = self.lock().observe();
        observed.snapshot()["artifacts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The bytes the server holds for `path` of artifact version `id`
    /// (uploaded with it, or with the version it was deduplicated against).
    pub fn artifact_file(&self, id: &str, path: &str) -> Option<Vec<u8>> {
        self.lock()
            .artifact_file_bytes(id, path)
            .map(<[u8]>::to_vec)
    }

    /// The bytes PUT for `path` (relative to the run's files dir) of run `name`.
    pub fn stored_file(&self, name: &str, path: &str) -> Option<Vec<u8>> {
        let state = self.lock();
        state
            .runs
            .iter()
            .find(|((_, _, n), _)| n == name)
            .and_then(|(_, run)| run.storage.get(path).cloned())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for WandbServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

type Answer = Response<Full<Bytes>>;

enum Route {
    Graphql,
    FileStream(state::RunKey),
    Storage(state::RunKey, String),
    ArtifactStorage(String, Vec<String>),
    State,
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["graphql"]) => Route::Graphql,
        (&Method::POST, ["files", e, p, r, "file_stream"]) => {
            Route::FileStream((percent_decode(e), percent_decode(p), percent_decode(r)))
        }
        (&Method::PUT, ["storage", e, p, r, file @ ..]) if !file.is_empty() => {
            let file: Vec<String> = file.iter().map(|s| percent_decode(s)).collect();
            Route::Storage(
                (percent_decode(e), percent_decode(p), percent_decode(r)),
                file.join("/"),
            )
        }
        (&Method::PUT, ["artifacts", id, rest @ ..]) if !rest.is_empty() => Route::ArtifactStorage(
            percent_decode(id),
            rest.iter().map(|s| percent_decode(s)).collect(),
        ),
        (&Method::GET, ["_state"]) => Route::State,
        _ => Route::NotFound,
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Answer, Dropped> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|_| Dropped)?
        .to_bytes();
    let wire_bytes = body.len() as u64;
    let route = route(&method, &path);
    if matches!(route, Route::State) {
        // The observer: neither counted nor logged.
        let observed = lock(&state).observe();
        return Ok(json_answer(200, &observed.snapshot()));
    }
    let kind = match route {
        Route::Graphql => Kind::Graphql,
        Route::FileStream(_) => Kind::FileStream,
        Route::Storage(..) => Kind::Storage,
        Route::ArtifactStorage(..) => Kind::ArtifactStorage,
        Route::State | Route::NotFound => Kind::Other,
    };

    // Decode what has to be decoded before a fault can be matched.
    let body = if is_gzip(&headers) {
        gunzip(&body)
    } else {
        Ok(body.to_vec())
    };
    let json_body: Option<Result<Value, String>> = match kind {
        Kind::Graphql | Kind::FileStream => Some(
            body.as_ref()
                .map_err(Clone::clone)
                .and_then(|b| serde_json::from_slice(b).map_err(|e| e.to_string())),
        ),
        _ => None,
    };
    let op = match (&kind, &json_body) {
        (Kind::Graphql, Some(Ok(v))) => Some(graphql::operation_name(v)),
        _ => None,
    };
    // FileStream: the files a request carries; artifact uploads: the file.
    let stream_files: Vec<String> = match (&kind, &json_body, &route) {
        (Kind::FileStream, Some(Ok(v)), _) => v
            .get("files")
            .and_then(Value::as_object)
            .map(|files| files.keys().cloned().collect())
            .unwrap_or_default(),
        (_, _, Route::ArtifactStorage(_, rest)) => match rest.as_slice() {
            [m] if m == "manifest" => vec!["wandb_manifest.json".to_string()],
            [kind, name @ ..] if kind == "files" => vec![name.join("/")],
            [kind, _, name @ ..] if kind == "parts" => vec![name.join("/")],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };

    let fault = {
        let mut s = lock(&state);
        s.counters.requests += 1;
        s.counters.bytes_received += wire_bytes;
        match kind {
            Kind::Graphql => s.counters.graphql += 1,
            Kind::FileStream => s.counters.file_stream += 1,
            Kind::Storage => s.counters.storage_puts += 1,
            Kind::ArtifactStorage => s.counters.artifact_puts += 1,
            Kind::Other => {}
        }
        s.take_fault(kind, op.as_deref(), &stream_files)
    };
    let variables = || -> Value {
        match &json_body {
            Some(Ok(v)) => v.get("variables").cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        }
    };
    let log = |status: u16, fault: &Option<Fault>| {
        let mut s = lock(&state);
        let fault_label = fault.as_ref().map(Fault::label);
        if let Some(op) = &op {
            s.operations.push(json!({"name": op, "variables": variables(), "status": status, "fault": fault_label}));
        }
        s.requests.push(json!({"method": method.as_str(), "path": path, "op": op, "status": status, "fault": fault_label, "bytes": wire_bytes}));
    };

    match &fault {
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        Some(Fault::Hang) => {
            log(0, &fault);
            // Dropped with the runtime when the server stops.
            std::future::pending::<()>().await;
        }
        Some(Fault::Drop) => {
            log(0, &fault);
            return Err(Dropped);
        }
        Some(Fault::Status { code, retry_after }) => {
            log(*code, &fault);
            let mut answer = error_answer(*code, &format!("injected status {code}"));
            if let Some(secs) = retry_after {
                answer.headers_mut().insert(
                    "retry-after",
                    secs.to_string().parse().expect("header value"),
                );
            }
            return Ok(with_rate_limit(&state, answer));
        }
        Some(Fault::GraphqlError(message)) => {
            log(200, &fault);
            let answer = json_answer(
                200,
                &json!({"data": null, "errors": [{"message": message}]}),
            );
            return Ok(with_rate_limit(&state, answer));
        }
        Some(Fault::DropAfterProcessing) | None => {}
    }

    let answer = {
        let mut s = lock(&state);
        let authorized = authorized(&headers, &s.api_key);
        match (&route, kind) {
            (_, Kind::Graphql | Kind::FileStream) if !authorized => {
                s.counters.unauthorized += 1;
                error_answer(
                    401,
                    "invalid or missing API key (expected Basic base64(\"api:<key>\"))",
                )
            }
            (_, Kind::Graphql | Kind::FileStream) if !matches!(json_body, Some(Ok(_))) => {
                s.counters.bad_requests += 1;
                let why = match &json_body {
                    Some(Err(e)) => e.clone(),
                    _ => "no body".into(),
                };
                error_answer(400, &format!("body is not JSON: {why}"))
            }
            (Route::Graphql, _) => {
                let vars = variables();
                let query = match &json_body {
                    Some(Ok(v)) => v.get("query").and_then(Value::as_str).unwrap_or_default(),
                    _ => "",
                };
                json_answer(
                    200,
                    &graphql::respond(&mut s, op.as_deref().unwrap_or_default(), query, &vars),
                )
            }
            (Route::FileStream(key), _) => {
                let Some(Ok(body)) = &json_body else {
                    unreachable!("checked above")
                };
                match s.file_stream(key.clone(), body) {
                    Ok(answer) => json_answer(200, &answer),
                    Err(e) => {
                        s.counters.bad_requests += 1;
                        error_answer(400, &e)
                    }
                }
            }
            (Route::Storage(key, file), _) => {
                if headers.contains_key(hyper::header::AUTHORIZATION) {
                    s.counters.storage_auth_violations += 1;
                }
                let missing = s
                    .upload_headers
                    .iter()
                    .any(|h| !has_upload_header(&headers, h));
                if missing {
                    s.counters.missing_upload_headers += 1;
                }
                match body {
                    Ok(bytes) => {
                        s.run_entry(key.clone())
                            .0
                            .storage
                            .insert(file.clone(), bytes);
                        json_answer(200, &json!({}))
                    }
                    Err(e) => error_answer(400, &e),
                }
            }
            (Route::ArtifactStorage(id, rest), _) => {
                if headers.contains_key(hyper::header::AUTHORIZATION) {
                    s.counters.storage_auth_violations += 1;
                }
                // Multipart parts carry only their own headers (wandb-core
                // sends Content-MD5, Content-Length and Content-Type).
                let is_part = rest.first().is_some_and(|k| k == "parts");
                let missing = !is_part
                    && s.upload_headers
                        .iter()
                        .any(|h| !has_upload_header(&headers, h));
                if missing {
                    s.counters.missing_upload_headers += 1;
                }
                let content_md5 = headers
                    .get("content-md5")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match body
                    .map_err(|e| (400, e))
                    .and_then(|bytes| s.artifact_put(id, rest, content_md5.as_deref(), bytes))
                {
                    Ok(etag) => {
                        let mut answer = json_answer(200, &json!({}));
                        answer
                            .headers_mut()
                            .insert("etag", etag.parse().expect("header value"));
                        answer
                    }
                    Err((code, message)) => error_answer(code, &message),
                }
            }
            _ => error_answer(404, &format!("no route for {method} {path}")),
        }
    };
    let status = answer.status().as_u16();
    if matches!(fault, Some(Fault::DropAfterProcessing)) {
        log(0, &fault);
        return Err(Dropped);
    }
    log(status, &fault);
    Ok(with_rate_limit(&state, answer))
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("api:{key}"))
    );
    headers
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

/// `"Name:Value"` (as in `uploadHeaders`) is present on the request.
fn has_upload_header(headers: &HeaderMap, spec: &str) -> bool {
    let (name, value) = spec.split_once(':').unwrap_or((spec, ""));
    headers
        .get_all(name.trim())
        .iter()
        .any(|v| v.as_bytes() == value.trim().as_bytes())
}

fn is_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(body.len() * 4);
    flate2::read::MultiGzDecoder::new(body)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad gzip body: {e}"))?;
    Ok(out)
}

fn json_answer(status: u16, body: &Value) -> Answer {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("JSON serializes"),
        )))
        .expect("valid response")
}

fn error_answer(status: u16, message: &str) -> Answer {
    json_answer(status, &json!({"errors": [{"message": message}]}))
}

fn with_rate_limit(state: &Mutex<State>, mut answer: Answer) -> Answer {
    if let Some(limit) = lock(state).rate_limit {
        let headers = answer.headers_mut();
        headers.insert("ratelimit-remaining", limit.remaining.into());
        headers.insert("ratelimit-reset", limit.reset.into());
    }
    answer
}

/// Percent-encodes everything but unreserved characters and `/`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        let decoded = match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => Some((h * 16 + l) as u8),
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
