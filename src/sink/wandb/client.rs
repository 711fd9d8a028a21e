//! HTTP to a W&B server: GraphQL, FileStream and upload PUTs, each retried by
//! [`RetryPolicy`]. A `429 Retry-After` pauses every request of this client
//! (all workers share it), not only the one that got it; the wait honoured
//! is capped ([`RetryPolicy::honoured_retry_after`]) and shown by
//! [`Client::pause`]. GraphQL errors that may pass are retried like a 5xx.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use serde_json::{Value as Json, json};

use crate::sink::retry::{
    FIRST_CONTACT_ATTEMPTS, RetryNotice, RetryPolicy, graphql_error_is_transient, notify_retry,
    parse_retry_after, status_is_retryable,
};
use crate::sink::wandb::filestream::Encoded;

/// Why a request did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SinkError {
    /// The server answered with a status that retrying cannot change.
    #[error("{what}: the server refused with HTTP {status}: {message}")]
    Rejected {
        what: String,
        status: u16,
        message: String,
    },
    /// Retryable failures until the attempts ran out.
    #[error("{what}: gave up after {attempts} attempts; last error: {last}")]
    Exhausted {
        what: String,
        attempts: u32,
        last: String,
        offline: bool,
    },
    /// A GraphQL answer carrying errors instead of data.
    #[error("{what}: the server answered with an error: {message}")]
    GraphQl { what: String, message: String },
    /// A 2xx answer that does not say what it should.
    #[error("{what}: unexpected answer from the server: {message}")]
    Protocol { what: String, message: String },
    /// A request sent at most once may have reached the server, but its
    /// answer was lost or was an error the server may have hit after acting
    /// on it: it is not repeated.
    #[error("{what}: may or may not have reached the server, not repeated: {last}")]
    Unconfirmed { what: String, last: String },
}

impl SinkError {
    /// The API key was refused: nothing will work until it is fixed.
    pub(crate) fn is_auth(&self) -> bool {
        matches!(
            self,
            SinkError::Rejected {
                status: 401 | 403,
                ..
            }
        )
    }

    /// The server could not be reached at all (as opposed to answering with errors).
    pub(crate) fn is_offline(&self) -> bool {
        matches!(self, SinkError::Exhausted { offline: true, .. })
    }
}

/// What a client last heard from its server: the daemon's status says
/// "online" only when the newest attempt got an answer, and "offline since"
/// from the first attempt of a run of failures (a refused connection, or a
/// request that got no answer within its timeout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Contact {
    /// The last time the server answered at all (any HTTP status).
    pub last_answer: Option<SystemTime>,
    /// Set by the first attempt that could not reach the server after its
    /// last answer; cleared by the next answer.
    pub unreachable_since: Option<SystemTime>,
    /// Why the newest attempt could not reach it.
    pub last_error: Option<String>,
}

/// How often a request may reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Retried until it succeeds: its effect is idempotent.
    AtLeastOnce,
    /// Retried only when it certainly did not arrive (no connection, or a
    /// 429 refusal); any other failure is [`SinkError::Unconfirmed`].
    AtMostOnce,
}

/// Requests to a server are held back by a `429 Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pause {
    /// Wall-clock end of the wait.
    pub until: SystemTime,
    /// What the server asked for.
    pub asked: Duration,
    /// What is waited: `asked`, capped.
    pub honoured: Duration,
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "paused until {} because of HTTP 429 Retry-After {} s",
            humantime::format_rfc3339_seconds(self.until),
            self.asked.as_secs()
        )?;
        if self.honoured < self.asked {
            write!(f, " (capped to {} s)", self.honoured.as_secs())?;
        }
        Ok(())
    }
}

/// What a 2xx answer's body says.
enum BodyVerdict {
    Done,
    /// An error that may pass when asked again.
    Retry(String),
    Refused(SinkError),
}

type PauseNotice = Box<dyn Fn(&Pause) + Send + Sync>;

/// Bytes of lines read for a server and not yet acknowledged by it, over
/// all the runs uploaded to it at once: what bounds the memory the lines
/// and their request bodies take, however many runs are in flight. One run
/// alone gets a whole batch being read and one being sent.
pub(crate) const SEND_WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// A share of a server's send window ([`Client::try_reserve`]); given back
/// when dropped.
pub(crate) type Reserved = tokio::sync::OwnedSemaphorePermit;

