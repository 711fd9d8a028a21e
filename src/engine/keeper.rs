//! What the daemon does on time whatever its loop is doing: renew the
//! lease, write the heartbeat, tell systemd its status and feed the
//! watchdog, and obey SIGTERM. A thread of its own does it, touching only
//! the state directory.
//!
//! The loop already hands every wait on a server or on Slurm to a task; but
//! it reads runs' directories and files itself, and the daemon runs on one
//! thread, so a filesystem that stops answering (a hung NFS or Lustre mount,
//! a FUSE daemon that died) would stop everything on that thread: the lease
//! would lapse and another daemon take over while this one still lives, and
//! `status` would say "not running". The keeper goes on instead. It writes
//! the heartbeat the loop last published with its own time, says since when
//! the loop has not turned, and keeps the lease. After SIGTERM it gives the
//! loop 2 s to react and the 5 s grace of uploads in flight; a loop that is
//! still stuck then is ended with the process (every step is checkpointed,
//! so nothing acknowledged is lost).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::engine::heartbeat::{self, Heartbeat};
use crate::engine::sd_notify::Notifier;
use crate::ledger::lease::Lease;

/// How often the keeper looks at what is due (signals wake it at once).
const TICK: Duration = Duration::from_millis(500);
/// How often the heartbeat file is written (status trusts it for 15 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A loop that has not turned for this long is reported as stalled.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(10);
/// The watchdog is fed while the loop turned within this long. A mount
/// that hangs for minutes is the outside world, not a broken daemon; one
/// stalled past this stops being vouched for, and systemd restarts the
/// daemon once the unit's `WatchdogSec` (2 min) passes without a feed.
const WATCHDOG_LOOP_LIMIT: Duration = Duration::from_secs(300);
/// After SIGTERM: how long a loop that has not reacted gets, and how long
/// one waiting for its uploads in flight gets. A loop that has not turned
/// for 2 s is stuck in one step (a hung mount, or a full poll of a huge root
/// on a slow filesystem); uploads share its thread and make no progress
/// meanwhile either, so ending it then loses at most a step that every
/// upload repeats from its checkpoint.
const STOP_REACT: Duration = Duration::from_secs(2);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the loop last published.
struct Published {
    heartbeat: Option<Heartbeat>,
    summary: String,
    turned_at: Instant,
    turned_at_wall: SystemTime,
}

struct Shared {
    published: Mutex<Published>,
    /// The loop is done: release the lease and end.
    finish: AtomicBool,
    /// Set by the keeper: the lease was lost (another daemon has it).
    lease_lost: AtomicBool,
}

/// The loop's handle on its keeper thread.
pub(crate) struct Keeper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts the keeper thread with the lease the daemon holds.
    pub(crate) fn start(
        lease: Lease,
        state_dir: std::path::PathBuf,
        notifier: Option<Notifier>,
    ) -> std::io::Result<Keeper> {
        let shared = Arc::new(Shared {
            published: Mutex::new(Published {
                heartbeat: None,
                summary: String::new(),
                turned_at: Instant::now(),
                turned_at_wall: SystemTime::now(),
            }),
            finish: AtomicBool::new(false),
            lease_lost: AtomicBool::new(false),
        });
        // Its own runtime: the signal listeners and the timer must not
        // depend on the loop's thread being free.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let keeping = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("syncd-keeper".into())
            .spawn(move || {
                runtime.block_on(keep(keeping, lease, state_dir, notifier));
            })?;
        // The kernel hands a process's signal to its main thread first,
        // and a thread waiting in the kernel on a hung mount cannot run a
        // handler: SIGTERM would stay pending there forever. Blocked here
        // (the loop's thread, and every thread it starts from now on), the
        // signals go to the keeper's thread, whose handler wakes both the
        // keeper and the loop's own listeners.
        block_stop_signals_in_this_thread();
        Ok(Keeper {
            shared,
            thread: Some(thread),
        })
    }

    /// The loop turned: called once per iteration.
    pub(crate) fn turned(&self) {
        let mut published = lock(&self.shared.published);
        published.turned_at = Instant::now();
        published.turned_at_wall = SystemTime::now();
    }

    /// The newest heartbeat and systemd status line, written by the keeper
    /// on its own schedule.
    pub(crate) fn publish(&self, beat: Heartbeat, summary: String) {
        let mut published = lock(&self.shared.published);
        published.heartbeat = Some(beat);
        published.summary = summary;
    }

    /// The lease was lost (the keeper said why): the loop stops.
    pub(crate) fn lease_lost(&self) -> bool {
        self.shared.lease_lost.load(Ordering::Relaxed)
    }

    /// Removes the heartbeat, releases the lease and ends the thread.
    pub(crate) fn finish(self) {
        drop(self);
    }
}

impl Drop for Keeper {
    /// Also when the daemon fails after starting the keeper: the lease is
    /// released rather than left to expire.
    fn drop(&mut self) {
        self.shared.finish.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(
                "the keeper thread panicked; the lease may be left to expire instead of released"
            );
        }
    }
}

