//! Which run uploads when. Each run the daemon follows is in one
//! [`State`]: nothing to do, waiting its turn, uploading (and whether it
//! changed meanwhile), backing off after a failure, or stopped until
//! something about it changes. [`Scheduler::enqueue`] is the one way a run
//! is asked for; the scheduler keeps each run in its queue at most once.
//!
//! The order: runs someone asked for by name (`syncd notify`, a writer
//! closing its file) first, then everyone else first come, first served; a
//! run goes to the back after its turn. A run still being written uploads
//! at most once per live interval (its appends are batched), while one that
//! has ended goes at once. A run that failed waits `5 s·2ⁿ` with jitter
//! ([`RUN_RETRY`]) without holding up the others. The scheduler decides
//! nothing about the network: while the daemon is offline it simply asks
//! for no run.
//!
//! Time is `tokio::time::Instant`, so the tests run under a paused clock.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use crate::sink::retry::RetryPolicy;

/// After an upload failed for a reason that may pass: `5 s·2ⁿ` (n failures
/// in a row, from 1) with up to 25 % jitter, at most 10 minutes.
pub(crate) const RUN_RETRY: RetryPolicy = RetryPolicy {
    min_wait: Duration::from_secs(5),
    max_wait: Duration::from_secs(600),
    max_attempts: u32::MAX,
    timeout: Duration::ZERO,
};

/// While offline: the wait before each probe of the servers, from 2 s
/// (the first probe) doubling to a minute, with jitter.
pub(crate) const PROBE_RETRY: RetryPolicy = RetryPolicy {
    min_wait: Duration::from_secs(2),
    max_wait: Duration::from_secs(60),
    max_attempts: u32::MAX,
    timeout: Duration::ZERO,
};

/// Waiting for another daemon's lease (`--wait-for-lease`): asked again
/// after about a quarter of its time to live, then every half, with jitter
/// so that two waiting daemons do not ask in step.
pub(crate) fn lease_wait(ttl: Duration) -> RetryPolicy {
    RetryPolicy {
        min_wait: ttl / 4,
        max_wait: ttl / 2,
        max_attempts: u32::MAX,
        timeout: Duration::ZERO,
    }
}

/// Where a run is in its uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Nothing to upload.
    Idle,
    /// Waiting its turn in the queue.
    Queued,
    /// Uploading; `dirty` when something changed since it began (it goes
    /// again once this upload is over).
    InFlight { dirty: bool },
    /// Failed; queued again at `until`.
    Backoff { until: Instant },
    /// Not tried again until something about it changes (its files, its
    /// settings) or a SIGHUP: the reason, for status.
    Stopped(String),
}

impl State {
    /// Something about the run is not uploaded yet (or could not be).
    pub(crate) fn pending(&self) -> bool {
        !matches!(self, State::Idle | State::InFlight { dirty: false })
    }
}

/// How an upload ended, as far as scheduling cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Done {
    Uploaded,
    /// The server could not be reached: the run goes again when the daemon
    /// is back online (it asks for no run meanwhile).
    Offline,
    /// Retry after a backoff.
    Failed,
    /// Not retried until something changes: why.
    Stopped(String),
}

/// An upload ended for a run the scheduler did not have uploading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an upload ended for a run that was not uploading")]
pub(crate) struct NotUploading;

/// A run's place in the scheduler.
#[derive(Debug)]
struct Slot {
    state: State,
    /// Failures in a row, for the backoff.
    failures: u32,
    /// When its last upload began: a live run's appends are batched into
    /// one upload per live interval rather than one per write.
    last_upload_began: Option<Instant>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            state: State::Idle,
            failures: 0,
            last_upload_began: None,
        }
    }
}

static IDLE: State = State::Idle;

