//! When to retry a request and how long to wait: exponential backoff with
//! jitter, `Retry-After` (seconds or HTTP date) honoured up to the longest
//! backoff, no retries for answers that cannot change (400, 401, 403, 404,
//! 409, 410, 413, 422, 501), and which GraphQL errors (HTTP 200 with
//! `errors[]`) are worth asking again.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// First wait; doubles each attempt.
    pub min_wait: Duration,
    /// The longest wait between two attempts, a server's `Retry-After`
    /// included (see [`RetryPolicy::honoured_retry_after`]).
    pub max_wait: Duration,
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_wait: Duration::from_secs(2),
            max_wait: Duration::from_secs(60),
            max_attempts: 12,
            timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Wait before attempt `attempt + 1` (attempt 0 is the first try):
    /// `min · 2^attempt · (1 + 0.25·random)`, capped at `max_wait`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = self.min_wait.as_secs_f64() * 2f64.powi(attempt.min(30) as i32);
        let jittered = base * (1.0 + 0.25 * fastrand::f64());
        Duration::from_secs_f64(jittered.min(self.max_wait.as_secs_f64()))
    }

    /// How much of a server's `Retry-After` is waited: at most `max_wait`
    /// (60 s by default). Why a cap: the value is the server's (or a proxy's)
    /// word, and one `429 Retry-After: 86400` would otherwise put a sync to
    /// sleep for a day and hold every upload to that server with it. Waiting
    /// the longest backoff and asking again costs the server one request per
    /// minute; if it still refuses, the attempts run out and the run fails
    /// as transient (the daemon then schedules it again on its own backoff).
    pub(crate) fn honoured_retry_after(&self, asked: Duration) -> Duration {
        asked.min(self.max_wait)
    }
}

/// Attempts in all for a request whose connection cannot be made at all
/// (refused, unknown host, no route) while the server has never answered
/// this process: likely a wrong URL or no network, which waiting on the
/// full policy (minutes) would only hide.
pub(crate) const FIRST_CONTACT_ATTEMPTS: u32 = 3;

/// A failed attempt that is about to be retried.
#[derive(Debug, Clone)]
pub(crate) struct RetryNotice {
    /// The request (`UpsertBucket`, `file_stream`, `upload of output.log`).
    pub what: String,
    /// Why the attempt failed.
    pub error: String,
    /// The attempt that failed, from 1, and how many there will be at most.
    pub attempt: u32,
    pub attempts: u32,
    /// The wait before the next attempt.
    pub wait: Duration,
}

/// Told about every retry, for a progress display.
pub(crate) type RetryObserver = std::sync::Arc<dyn Fn(&RetryNotice) + Send + Sync>;

tokio::task_local! {
    /// The observer of the task sending a run's requests: clients are
    /// shared by runs, so who is told is the task's business, not the
    /// client's (see [`observe_retries`]).
    static OBSERVER: RetryObserver;
}

/// Runs `future` with `observer` told about every retry its requests make.
pub(crate) async fn observe_retries<F: std::future::Future>(
    observer: RetryObserver,
    future: F,
) -> F::Output {
    OBSERVER.scope(observer, future).await
}

/// The current task's observer, for a task it starts to send requests on
/// its behalf (task-locals are not inherited).
pub(crate) fn current_observer() -> Option<RetryObserver> {
    OBSERVER.try_with(RetryObserver::clone).ok()
}

/// Tells the current task's observer, if it has one.
pub(crate) fn notify_retry(notice: &RetryNotice) {
    let _ = OBSERVER.try_with(|observer| observer(notice));
}

/// Whether an HTTP status may succeed when asked again.
pub(crate) fn status_is_retryable(status: u16) -> bool {
    match status {
        400 | 401 | 403 | 404 | 409 | 410 | 413 | 422 | 501 => false,
        408 | 425 | 429 => true,
        s if s >= 500 => true,
        _ => false,
    }
}