/// What the keeper leaves behind when the daemon ends: its heartbeat
/// removed and its lease released, unless the lease was lost, in which
/// case both belong to the daemon that has it now.
fn leave(lost: bool, lease: Lease, state_dir: &std::path::Path) {
    if lost {
        return;
    }
    let path = heartbeat::path(state_dir);
    if heartbeat::read(state_dir).is_none_or(|beat| beat.pid == std::process::id())
        && let Err(error) = std::fs::remove_file(&path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        // `status` then says "not running" once the heartbeat is stale.
        tracing::warn!(path = %path.display(), %error, "could not remove the heartbeat");
    }
    if let Err(error) = lease.release() {
        tracing::warn!(%error, "could not release the lease; it expires on its own");
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread.
fn block_stop_signals_in_this_thread() {
    use nix::sys::signal::Signal;
    // Only fails for an invalid `how`, which this is not.
    let _ = crate::process::block_signals_in_this_thread(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ]);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn keep(
    shared: Arc<Shared>,
    mut lease: Lease,
    state_dir: std::path::PathBuf,
    notifier: Option<Notifier>,
) {
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).ok(),
        signal(SignalKind::interrupt()).ok(),
    );
    if term.is_none() || int.is_none() {
        tracing::warn!("keeper: cannot listen for signals; SIGTERM relies on the loop alone");
    }
    let mut tick = tokio::time::interval(TICK);
    let mut last_renew = Instant::now();
    let mut last_beat: Option<Instant> = None;
    let mut stop_asked: Option<Instant> = None;
    let mut notify_failing = false;
    let mut beat_failing = false;
    let mut stall_said = false;
    loop {
        tokio::select! {
            _ = received(&mut term) => { stop_asked.get_or_insert_with(Instant::now); }
            _ = received(&mut int) => { stop_asked.get_or_insert_with(Instant::now); }
            _ = tick.tick() => {}
        }
        if shared.finish.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        if now.duration_since(last_renew) >= lease.renew_interval()
            && !shared.lease_lost.load(Ordering::Relaxed)
        {
            match lease.renew() {
                Ok(()) => last_renew = now,
                Err(error) => {
                    tracing::error!(%error, "lost the lease, stopping");
                    shared.lease_lost.store(true, Ordering::Relaxed);
                    // The loop stops at its next turn; if it is stuck, the
                    // process ends as after SIGTERM.
                    stop_asked.get_or_insert(now);
                }
            }
        }
        let lost = shared.lease_lost.load(Ordering::Relaxed);
        let (turned_at, turned_at_wall) = {
            let published = lock(&shared.published);
            (published.turned_at, published.turned_at_wall)
        };
        let stalled = now.duration_since(turned_at);
        if stalled >= STALLED_AFTER && !stall_said {
            stall_said = true;
            tracing::warn!(
                stalled_s = stalled.as_secs(),
                "the loop has not turned (a filesystem it reads may not answer); \
                 the lease and heartbeat are kept meanwhile"
            );
        } else if stalled < STALLED_AFTER && stall_said {
            stall_said = false;
            tracing::info!("the loop turns again");
        }
        // Without the lease, the heartbeat and the watchdog are the new
        // holder's to speak for.
        if !lost && last_beat.is_none_or(|at| now.duration_since(at) >= HEARTBEAT_EVERY) {
            last_beat = Some(now);
            let (beat, summary) = {
                let published = lock(&shared.published);
                (published.heartbeat.clone(), published.summary.clone())
            };
            if let Some(mut beat) = beat {
                beat.heartbeat_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
                beat.loop_stalled_since = (stalled >= STALLED_AFTER)
                    .then(|| humantime::format_rfc3339_seconds(turned_at_wall).to_string());
                // Said once per failure streak, not every 2 s.
                match heartbeat::write(&state_dir, &beat) {
                    Err(error) if !beat_failing => {
                        beat_failing = true;
                        tracing::warn!(%error, "cannot write the heartbeat");
                    }
                    Err(error) => tracing::debug!(%error, "cannot write the heartbeat, still"),
                    Ok(()) => {
                        if beat_failing {
                            tracing::info!("the heartbeat is written again");
                        }
                        beat_failing = false;
                    }
                }
            }
            if let Some(n) = &notifier {
                let summary = match stalled >= STALLED_AFTER {
                    true => format!("{summary}; loop stalled for {} s", stalled.as_secs()),
                    false => summary,
                };
                let sent = n.status(&summary).and_then(|()| {
                    match n.watchdog_interval().is_some() && stalled < WATCHDOG_LOOP_LIMIT {
                        true => n.watchdog(),
                        false => Ok(()),
                    }
                });
                // Said once per failure streak, not every 2 s.
                match sent {
                    Err(error) if !notify_failing => {
                        notify_failing = true;
                        tracing::warn!(%error, "cannot notify systemd");
                    }
                    Err(error) => tracing::debug!(%error, "cannot notify systemd, still"),
                    Ok(()) => {
                        if notify_failing {
                            tracing::info!("systemd is notified again");
                        }
                        notify_failing = false;
                    }
                }
            }
        }
        if let Some(asked) = stop_asked {
            let reacted = turned_at > asked;
            let waited = now.duration_since(asked);
            if (!reacted && waited >= STOP_REACT) || waited >= STOP_REACT + STOP_GRACE {
                tracing::warn!(
                    waited_s = waited.as_secs(),
                    "the loop did not stop in time (stuck on a filesystem?); exiting without it"
                );
                leave(lost, lease, &state_dir);
                std::process::exit(0);
            }
        }
    }
    let lost = shared.lease_lost.load(Ordering::Relaxed);
    leave(lost, lease, &state_dir);
}

/// The next delivery of `signal`; never, without a listener.
async fn received(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