/// The runs' states and the queues, for runs named by `K`.
#[derive(Debug)]
pub(crate) struct Scheduler<K> {
    /// Only runs the scheduler had to do with: a run it never saw, or one
    /// forgotten once quiet, is `Idle`.
    slots: HashMap<K, Slot>,
    /// Runs asked for by name: before the others.
    notified: VecDeque<K>,
    ready: VecDeque<K>,
    /// Runs in `Backoff`, to wake when their time comes.
    backing_off: Vec<K>,
    in_flight: usize,
    retry: RetryPolicy,
}

impl<K> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            slots: HashMap::new(),
            notified: VecDeque::new(),
            ready: VecDeque::new(),
            backing_off: Vec::new(),
            in_flight: 0,
            retry: RUN_RETRY,
        }
    }
}

impl<K: Clone + Eq + Hash + std::fmt::Debug> Scheduler<K> {
    pub(crate) fn state(&self, id: &K) -> &State {
        self.slots.get(id).map_or(&IDLE, |slot| &slot.state)
    }

    /// Uploads under way.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Runs waiting their turn (not those backing off).
    pub(crate) fn queued(&self) -> usize {
        self.notified.len() + self.ready.len()
    }

    /// The run has something new to upload: queued at the back unless it
    /// already is (or backs off: it goes when that ends); one uploading
    /// goes again after this upload; a stopped one is tried again.
    pub(crate) fn enqueue(&mut self, id: &K) {
        let slot = self.slots.entry(id.clone()).or_default();
        match slot.state {
            State::Idle | State::Stopped(_) => {
                slot.state = State::Queued;
                self.ready.push_back(id.clone());
            }
            State::InFlight { .. } => slot.state = State::InFlight { dirty: true },
            State::Queued | State::Backoff { .. } => {}
        }
    }

    /// Someone asked for this run by name: it goes before every run not
    /// asked for, without waiting for its backoff or live interval. A
    /// stopped run stays stopped (what would change it, its files, is
    /// enqueued by the caller as usual).
    pub(crate) fn notify(&mut self, id: &K) {
        let slot = self.slots.entry(id.clone()).or_default();
        slot.last_upload_began = None;
        match slot.state {
            State::Idle | State::Queued | State::Backoff { .. } => {
                slot.state = State::Queued;
                self.ready.retain(|q| q != id);
                self.notified.retain(|q| q != id);
                self.backing_off.retain(|q| q != id);
                self.notified.push_back(id.clone());
            }
            State::InFlight { .. } | State::Stopped(_) => {}
        }
    }

    /// The next run to upload now, marked as uploading: runs asked for by
    /// name first, then the others in order; runs backing off whose time
    /// came join at the back. `still_written` tells a run whose writer may
    /// still append (no exit record, no verdict): such a run waits out
    /// `live_interval` since its last upload began.
    pub(crate) fn next_ready(
        &mut self,
        now: Instant,
        live_interval: Duration,
        still_written: impl Fn(&K) -> bool,
    ) -> Option<K> {
        self.wake(now);
        let slots = &self.slots;
        let may_go = |id: &K| {
            slots.get(id).is_some_and(|slot| {
                let batching = slot
                    .last_upload_began
                    .is_some_and(|began| now.duration_since(began) < live_interval);
                slot.state == State::Queued && !(batching && still_written(id))
            })
        };
        let id = match self.notified.iter().position(&may_go) {
            Some(at) => self.notified.remove(at),
            None => {
                let at = self.ready.iter().position(&may_go)?;
                self.ready.remove(at)
            }
        }?;
        let slot = self.slots.entry(id.clone()).or_default();
        slot.state = State::InFlight { dirty: false };
        slot.last_upload_began = Some(now);
        self.in_flight += 1;
        Some(id)
    }

    /// Runs whose backoff is over join the queue.
    fn wake(&mut self, now: Instant) {
        let slots = &mut self.slots;
        let ready = &mut self.ready;
        self.backing_off.retain(|id| {
            let Some(slot) = slots.get_mut(id) else {
                return false;
            };
            match slot.state {
                State::Backoff { until } if until <= now => {
                    slot.state = State::Queued;
                    ready.push_back(id.clone());
                    false
                }
                State::Backoff { .. } => true,
                _ => false,
            }
        });
    }