/// Whether a GraphQL error (an HTTP 2xx answer carrying `errors[]`) may go
/// away when asked again. The W&B backend answers 200 for errors raised
/// behind its GraphQL layer: a gateway's "upstream request timeout", a
/// database's "context deadline exceeded", an internal error or a rate
/// limit all come this way, as do refusals that no retry changes (no
/// permission, no such project, invalid input). Only those refusals are
/// permanent: `extensions.code` decides when the server gives one, else the
/// message; an error that names neither kind is retried, since retrying a
/// permanent error costs a few requests while treating a passing one as
/// permanent stops the run until someone intervenes.
pub(crate) fn graphql_error_is_transient(message: &str, code: Option<&str>) -> bool {
    if let Some(code) = code {
        let code = code.to_ascii_uppercase().replace('-', "_");
        match code.as_str() {
            "UNAUTHENTICATED"
            | "UNAUTHORIZED"
            | "FORBIDDEN"
            | "PERMISSION_DENIED"
            | "BAD_USER_INPUT"
            | "BAD_REQUEST"
            | "INVALID_ARGUMENT"
            | "NOT_FOUND"
            | "GRAPHQL_PARSE_FAILED"
            | "GRAPHQL_VALIDATION_FAILED"
            | "ALREADY_EXISTS"
            | "CONFLICT"
            | "PERSISTED_QUERY_NOT_SUPPORTED"
            | "OPERATION_RESOLUTION_FAILURE" => {
                return false;
            }
            "INTERNAL_SERVER_ERROR"
            | "INTERNAL"
            | "UNAVAILABLE"
            | "SERVICE_UNAVAILABLE"
            | "DEADLINE_EXCEEDED"
            | "TIMEOUT"
            | "GATEWAY_TIMEOUT"
            | "RATE_LIMITED"
            | "TOO_MANY_REQUESTS"
            | "RESOURCE_EXHAUSTED"
            | "ABORTED" => return true,
            _ => {}
        }
    }
    let message = message.to_ascii_lowercase();
    const PERMANENT: &[&str] = &[
        "permission",
        "not authorized",
        "unauthorized",
        "unauthenticated",
        "forbidden",
        "access denied",
        "not allowed",
        "not found",
        "does not exist",
        "no such",
        "invalid",
        "validation",
        "cannot query field",
        "unknown argument",
        "unknown type",
        "syntax error",
        "must be",
        "is required",
        "already exists",
        "reserved",
        "too long",
        "too large",
    ];
    !PERMANENT.iter().any(|p| message.contains(p))
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let policy = RetryPolicy::default();
        for attempt in 0..10 {
            let wait = policy.backoff(attempt).as_secs_f64();
            let base = (2.0 * 2f64.powi(attempt as i32)).min(60.0);
            assert!(
                wait >= base.min(60.0) - 1e-9 && wait <= (base * 1.25).min(60.0) + 1e-9,
                "{attempt}: {wait}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_is_capped_at_the_longest_backoff() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.honoured_retry_after(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
        assert_eq!(
            policy.honoured_retry_after(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn graphql_errors_that_pass_are_retried_refusals_are_not() {
        for message in [
            "upstream request timeout",
            "context deadline exceeded",
            "Internal server error",
            "rate limit exceeded, slow down",
            "service temporarily unavailable",
            "something unexpected happened",
        ] {
            assert!(graphql_error_is_transient(message, None), "{message}");
        }
        for message in [
            "permission denied",
            "user is not authorized to write to this project",
            "project not found",
            "entity foo does not exist",
            "Variable \"$name\" of required type \"String!\" was not provided: invalid input",
            "Cannot query field \"x\" on type \"Run\"",
        ] {
            assert!(!graphql_error_is_transient(message, None), "{message}");
        }
        // The server's code wins over the words.
        assert!(!graphql_error_is_transient("oops", Some("FORBIDDEN")));
        assert!(graphql_error_is_transient(
            "invalid state, try again",
            Some("INTERNAL_SERVER_ERROR")
        ));
        assert!(!graphql_error_is_transient(
            "upstream request timeout",
            Some("BAD_USER_INPUT")
        ));
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [429, 500, 502, 503, 504, 408] {
            assert!(status_is_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 410, 413, 422, 501, 200] {
            assert!(!status_is_retryable(s), "{s}");
        }
    }
}
