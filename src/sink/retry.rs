//! When to retry a request and how long to wait: exponential backoff with
//! jitter, `Retry-After` (seconds or HTTP date) honoured exactly, and no
//! retries for answers that cannot change (400, 401, 403, 404, 409, 410, 413,
//! 422, 501).

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First wait; doubles each attempt.
    pub min_wait: Duration,
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
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.min_wait.as_secs_f64() * 2f64.powi(attempt.min(30) as i32);
        let jittered = base * (1.0 + 0.25 * fastrand::f64());
        Duration::from_secs_f64(jittered.min(self.max_wait.as_secs_f64()))
    }
}

/// Attempts in all for a request whose connection cannot be made at all
/// (refused, unknown host, no route) while the server has never answered
/// this process: likely a wrong URL or no network, which waiting on the
/// full policy (minutes) would only hide.
pub const FIRST_CONTACT_ATTEMPTS: u32 = 3;

/// A failed attempt that is about to be retried.
#[derive(Debug, Clone)]
pub struct RetryNotice {
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
pub type RetryObserver = std::sync::Arc<dyn Fn(&RetryNotice) + Send + Sync>;

tokio::task_local! {
    /// The observer of the task sending a run's requests: clients are
    /// shared by runs, so who is told is the task's business, not the
    /// client's (see [`observe_retries`]).
    static OBSERVER: RetryObserver;
}

/// Runs `future` with `observer` told about every retry its requests make.
pub async fn observe_retries<F: std::future::Future>(
    observer: RetryObserver,
    future: F,
) -> F::Output {
    OBSERVER.scope(observer, future).await
}

/// Tells the current task's observer, if it has one.
pub fn notify_retry(notice: &RetryNotice) {
    let _ = OBSERVER.try_with(|observer| observer(notice));
}

/// Whether an HTTP status may succeed when asked again.
pub fn status_is_retryable(status: u16) -> bool {
    match status {
        400 | 401 | 403 | 404 | 409 | 410 | 413 | 422 | 501 => false,
        408 | 425 | 429 => true,
        s if s >= 500 => true,
        _ => false,
    }
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
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
    fn which_statuses_are_retried() {
        for s in [429, 500, 502, 503, 504, 408] {
            assert!(status_is_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 410, 413, 422, 501, 200] {
            assert!(!status_is_retryable(s), "{s}");
        }
    }
}