/// Where to send and with which key. The key is only ever put in the
/// `Authorization` header (marked sensitive); it is not kept elsewhere.
///
/// A clone is the same client (connections, 429 pause, contact record,
/// pause notice): a run's upload hands clones to the tasks that send its
/// requests while it reads on.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base_url: String,
    auth: HeaderValue,
    policy: RetryPolicy,
    /// No request leaves before this instant (set by 429 Retry-After), and
    /// why, for [`Client::pause`].
    paused_until: Arc<Mutex<Option<(Instant, Pause)>>>,
    /// Told of every new pause (`syncd sync` prints it); without one, a
    /// pause is logged.
    pause_notice: Arc<OnceLock<PauseNotice>>,
    /// A std mutex: held for a copy, never across an await. Shared with
    /// the client's [`Client::with_attempts`] copies.
    contact: Arc<std::sync::Mutex<Contact>>,
    /// [`SEND_WINDOW_BYTES`], in bytes.
    window: Arc<tokio::sync::Semaphore>,
}

impl Client {
    pub(crate) fn new(
        base_url: &str,
        api_key: &str,
        policy: RetryPolicy,
    ) -> Result<Client, SinkError> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("api:{api_key}"));
        let mut auth =
            HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| SinkError::Protocol {
                what: "API key".into(),
                message: "contains characters that cannot go in an HTTP header".into(),
            })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(concat!("syncd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SinkError::Protocol {
                what: "HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            auth,
            policy,
            paused_until: Arc::new(Mutex::new(None)),
            contact: Arc::new(std::sync::Mutex::new(Contact::default())),
            pause_notice: Arc::new(OnceLock::new()),
            window: Arc::new(tokio::sync::Semaphore::new(SEND_WINDOW_BYTES)),
        })
    }

    /// The `429 Retry-After` wait requests to this server are in, if any.
    pub(crate) fn pause(&self) -> Option<Pause> {
        let paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        paused
            .as_ref()
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, pause)| pause.clone())
    }

    /// Calls `notice` whenever a `429 Retry-After` starts a new wait (the
    /// first call wins; clients are shared by runs).
    pub(crate) fn on_pause(&self, notice: impl Fn(&Pause) + Send + Sync + 'static) {
        let _ = self.pause_notice.set(Box::new(notice));
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The same client (connections, 429 pause, contact record) making at
    /// most `attempts` attempts per request: a probe asks once.
    pub(crate) fn with_attempts(&self, attempts: u32) -> Client {
        Client {
            http: self.http.clone(),
            base_url: self.base_url.clone(),
            auth: self.auth.clone(),
            policy: RetryPolicy {
                max_attempts: attempts.max(1),
                ..self.policy
            },
            paused_until: Arc::clone(&self.paused_until),
            // A probe's pauses are its own client's to report.
            pause_notice: Arc::new(OnceLock::new()),
            contact: Arc::clone(&self.contact),
            window: Arc::clone(&self.window),
        }
    }

    /// `bytes` of the send window (at most all of it), if free now.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Reserved> {
        Arc::clone(&self.window)
            .try_acquire_many_owned(window_permits(bytes))
            .ok()
    }

    /// `bytes` of the send window (at most all of it), once other uploads
    /// gave that much back. Shares are handed out in the order asked for.
    pub(crate) async fn reserve(&self, bytes: usize) -> Reserved {
        Arc::clone(&self.window)
            .acquire_many_owned(window_permits(bytes))
            .await
            .expect("the send window is never closed")
    }

    /// What this client last heard from its server.
    pub(crate) fn contact(&self) -> Contact {
        self.contact_guard().clone()
    }

    fn contact_guard(&self) -> std::sync::MutexGuard<'_, Contact> {
        self.contact
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_answer(&self) {
        let mut contact = self.contact_guard();
        contact.last_answer = Some(SystemTime::now());
        contact.unreachable_since = None;
        contact.last_error = None;
    }

    fn record_unreachable(&self, error: &str) {
        let mut contact = self.contact_guard();
        contact
            .unreachable_since
            .get_or_insert_with(SystemTime::now);
        contact.last_error = Some(error.to_string());
    }

    /// Runs one GraphQL operation and returns its `data`.
    pub(crate) async fn graphql(
        &self,
        operation: &str,
        query: &str,
        variables: Json,
    ) -> Result<Json, SinkError> {
        self.graphql_delivered(operation, query, variables, Delivery::AtLeastOnce)
            .await
    }

    /// [`Client::graphql`] for an operation with `delivery`.
    pub(crate) async fn graphql_delivered(
        &self,
        operation: &str,
        query: &str,
        variables: Json,
        delivery: Delivery,
    ) -> Result<Json, SinkError> {
        let body = serde_json::to_vec(
            &json!({"query": query, "variables": variables, "operationName": operation}),
        )
        .map(Bytes::from)
        .expect("JSON of JSON values");
        let url = format!("{}/graphql", self.base_url);
        let bytes = self
            .send_checked(
                operation,
                delivery,
                self.policy.timeout,
                || {
                    self.http
                        .post(&url)
                        .header(AUTHORIZATION, self.auth.clone())
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone())
                },
                |body| graphql_verdict(operation, body),
            )
            .await?
            .0;
        let answer: Json = serde_json::from_slice(&bytes).map_err(|e| SinkError::Protocol {
            what: operation.into(),
            message: format!("not JSON ({e})"),
        })?;
        match answer.get("data") {
            Some(data) if !data.is_null() => Ok(data.clone()),
            _ => Err(SinkError::Protocol {
                what: operation.into(),
                message: "no data in the answer".into(),
            }),
        }
    }

    /// Posts one FileStream request body for a run.
    pub(crate) async fn file_stream(
        &self,
        entity: &str,
        project: &str,
        run: &str,
        body: Encoded,
    ) -> Result<Json, SinkError> {
        let url = format!(
            "{}/files/{}/{}/{}/file_stream",
            self.base_url,
            path_segment(entity),
            path_segment(project),
            path_segment(run)
        );
        let bytes = self
            .send("file_stream", || {
                self.http
                    .post(&url)
                    .header(AUTHORIZATION, self.auth.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(reqwest::Body::wrap(Pieces::of(&body)))
            })
            .await?;
        // Only `{"stopped": true}` means anything; an unreadable body is ignored.
        Ok(serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::debug!(server = %self.base_url, %error, "the FileStream answer is not JSON; ignored");
            Json::Null
        }))
    }

    /// PUTs a file to an upload URL from `CreateRunFiles`, with the headers it
    /// returned and without our credentials (the URL is often a storage
    /// bucket's, not the W&B server's).
    pub(crate) async fn put(
        &self,
        what: &str,
        url: &str,
        headers: &[String],
        body: Vec<u8>,
    ) -> Result<(), SinkError> {
        // Cloned once per attempt: `Bytes` makes that a reference count.
        let body = Bytes::from(body);
        self.put_body(what, url, headers, || body.clone().into())
            .await
    }

    /// [`Client::put`] of a body made anew for each attempt by `body` (a
    /// file streamed from disk, so that it is never held whole).
    pub(crate) async fn put_body(
        &self,
        what: &str,
        url: &str,
        headers: &[String],
        body: impl Fn() -> reqwest::Body,
    ) -> Result<(), SinkError> {
        let mut map = HeaderMap::new();
        for header in headers {
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                map.insert(name, value);
            }
        }
        self.send(what, || {
            self.http.put(url).headers(map.clone()).body(body())
        })
        .await?;
        Ok(())
    }

    /// PUTs `len` bytes made anew for each attempt by `body` (a file
    /// streamed from disk, say) to a storage URL (presigned: its query is
    /// its credential), with `headers` and without our credentials; gives
    /// the answer's `ETag` (a multipart upload's part names itself by it).
    ///
    /// The storage is not the W&B server: what it answers, or not, says
    /// nothing of the server's reachability or of the API key, so it is not
    /// recorded as contact, and a refusal is a [`StorageError`] of this
    /// upload only. An attempt fails when the storage accepts no bytes of
    /// the body for the usual timeout; a whole attempt may take the usual
    /// timeout plus a second per MiB (a file of gigabytes is not cut off
    /// by a timeout made for requests of kilobytes).
    pub(crate) async fn put_streamed(
        &self,
        what: &str,
        url: &str,
        headers: HeaderMap,
        len: u64,
        body: impl Fn() -> reqwest::Body,
    ) -> Result<Option<String>, StorageError> {
        let total = self.policy.timeout + Duration::from_secs(len >> 20);
        let shown = without_query(url);
        let mut last = String::new();
        for attempt in 0..self.policy.max_attempts {
            let watch = Arc::new(BodyWatch::new());
            let request = self
                .http
                .put(url)
                .headers(headers.clone())
                .body(reqwest::Body::wrap(WatchedBody {
                    inner: body(),
                    watch: watch.clone(),
                    left: len,
                }))
                .timeout(total)
                .send();
            tokio::pin!(request);
            let sent = loop {
                tokio::select! {
                    sent = &mut request => break Some(sent),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if watch.stalled_for() >= self.policy.timeout {
                            break None;
                        }
                    }
                }
            };
            match sent {
                None => {
                    last = format!(
                        "the storage accepted no bytes for {} s ({shown})",
                        self.policy.timeout.as_secs()
                    );
                }
                Some(Err(e)) => {
                    if let Some(error) = watch.read_error() {
                        return Err(StorageError::Read(format!("{what}: {error}")));
                    }
                    // Names the URL, without its query.
                    last = describe_transport_error(&e);
                }
                Some(Ok(response)) => {
                    let code = response.status().as_u16();
                    let etag = response
                        .headers()
                        .get(reqwest::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if (200..300).contains(&code) {
                        return Ok(etag);
                    }
                    let body = response.bytes().await.unwrap_or_default();
                    let message = storage_message(&body);
                    let said = format!("{what}: the storage refused with HTTP {code}: {message}");
                    let expired = message.to_ascii_lowercase().contains("expired");
                    if matches!(code, 401 | 403) || (code == 400 && expired) {
                        return Err(StorageError::UrlRefused(said));
                    }
                    if !status_is_retryable(code) {
                        return Err(StorageError::Refused(said));
                    }
                    last = format!("HTTP {code}: {message}");
                }
            }
            if attempt + 1 < self.policy.max_attempts {
                let wait = self.policy.backoff(attempt);
                tracing::debug!(request = what, attempt, error = %last, wait_ms = wait.as_millis() as u64, "retrying");
                notify_retry(&RetryNotice {
                    what: what.into(),
                    error: last.clone(),
                    attempt: attempt + 1,
                    attempts: self.policy.max_attempts,
                    wait,
                });
                tokio::time::sleep(wait).await;
            }
        }
        Err(StorageError::Failed(format!(
            "{what}: gave up after {} attempts; last error: {last}",
            self.policy.max_attempts
        )))
    }

    async fn wait_for_pause(&self) {
        let until = self
            .paused_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(until, _)| *until);
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Holds every request back for `asked` (capped); returns the wait.
    fn pause_all(&self, asked: Duration) -> Duration {
        let honoured = self.policy.honoured_retry_after(asked);
        let until = Instant::now() + honoured;
        let pause = Pause {
            until: SystemTime::now() + honoured,
            asked,
            honoured,
        };
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.as_ref().is_none_or(|(p, _)| *p < until) {
            *paused = Some((until, pause.clone()));
            drop(paused);
            match self.pause_notice.get() {
                Some(notice) => notice(&pause),
                // Every upload to this server waits: worth a warning.
                None => tracing::warn!(
                    server = %self.base_url,
                    asked_s = asked.as_secs(),
                    honoured_s = honoured.as_secs(),
                    "{pause}"
                ),
            }
        }
        honoured
    }

    /// Sends with retries; returns the body of the 2xx answer.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Bytes, SinkError> {
        self.send_checked(
            what,
            Delivery::AtLeastOnce,
            self.policy.timeout,
            build,
            |_| BodyVerdict::Done,
        )
        .await
        .map(|(body, _)| body)
    }

    /// [`Client::send`] with the 2xx body judged by `check` (a GraphQL
    /// error in a 200 may pass), retries as `delivery` allows and each
    /// attempt given `timeout`; gives the 2xx answer's body and headers.
    async fn send_checked(
        &self,
        what: &str,
        delivery: Delivery,
        timeout: Duration,
        build: impl Fn() -> reqwest::RequestBuilder,
        check: impl Fn(&[u8]) -> BodyVerdict,
    ) -> Result<(Bytes, HeaderMap), SinkError> {
        let unconfirmed = |last: String| SinkError::Unconfirmed {
            what: what.into(),
            last,
        };
        let at_most_once = delivery == Delivery::AtMostOnce;
        let mut last = String::new();
        // The HTTP status of the last failed attempt; `None` when no answer came.
        let mut status: Option<u16>;
        let mut offline = true;
        let mut attempts = self.policy.max_attempts;
        let mut attempt = 0;
        while attempt < attempts {
            if attempt > 0 {
                self.wait_for_pause().await;
            }
            let wait = match build().timeout(timeout).send().await {
                Err(e) => {
                    offline = e.is_connect() || e.is_timeout() || e.is_request();
                    last = describe_transport_error(&e);
                    status = None;
                    if offline {
                        self.record_unreachable(&last);
                    }
                    // Only a connection never made certainly sent nothing.
                    if at_most_once && !e.is_connect() {
                        return Err(unconfirmed(last));
                    }
                    // A server never reached gets a short schedule: it is
                    // far more often a wrong URL or no network than a blip.
                    if e.is_connect() && self.contact_guard().last_answer.is_none() {
                        attempts = attempts.min(FIRST_CONTACT_ATTEMPTS);
                    }
                    self.policy.backoff(attempt)
                }
                Ok(response) => {
                    self.record_answer();
                    // Reachable after all: the full policy from here on.
                    attempts = self.policy.max_attempts;
                    let code = response.status().as_u16();
                    status = Some(code);
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    let headers = response.headers().clone();
                    // A body cut off counts as empty; what that means is
                    // the caller's (an empty GraphQL answer is an error, an
                    // empty FileStream answer is ignored).
                    let body = response.bytes().await.unwrap_or_else(|error| {
                        tracing::debug!(server = %self.base_url, request = what, status = code, %error, "the answer's body was cut off");
                        Bytes::new()
                    });
                    offline = false;
                    if (200..300).contains(&code) {
                        match check(&body) {
                            BodyVerdict::Done => return Ok((body, headers)),
                            BodyVerdict::Refused(e) => return Err(e),
                            BodyVerdict::Retry(message) if at_most_once => {
                                return Err(unconfirmed(message));
                            }
                            BodyVerdict::Retry(message) => {
                                last = message;
                                self.policy.backoff(attempt)
                            }
                        }
                    } else {
                        let message = server_message(&body);
                        if !status_is_retryable(code) {
                            return Err(SinkError::Rejected {
                                what: what.into(),
                                status: code,
                                message,
                            });
                        }
                        last = format!("HTTP {code}: {message}");
                        // A 429 refused the request before acting on it; a
                        // 5xx may come after the server acted.
                        if at_most_once && code != 429 {
                            return Err(unconfirmed(last));
                        }
                        match retry_after {
                            Some(after) if code == 429 => self.pause_all(after),
                            Some(after) => self.policy.honoured_retry_after(after),
                            None => self.policy.backoff(attempt),
                        }
                    }
                }
            };
            attempt += 1;
            if attempt < attempts {
                // Under the run's span when a run's upload sends it. Debug:
                // the caller says what a request that gives up means (the
                // daemon goes offline or backs off, `sync` shows retries
                // itself), and an outage would otherwise log every attempt
                // of every upload.
                tracing::debug!(
                    server = %self.base_url,
                    request = what,
                    attempt,
                    attempts,
                    status,
                    error = %last,
                    wait_ms = wait.as_millis() as u64,
                    "retrying"
                );
                notify_retry(&RetryNotice {
                    what: what.into(),
                    error: last.clone(),
                    attempt,
                    attempts,
                    wait,
                });
                tokio::time::sleep(wait).await;
            }
        }
        Err(SinkError::Exhausted {
            what: what.into(),
            attempts,
            last,
            offline,
        })
    }
}

