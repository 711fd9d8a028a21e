//! HTTP to a W&B server: GraphQL, FileStream and upload PUTs, each retried by
//! [`RetryPolicy`]. A `429 Retry-After` pauses every request of this client
//! (all workers share it), not only the one that got it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use serde_json::{Value as Json, json};
use tokio::sync::Mutex;

use crate::sink::retry::{
    FIRST_CONTACT_ATTEMPTS, RetryNotice, RetryPolicy, notify_retry, parse_retry_after,
    status_is_retryable,
};

/// Why a request did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
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
}

impl SinkError {
    /// The API key was refused: nothing will work until it is fixed.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            SinkError::Rejected {
                status: 401 | 403,
                ..
            }
        )
    }

    /// The server could not be reached at all (as opposed to answering with errors).
    pub fn is_offline(&self) -> bool {
        matches!(self, SinkError::Exhausted { offline: true, .. })
    }
}

/// Where to send and with which key. The key is only ever put in the
/// `Authorization` header (marked sensitive); it is not kept elsewhere.
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    auth: HeaderValue,
    policy: RetryPolicy,
    /// No request leaves before this instant (set by 429 Retry-After).
    paused_until: Arc<Mutex<Option<Instant>>>,
    /// The server has answered (any HTTP status) at least once.
    answered: std::sync::atomic::AtomicBool,
}

impl Client {
    pub fn new(base_url: &str, api_key: &str, policy: RetryPolicy) -> Result<Client, SinkError> {
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
            answered: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Runs one GraphQL operation and returns its `data`.
    pub async fn graphql(
        &self,
        operation: &str,
        query: &str,
        variables: Json,
    ) -> Result<Json, SinkError> {
        let body = serde_json::to_vec(
            &json!({"query": query, "variables": variables, "operationName": operation}),
        )
        .map(Bytes::from)
        .expect("JSON of JSON values");
        let url = format!("{}/graphql", self.base_url);
        let bytes = self
            .send(operation, || {
                self.http
                    .post(&url)
                    .header(AUTHORIZATION, self.auth.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let answer: Json = serde_json::from_slice(&bytes).map_err(|e| SinkError::Protocol {
            what: operation.into(),
            message: format!("not JSON ({e})"),
        })?;
        if let Some(errors) = answer
            .get("errors")
            .and_then(Json::as_array)
            .filter(|e| !e.is_empty())
        {
            let message = errors
                .iter()
                .map(|e| {
                    e.get("message")
                        .and_then(Json::as_str)
                        .unwrap_or("(no message)")
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(SinkError::GraphQl {
                what: operation.into(),
                message,
            });
        }
        match answer.get("data") {
            Some(data) if !data.is_null() => Ok(data.clone()),
            _ => Err(SinkError::Protocol {
                what: operation.into(),
                message: "no data in the answer".into(),
            }),
        }
    }

    /// Posts one FileStream request body for a run.
    pub async fn file_stream(
        &self,
        entity: &str,
        project: &str,
        run: &str,
        body: Vec<u8>,
    ) -> Result<Json, SinkError> {
        let body = Bytes::from(body);
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
                    .body(body.clone())
            })
            .await?;
        // Only `{"stopped": true}` means anything; an unreadable body is ignored.
        Ok(serde_json::from_slice(&bytes).unwrap_or(Json::Null))
    }

    /// PUTs a file to an upload URL from `CreateRunFiles`, with the headers it
    /// returned and without our credentials (the URL is often a storage
    /// bucket's, not the W&B server's).
    pub async fn put(
        &self,
        what: &str,
        url: &str,
        headers: &[String],
        body: Vec<u8>,
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
        // Cloned once per attempt: `Bytes` makes that a reference count.
        let body = Bytes::from(body);
        self.send(what, || {
            self.http.put(url).headers(map.clone()).body(body.clone())
        })
        .await?;
        Ok(())
    }

    async fn wait_for_pause(&self) {
        let until = *self.paused_until.lock().await;
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    async fn pause_all(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().await;
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Sends with retries; returns the body of the 2xx answer.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Bytes, SinkError> {
        use std::sync::atomic::Ordering;
        let mut last = String::new();
        let mut offline = true;
        let mut attempts = self.policy.max_attempts;
        let mut attempt = 0;
        while attempt < attempts {
            if attempt > 0 {
                self.wait_for_pause().await;
            }
            let wait = match build().timeout(self.policy.timeout).send().await {
                Err(e) => {
                    offline = e.is_connect() || e.is_timeout() || e.is_request();
                    last = describe_transport_error(&e);
                    if e.is_connect() && !self.answered.load(Ordering::Relaxed) {
                        attempts = attempts.min(FIRST_CONTACT_ATTEMPTS);
                    }
                    self.policy.backoff(attempt)
                }
                Ok(response) => {
                    // Reachable after all: the full policy from here on.
                    self.answered.store(true, Ordering::Relaxed);
                    attempts = self.policy.max_attempts;
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    let body = response.bytes().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return Ok(body);
                    }
                    offline = false;
                    let message = server_message(&body);
                    if !status_is_retryable(status) {
                        return Err(SinkError::Rejected {
                            what: what.into(),
                            status,
                            message,
                        });
                    }
                    last = format!("HTTP {status}: {message}");
                    match retry_after {
                        Some(after) => {
                            if status == 429 {
                                self.pause_all(after).await;
                            }
                            after
                        }
                        None => self.policy.backoff(attempt),
                    }
                }
            };
            attempt += 1;
            if attempt < attempts {
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

fn describe_transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // reqwest's Display names the URL, which never holds credentials here.
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
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
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("my-team_1.x"), "my-team_1.x");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