    /// An upload is over. Returns the backoff of a failed run; `Err` when
    /// the run was not uploading (a bug somewhere: nothing is changed, and
    /// the caller says so).
    pub(crate) fn finished(
        &mut self,
        id: &K,
        done: Done,
        now: Instant,
    ) -> Result<Option<Duration>, NotUploading> {
        let Some(slot) = self.slots.get_mut(id) else {
            return Err(NotUploading);
        };
        let State::InFlight { dirty } = slot.state else {
            return Err(NotUploading);
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        let mut wait = None;
        slot.state = match done {
            Done::Uploaded => {
                slot.failures = 0;
                if dirty { State::Queued } else { State::Idle }
            }
            Done::Offline => State::Queued,
            Done::Failed => {
                slot.failures = slot.failures.saturating_add(1);
                let backoff = self.retry.backoff(slot.failures);
                wait = Some(backoff);
                State::Backoff {
                    until: now + backoff,
                }
            }
            Done::Stopped(reason) => State::Stopped(reason),
        };
        match slot.state {
            State::Queued => self.ready.push_back(id.clone()),
            State::Backoff { .. } => self.backing_off.push(id.clone()),
            _ => {}
        }
        Ok(wait)
    }

    /// Stops the run (from whatever state) until something about it
    /// changes: a run taken for upload and then refused before it began
    /// (its settings), say.
    pub(crate) fn stop(&mut self, id: &K, reason: String) {
        let slot = self.slots.entry(id.clone()).or_default();
        if matches!(slot.state, State::InFlight { .. }) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        slot.state = State::Stopped(reason);
        self.ready.retain(|q| q != id);
        self.notified.retain(|q| q != id);
        self.backing_off.retain(|q| q != id);
    }

    /// SIGHUP: stopped and backing-off runs go again, at the back of the
    /// queue. Returns how many.
    pub(crate) fn retry_stopped(&mut self) -> usize {
        let mut woken = 0;
        for (id, slot) in &mut self.slots {
            if matches!(slot.state, State::Stopped(_) | State::Backoff { .. }) {
                slot.state = State::Queued;
                self.ready.push_back(id.clone());
                woken += 1;
            }
        }
        self.backing_off.clear();
        woken
    }

    /// Drops an idle run's slot (its batching interval and failure count
    /// with it): the daemon calls it for runs that are settled, so that
    /// the scheduler's memory follows the active runs. `false` (and kept)
    /// when the run is not idle.
    pub(crate) fn forget(&mut self, id: &K) -> bool {
        match self.slots.get(id) {
            Some(slot) if slot.state == State::Idle => {
                self.slots.remove(id);
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Duration = Duration::from_secs(30);

    fn ended(_: &&str) -> bool {
        false
    }

    fn writing(_: &&str) -> bool {
        true
    }

    fn all_ready(
        s: &mut Scheduler<&'static str>,
        still_written: fn(&&str) -> bool,
    ) -> Vec<&'static str> {
        std::iter::from_fn(|| s.next_ready(Instant::now(), LIVE, still_written)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_is_queued_once_however_many_changes_arrive() {
        let mut s = Scheduler::default();
        for _ in 0..5 {
            s.enqueue(&"a");
        }
        s.enqueue(&"b");
        s.enqueue(&"a");
        assert_eq!(s.queued(), 2);
        assert_eq!(all_ready(&mut s, ended), ["a", "b"]);
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.state(&"a"), &State::InFlight { dirty: false });
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_an_upload_queues_the_run_after_it() {
        let mut s = Scheduler::default();
        s.enqueue(&"a");
        assert_eq!(all_ready(&mut s, ended), ["a"]);
        s.enqueue(&"a");
        s.enqueue(&"a");
        assert_eq!(s.state(&"a"), &State::InFlight { dirty: true });
        assert!(
            all_ready(&mut s, ended).is_empty(),
            "one upload of a run at a time"
        );
        assert_eq!(s.finished(&"a", Done::Uploaded, Instant::now()), Ok(None));
        assert_eq!(s.state(&"a"), &State::Queued);
        assert_eq!(all_ready(&mut s, ended), ["a"]);
        // Nothing changed during this one: idle after it.
        s.finished(&"a", Done::Uploaded, Instant::now()).unwrap();
        assert_eq!(s.state(&"a"), &State::Idle);
        assert_eq!((s.queued(), s.in_flight()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_run_backs_off_with_growth_and_jitter_without_holding_others() {
        let mut s = Scheduler::default();
        s.enqueue(&"a");
        s.enqueue(&"b");
        assert_eq!(all_ready(&mut s, ended), ["a", "b"]);
        let first = s
            .finished(&"a", Done::Failed, Instant::now())
            .unwrap()
            .unwrap();
        assert!(
            first >= Duration::from_secs(10) && first <= Duration::from_millis(12_500),
            "{first:?}"
        );
        // A change does not cut the backoff short; others go meanwhile.
        s.enqueue(&"a");
        s.finished(&"b", Done::Uploaded, Instant::now()).unwrap();
        s.enqueue(&"b");
        assert_eq!(all_ready(&mut s, ended), ["b"]);
        tokio::time::advance(first - Duration::from_millis(1)).await;
        assert!(all_ready(&mut s, ended).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(all_ready(&mut s, ended), ["a"]);
        let second = s
            .finished(&"a", Done::Failed, Instant::now())
            .unwrap()
            .unwrap();
        assert!(
            second >= Duration::from_secs(20) && second <= Duration::from_secs(25),
            "{second:?}"
        );
        // Growth stops at ten minutes.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(600)).await;
            assert_eq!(all_ready(&mut s, ended), ["a"]);
            let wait = s
                .finished(&"a", Done::Failed, Instant::now())
                .unwrap()
                .unwrap();
            assert!(wait <= Duration::from_secs(600), "{wait:?}");
        }
        // A success starts the count again.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(all_ready(&mut s, ended), ["a"]);
        s.finished(&"a", Done::Uploaded, Instant::now()).unwrap();
        s.enqueue(&"a");
        assert_eq!(all_ready(&mut s, ended), ["a"]);
        let again = s
            .finished(&"a", Done::Failed, Instant::now())
            .unwrap()
            .unwrap();
        assert!(again <= Duration::from_millis(12_500), "{again:?}");
        // Jitter: runs failing at once do not all come back at once.
        let mut waits = std::collections::HashSet::new();
        let mut many = Scheduler::default();
        for id in 0..20 {
            many.enqueue(&id);
        }
        while let Some(id) = many.next_ready(Instant::now(), LIVE, |_| false) {
            waits.insert(many.finished(&id, Done::Failed, Instant::now()).unwrap());
        }
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_run_stays_stopped_until_something_about_it_changes() {
        let mut s = Scheduler::default();
        s.enqueue(&"a");
        assert_eq!(all_ready(&mut s, ended), ["a"]);
        let refused = Done::Stopped("the key was refused".into());
        s.finished(&"a", refused, Instant::now()).unwrap();
        assert_eq!(s.state(&"a"), &State::Stopped("the key was refused".into()));
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(3600)).await;
            assert!(all_ready(&mut s, ended).is_empty());
        }
        // Being asked for by name does not restart it either.
        s.notify(&"a");
        assert!(all_ready(&mut s, ended).is_empty());
        assert!(!s.forget(&"a"), "a stopped run is kept, for status");
        // Its settings changed.
        s.enqueue(&"a");
        assert_eq!(all_ready(&mut s, ended), ["a"]);

        // Refused before its upload began (its target), then SIGHUP, which
        // also ends backoffs.
        s.stop(&"a", "no key".into());
        assert_eq!(s.in_flight(), 0);
        s.enqueue(&"b");
        assert_eq!(all_ready(&mut s, ended), ["b"]);
        s.finished(&"b", Done::Failed, Instant::now()).unwrap();
        assert_eq!(s.retry_stopped(), 2);
        let mut woken = all_ready(&mut s, ended);
        woken.sort();
        assert_eq!(woken, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_run_uploads_once_per_interval_and_an_ended_one_at_once() {
        let mut s = Scheduler::default();
        s.enqueue(&"live");
        assert_eq!(all_ready(&mut s, writing), ["live"]);
        s.finished(&"live", Done::Uploaded, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        s.enqueue(&"live");
        assert!(all_ready(&mut s, writing).is_empty(), "appends are batched");
        tokio::time::advance(LIVE - Duration::from_secs(2)).await;
        assert!(all_ready(&mut s, writing).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(all_ready(&mut s, writing), ["live"]);
        s.finished(&"live", Done::Uploaded, Instant::now()).unwrap();
        // Its writer is done (exit record or verdict): no waiting.
        s.enqueue(&"live");
        assert_eq!(all_ready(&mut s, ended), ["live"]);
        // A run waiting out its interval does not hold up the queue.
        s.finished(&"live", Done::Uploaded, Instant::now()).unwrap();
        s.enqueue(&"live");
        s.enqueue(&"other");
        assert_eq!(all_ready(&mut s, writing), ["other"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_asked_for_by_name_goes_first_without_waiting() {
        let mut s = Scheduler::default();
        for id in ["a", "b", "c", "d"] {
            s.enqueue(&id);
        }
        s.notify(&"c");
        s.notify(&"d");
        s.notify(&"c");
        assert_eq!(s.queued(), 4);
        assert_eq!(all_ready(&mut s, ended), ["d", "c", "a", "b"]);
        // A run in backoff or in its live interval goes at once when named.
        s.finished(&"a", Done::Failed, Instant::now()).unwrap();
        s.finished(&"b", Done::Uploaded, Instant::now()).unwrap();
        s.enqueue(&"b");
        assert!(all_ready(&mut s, writing).is_empty());
        s.notify(&"a");
        s.notify(&"b");
        assert_eq!(all_ready(&mut s, writing), ["a", "b"]);
        // An idle run named is uploaded (there may be something new).
        s.finished(&"c", Done::Uploaded, Instant::now()).unwrap();
        s.notify(&"c");
        assert_eq!(all_ready(&mut s, writing), ["c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finish_for_a_run_not_uploading_changes_nothing() {
        let mut s = Scheduler::default();
        assert_eq!(
            s.finished(&"ghost", Done::Uploaded, Instant::now()),
            Err(NotUploading)
        );
        s.enqueue(&"a");
        assert_eq!(
            s.finished(&"a", Done::Failed, Instant::now()),
            Err(NotUploading)
        );
        assert_eq!(s.state(&"a"), &State::Queued);
        assert_eq!((s.queued(), s.in_flight()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn only_idle_runs_are_forgotten() {
        let mut s = Scheduler::default();
        s.enqueue(&"a");
        assert!(!s.forget(&"a"));
        assert_eq!(all_ready(&mut s, writing), ["a"]);
        assert!(!s.forget(&"a"));
        s.finished(&"a", Done::Uploaded, Instant::now()).unwrap();
        assert!(s.forget(&"a"));
        assert_eq!(s.state(&"a"), &State::Idle);
        assert!(s.slots.is_empty());
    }

    #[test]
    fn the_daemons_waits_use_the_one_backoff_policy() {
        for attempt in 0..12 {
            let probe = PROBE_RETRY.backoff(attempt);
            let base = Duration::from_secs(2) * 2u32.pow(attempt);
            assert!(probe >= base.min(Duration::from_secs(60)), "{probe:?}");
            assert!(probe <= Duration::from_secs(60), "{probe:?}");
        }
        let lease = lease_wait(Duration::from_secs(30));
        for attempt in 0..5 {
            let wait = lease.backoff(attempt);
            assert!(wait >= Duration::from_millis(7500) && wait <= Duration::from_secs(15));
        }
    }
}