/// Why a PUT to a storage URL failed: each is about this upload alone.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StorageError {
    /// The storage refused the URL itself (expired, or its signature not
    /// accepted: 401, 403, 400 expired): fresh upload URLs may succeed.
    #[error("{0}")]
    UrlRefused(String),
    /// Any other refusal retrying cannot change.
    #[error("{0}")]
    Refused(String),
    /// Timeouts, lost connections or 5xx until the attempts ran out.
    #[error("{0}")]
    Failed(String),
    /// The local file could not be read while it was sent.
    #[error("{0}")]
    Read(String),
}

/// A storage URL as shown: without its query (a presigned URL's signature
/// and credential are there) or fragment.
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// A storage service's own words: its XML error's `Code` and `Message`
/// only (S3's may echo the signature it expected), else as from the server.
fn storage_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].chars().take(200).collect::<String>())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => server_message(body),
    }
}

/// When a streamed body last gave bytes, and why it could not be read.
struct BodyWatch {
    started: Instant,
    /// Milliseconds from `started` to the last bytes given, or `u64::MAX`
    /// once all were given (then only the answer is awaited).
    last_ms: std::sync::atomic::AtomicU64,
    read_error: Mutex<Option<String>>,
}

impl BodyWatch {
    fn new() -> BodyWatch {
        BodyWatch {
            started: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            read_error: Mutex::new(None),
        }
    }

    /// How long the body has given nothing while bytes remain.
    fn stalled_for(&self) -> Duration {
        match self.last_ms.load(std::sync::atomic::Ordering::Relaxed) {
            u64::MAX => Duration::ZERO,
            ms => self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(ms)),
        }
    }

    fn read_error(&self) -> Option<String> {
        self.read_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A request body that tells its [`BodyWatch`] of each chunk taken: the
/// storage accepts a chunk before the next is asked for.
struct WatchedBody {
    inner: reqwest::Body,
    watch: Arc<BodyWatch>,
    left: u64,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, reqwest::Error>>> {
        use std::sync::atomic::Ordering;
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                self.left = self.left.saturating_sub(n);
                let at = match self.left {
                    0 => u64::MAX,
                    _ => self.watch.started.elapsed().as_millis() as u64,
                };
                self.watch.last_ms.store(at, Ordering::Relaxed);
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(inner) = source {
                    text.push_str(&format!(": {inner}"));
                    source = inner.source();
                }
                *self
                    .watch
                    .read_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(text);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An [`Encoded`] body as one attempt sends it: its pieces one by one,
/// its length known (sent as `Content-Length`).
struct Pieces {
    pieces: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl Pieces {
    fn of(body: &Encoded) -> Pieces {
        Pieces {
            // Reference counts: the pieces are not copied.
            pieces: body.pieces().to_vec().into_iter(),
            remaining: body.len() as u64,
        }
    }
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let piece = self.pieces.next();
        if let Some(piece) = &piece {
            self.remaining -= piece.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn window_permits(bytes: usize) -> u32 {
    // The window's size fits: it is a few megabytes.
    bytes.min(SEND_WINDOW_BYTES) as u32
}

fn describe_transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // reqwest's Display names the URL: an upload URL's query is its
    // credential, so it is left out.
    let mut text = format!("{kind}: {e}");
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), without_query(url.as_str()));
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// A 2xx GraphQL answer: done, an error that may pass (retried like a 5xx),
/// or a refusal no retry changes.
fn graphql_verdict(operation: &str, body: &[u8]) -> BodyVerdict {
    let Ok(answer) = serde_json::from_slice::<Json>(body) else {
        // Reported as unreadable by the caller.
        return BodyVerdict::Done;
    };
    let Some(errors) = answer
        .get("errors")
        .and_then(Json::as_array)
        .filter(|e| !e.is_empty())
    else {
        return BodyVerdict::Done;
    };
    let mut transient = true;
    let mut messages = Vec::new();
    for error in errors {
        let message = error
            .get("message")
            .and_then(Json::as_str)
            .unwrap_or("(no message)");
        let code = error.pointer("/extensions/code").and_then(Json::as_str);
        transient &= graphql_error_is_transient(message, code);
        messages.push(message);
    }
    let message = messages.join("; ");
    if transient {
        BodyVerdict::Retry(format!("GraphQL error: {message}"))
    } else {
        BodyVerdict::Refused(SinkError::GraphQl {
            what: operation.into(),
            message,
        })
    }
}

/// The server's own words: GraphQL-style `errors[].message`, `error`, or
/// the start of the body.
fn server_message(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<Json>(body) {
        if let Some(errors) = json.get("errors").and_then(Json::as_array) {
            let messages: Vec<&str> = errors
                .iter()
                .filter_map(|e| e.get("message")?.as_str())
                .collect();
            if !messages.is_empty() {
                return messages.join("; ");
            }
        }
        if let Some(message) = json.get("error").and_then(Json::as_str) {
            return message.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text.chars().take(300).collect()
    }
}

/// Entity, project and run names go into URL paths; escape what would break one.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_extracted() {
        assert_eq!(
            server_message(br#"{"errors":[{"message":"bad key"},{"message":"x"}]}"#),
            "bad key; x"
        );
        assert_eq!(server_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(server_message(b"  "), "(empty body)");
        assert_eq!(
            server_message(b"<html>gateway</html>"),
            "<html>gateway</html>"
        );
    }

    #[test]
    fn graphql_errors_are_judged_transient_or_refused() {
        let verdict = |body: &str| graphql_verdict("Op", body.as_bytes());
        assert!(matches!(verdict(r#"{"data":{"x":1}}"#), BodyVerdict::Done));
        assert!(matches!(
            verdict(r#"{"data":null,"errors":[{"message":"upstream request timeout"}]}"#),
            BodyVerdict::Retry(m) if m.contains("upstream request timeout")
        ));
        assert!(matches!(
            verdict(r#"{"data":null,"errors":[{"message":"permission denied"}]}"#),
            BodyVerdict::Refused(SinkError::GraphQl { message, .. }) if message == "permission denied"
        ));
        // One refusal among passing errors: retrying cannot help.
        assert!(matches!(
            verdict(
                r#"{"errors":[{"message":"timeout"},{"message":"x","extensions":{"code":"FORBIDDEN"}}]}"#
            ),
            BodyVerdict::Refused(_)
        ));
    }

    #[test]
    fn a_pause_says_what_was_asked_and_what_is_waited() {
        let pause = Pause {
            until: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            asked: Duration::from_secs(86_400),
            honoured: Duration::from_secs(60),
        };
        assert_eq!(
            pause.to_string(),
            "paused until 2027-01-15T08:00:00Z because of HTTP 429 Retry-After 86400 s (capped to 60 s)"
        );
    }

    #[test]
    fn storage_urls_and_errors_are_shown_without_their_signature() {
        assert_eq!(
            without_query("https://b.s3.amazonaws.com/k/f?X-Amz-Signature=abc&X-Amz-Credential=A"),
            "https://b.s3.amazonaws.com/k/f"
        );
        let s3 = b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
            <Message>The request signature we calculated does not match</Message>\
            <SignatureProvided>abc123secret</SignatureProvided></Error>";
        let message = storage_message(s3);
        assert_eq!(
            message,
            "SignatureDoesNotMatch: The request signature we calculated does not match"
        );
        assert_eq!(storage_message(br#"{"error":"nope"}"#), "nope");
    }

    /// A storage that accepts the connection but never reads: the PUT fails
    /// after the timeout without progress, long before its total timeout
    /// (which grows with the body's size), and the server's contact is not
    /// touched.
    #[tokio::test]
    async fn a_put_the_storage_stops_reading_fails_after_the_timeout_without_progress() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/bucket/key?X-Amz-Signature=secret",
            listener.local_addr().unwrap()
        );
        let held = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(8));
            drop(socket);
        });
        let policy = RetryPolicy {
            min_wait: Duration::from_millis(10),
            max_wait: Duration::from_millis(10),
            max_attempts: 1,
            timeout: Duration::from_secs(2),
        };
        let client = Client::new("http://127.0.0.1:9", "key", policy).unwrap();
        let len: u64 = 256 << 20;
        let started = Instant::now();
        let result = client
            .put_streamed("artifact file big", &url, HeaderMap::new(), len, || {
                reqwest::Body::wrap(Sevens { left: len })
            })
            .await;
        let took = started.elapsed();
        let Err(StorageError::Failed(why)) = result else {
            panic!("{result:?}");
        };
        assert!(why.contains("accepted no bytes for 2 s"), "{why}");
        assert!(!why.contains("secret"), "{why}");
        assert!(took < Duration::from_secs(7), "{took:?}");
        assert_eq!(client.contact_guard().unreachable_since, None);
        held.join().unwrap();
    }

    /// `left` bytes of 7s, a MiB at a time.
    struct Sevens {
        left: u64,
    }

    impl http_body::Body for Sevens {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = self.left.min(1 << 20);
            self.left -= n;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
                7u8;
                n as usize
            ])))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.left)
        }
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("my-team_1.x"), "my-team_1.x");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
