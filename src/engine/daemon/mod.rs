//! `syncd run`: the loop that finds runs and keeps them uploaded.
//!
//! Every turn ([`Daemon::turn`]) it takes trigger files (uploads now),
//! polls the roots on the fast schedule for active runs and on the slow one
//! for everything else, asks Slurm once for all live runs' jobs, finalizes
//! runs whose job is gone, and hands the runs the scheduler says are ready
//! (`engine::schedule`) to uploads, at most `concurrency` at a time, one
//! per run. When the server cannot be reached it goes offline: no uploads,
//! a probe with capped backoff and jitter, and everything resumes when it
//! answers.
//!
//! The loop itself never waits on a server or on Slurm: uploads, server
//! probes and Slurm queries are tasks that report back on channels, and the
//! loop uses the last answer meanwhile. It does read runs' directories and
//! files itself; so that a mount that stops answering cannot stop the rest,
//! the lease, heartbeat file, watchdog and SIGTERM are kept by the keeper
//! thread (`engine::keeper`), to which the loop publishes its heartbeat.
//!
//! Besides the loop (here): [`slurm_watch`] (what Slurm says of the runs'
//! jobs), [`contact`] (offline and back online), [`report`] (the heartbeat
//! and the summary line), [`index`] (what the settled-run index vouches
//! for a run with, and the start-up check of it).

mod contact;
mod index;
mod report;
mod slurm_watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use contact::probe;
use slurm_watch::SlurmWatch;

use crate::destination::clients::Clients;
use crate::discover::scan::{RootSpec, ScanReport, Scanner};
use crate::discover::trigger::TriggerDirs;
use crate::discover::wandb_files;
use crate::discover::watch::{Accelerator, Change, FsKind, fs_kind};
use crate::engine::heartbeat::{Activity, Heartbeat, SlurmHealth, UNSYNCED_PREFIX};
use crate::engine::job::{Failure, RunJob, RunOutcome, SyncOptions, Verdict};
use crate::engine::keeper::Keeper;
use crate::engine::schedule::{self, Done, Scheduler, State};
use crate::engine::sd_notify::Notifier;
use crate::engine::settled::{FileStamp, SettledRuns};
use crate::engine::settled_index::{self, Loaded};
use crate::engine::slurm::{JobInfo, Slurm, SlurmError};
use crate::ledger::lease::{Lease, LeaseError};
use crate::ledger::{Ledger, Phase, RunLedger};
use crate::naming::NamingRule;
use crate::sink::retry::RetryPolicy;
use crate::sink::wandb::client::Client;
use crate::sink::wandb::ops;
use crate::sink::wandb::upload;
use crate::source::wandb::run as wandb_run;

/// A finished upload: its outcome and the run's ledger entry as stored.
type Finished = (RunOutcome, Option<RunLedger>);

/// A Slurm query's answer, with the `Slurm` (its cache) the task borrowed
/// (`None` if the query panicked: a new one is made).
struct SlurmReply {
    slurm: Option<Slurm>,
    asked: Vec<String>,
    answer: Result<HashMap<String, JobInfo>, SlurmError>,
}

/// A probe's result: whether any server answered, else why not.
type ProbeReply = Result<(), String>;

/// How many discovery problems status lists (the newest).
const MAX_PROBLEMS: usize = 50;

/// How many run directories of the first scan are looked at (and their
/// runs tracked) before the settled ones are put away.
const STARTUP_BATCH: usize = 1000;

/// Live runs are given at most this many uploads a second between them:
/// beyond `LIVE_UPLOADS_PER_SEC × --poll` live runs, each is uploaded once
/// per `live runs / LIVE_UPLOADS_PER_SEC` seconds instead of once per
/// `--poll` (200 live runs: every 20 s), which keeps the daemon's CPU to
/// about what 50 live runs cost. A run that ends, or that `syncd notify`
/// names, still goes at once.
const LIVE_UPLOADS_PER_SEC: u32 = 10;

/// A Slurm query unanswered this long is reported as Slurm not answering
/// (its commands' own deadline is longer).
const SLURM_SLOW: Duration = Duration::from_secs(5);

/// Everything `syncd run` is told.
#[derive(Clone)]
pub(crate) struct DaemonConfig {
    pub roots: Vec<RootSpec>,
    pub state_dir: PathBuf,
    /// Each run's server, key, entity and project (its `.env`, the user's,
    /// the environment, netrc).
    pub targets: Arc<Clients>,
    pub naming: NamingRule,
    /// How often active runs' files are checked and roots' mtimes looked at.
    pub live_poll: Duration,
    /// How often everything (settled runs, full root listings) is checked.
    pub idle_poll: Duration,
    /// How often trigger directories are read.
    pub trigger_poll: Duration,
    pub concurrency: usize,
    /// After Slurm says a job is gone, how long to wait for its exit record
    /// (the file may still be flushing over NFS) before finalizing.
    pub grace: Duration,
    /// For runs without a Slurm job (or without Slurm): finalize when the
    /// newest file has not changed for this long.
    pub quiescence: Duration,
    pub osh_dir: Option<PathBuf>,
    pub lease_ttl: Duration,
    /// Wait for another daemon's lease instead of exiting.
    pub wait_for_lease: bool,
    pub retry: RetryPolicy,
    /// Use `squeue`/`sacct` when they are on PATH.
    pub slurm: bool,
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("roots", &self.roots)
            .field("state_dir", &self.state_dir)
            .field("base_url", &self.targets.default_base_url())
            .finish_non_exhaustive()
    }
}

/// One run as the daemon follows it.
struct Tracked {
    job: RunJob,
    /// Each fragment's run start time (from its run record), for keeping
    /// fragments in order; one per `job.fragments`.
    start_times: Vec<Option<f64>>,
    key: Option<String>,
    /// The client for its server; `None` until resolved (or while
    /// refused: the reason is said when its turn comes, see `target_of`).
    client: Option<Arc<Client>>,
    phase: Phase,
    /// For a run stopped on its settings (a refused `.env`, no key, a key
    /// the server refused): the stamp of its settings files then; when it
    /// changes, the run is tried again.
    settings_stamp: Option<u64>,
    /// The stamp of its settings files (as `settings_stamp`) taken just
    /// before its destination was last resolved: what the settled-run
    /// index vouches for it with.
    resolved_with: Option<u64>,
    /// The entity and project its run record names (for status before
    /// the ledger knows the run).
    named_entity: Option<Box<str>>,
    named_project: Option<Box<str>>,
    slurm_job: Option<String>,
    slurm_state: Option<String>,
    /// When Slurm was first seen to say the job is over.
    gone_since: Option<Instant>,
    verdict: Option<Verdict>,
    ended: bool,
    newest_mtime: Option<SystemTime>,
    /// Acknowledged byte cursor per fragment (one per `job.fragments`),
    /// from the ledger.
    acked: Vec<Option<u64>>,
    /// Each fragment's size when last looked at (one per `job.fragments`),
    /// so that status can say what is behind without the heartbeat
    /// touching a run's disk.
    sizes: Vec<u64>,
    /// The ledger entry as the last upload left it, kept while the run is
    /// active so its next upload neither reads nor parses it again (this
    /// daemon holds the lease: nobody else writes it). Dropped once the
    /// run is settled, to keep memory to the active runs.
    stored: Option<Box<RunLedger>>,
    /// Its job manifest was read since its fragments last changed: read
    /// when an upload begins, not when the run is found (most runs found
    /// at start-up are settled and never uploaded again).
    manifest_read: bool,
}

impl Tracked {
    /// Done on the server and nothing new since: `scheduled` is the run's
    /// state in the scheduler.
    fn settled(&self, scheduled: &State) -> bool {
        matches!(self.phase, Phase::Synced | Phase::Finalized) && !scheduled.pending()
    }

    /// Settled, and nothing pending or to show beyond what the ledger says.
    fn quiet(&self, scheduled: &State) -> bool {
        self.settled(scheduled) && *scheduled == State::Idle
    }
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("cannot start the keeper thread: {0}")]
    Keeper(std::io::Error),
}

/// What the signal handlers ask for.
#[derive(Debug)]
pub(crate) enum Control {
    Stop,
    /// Reload: new settings (or `None` to keep them), and retry stopped runs.
    Reload(Option<Box<DaemonConfig>>),
}

/// How often the loop turns when nothing arrives.
const TICK: Duration = Duration::from_millis(250);

/// Runs until `control` says stop.
pub(crate) async fn run(
    config: DaemonConfig,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), DaemonError> {
    let (done_tx, mut done_rx) = mpsc::channel::<(String, Finished)>(64);
    let (slurm_tx, mut slurm_rx) = mpsc::channel::<SlurmReply>(1);
    let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeReply>(1);
    let replies = Replies {
        done: done_tx,
        slurm: slurm_tx,
        probe: probe_tx,
    };
    let mut daemon = Daemon::start(config, replies).await?;
    loop {
        let mut stopping = false;
        tokio::select! {
            message = control.recv() => match message {
                Some(Control::Reload(new)) => daemon.reload(new),
                Some(Control::Stop) | None => stopping = true,
            },
            Some((id, (outcome, stored))) = done_rx.recv() => daemon.finished(&id, outcome, stored),
            Some(reply) = slurm_rx.recv() => daemon.take_slurm_reply(reply),
            Some(reply) = probe_rx.recv() => daemon.state.take_probe(reply),
            _ = tokio::time::sleep(TICK) => {}
        }
        daemon.keeper.turned();
        // The keeper said why when it lost the lease.
        if stopping || daemon.keeper.lease_lost() {
            break;
        }
        daemon.turn(Instant::now());
    }
    daemon.shut_down(&mut done_rx).await;
    Ok(())
}

/// Where the tasks the loop starts answer.
struct Replies {
    done: mpsc::Sender<(String, Finished)>,
    slurm: mpsc::Sender<SlurmReply>,
    probe: mpsc::Sender<ProbeReply>,
}

/// The loop's own state: what it watches, its clocks and its runs.
struct Daemon {
    config: DaemonConfig,
    ledger: Ledger,
    keeper: Keeper,
    notifier: Option<Notifier>,
    scanner: Scanner,
    accelerator: Accelerator,
    triggers: TriggerDirs,
    /// `None` while a query has it (or when Slurm is not asked at all).
    slurm: Option<Slurm>,
    state: DaemonState,
    replies: Replies,
    started_at: String,
    last_live: Instant,
    last_idle: Instant,
    last_trigger: Instant,
    last_heartbeat: Instant,
    /// Poll again next turn: a newly watched directory may have got files
    /// between its listing and its watch.
    rescan: bool,
    /// The digest of the settings every run is resolved with, which the
    /// settled-run index is written for (`index::setup_digest`).
    setup: u64,
    /// Writing the index failed (said once until it works again).
    index_failed: bool,
    /// How long a live run's appends are batched: `--poll`, longer when
    /// very many runs are live (see [`LIVE_UPLOADS_PER_SEC`]).
    live_interval: Duration,
}

impl Daemon {
    /// Takes the lease, starts the keeper, scans the roots once (the
    /// ledger says what is already done) and sets up the watches.
    async fn start(config: DaemonConfig, replies: Replies) -> Result<Daemon, DaemonError> {
        let lease = acquire_lease(&config).await?;
        let notifier = Notifier::from_env();
        let keeper = Keeper::start(lease, config.state_dir.clone(), notifier.clone())
            .map_err(DaemonError::Keeper)?;
        let ledger = Ledger::open(&config.state_dir)?;
        let uid = crate::process::current_uid();
        let scanner = Scanner::new(config.roots.clone(), uid);
        let triggers = TriggerDirs {
            spool: config.state_dir.join(crate::discover::trigger::SPOOL_DIR),
            osh: config.osh_dir.clone(),
        };
        if let Err(e) = std::fs::create_dir_all(&triggers.spool) {
            warn!(
                path = %triggers.spool.display(),
                error = %e,
                "cannot create the trigger spool {}: {e}; `syncd notify` will not reach this daemon",
                triggers.spool.display()
            );
        }
        let slurm = if config.slurm { Slurm::detect() } else { None };
        let state = DaemonState {
            slurm_health: slurm.as_ref().map(|_| SlurmWatch::default()),
            ..DaemonState::default()
        };
        let now = Instant::now();
        let trigger_poll = config.trigger_poll;
        let setup = index::setup_digest(&config);
        let live_interval = config.live_poll;
        let mut daemon = Daemon {
            config,
            ledger,
            keeper,
            notifier,
            scanner,
            accelerator: Accelerator::new(),
            triggers,
            slurm,
            state,
            replies,
            started_at: now_rfc3339(),
            last_live: now,
            last_idle: now,
            // Both due at the first turn.
            last_trigger: now.checked_sub(trigger_poll).unwrap_or(now),
            last_heartbeat: now.checked_sub(Duration::from_secs(60)).unwrap_or(now),
            rescan: false,
            setup,
            index_failed: false,
            live_interval,
        };
        // Running, before the first scan (which may take a while on a slow
        // filesystem).
        daemon.publish_heartbeat();
        daemon.take_back_settled();
        // The first full scan; the ledger says what is already done. Taken in
        // batches, each batch's settled runs put away before the next, so that
        // a root of 100,000 finished runs never has them all tracked (or even
        // their paths listed) at once.
        let mut full = true;
        loop {
            let report =
                (daemon.scanner).scan_roots_limited(std::mem::take(&mut full), STARTUP_BATCH);
            (daemon.state).absorb(report, &daemon.scanner, &daemon.config, &daemon.ledger);
            daemon
                .state
                .settle_quiet(&mut daemon.scanner, &daemon.ledger);
            if !daemon.scanner.has_unvisited() {
                break;
            }
            // A long first scan is progress, not a stalled loop.
            daemon.keeper.turned();
            daemon.publish_heartbeat();
        }
        for dir in daemon.scanner.wandb_dirs().cloned().collect::<Vec<_>>() {
            match fs_kind(&dir) {
                FsKind::Network(name) => info!(
                    path = %dir.display(),
                    fs = %name,
                    "{}: on {name}, found by polling only",
                    dir.display()
                ),
                _ if daemon.accelerator.watch(&dir) => info!(
                    path = %dir.display(),
                    "{}: local, polled and watched with inotify",
                    dir.display()
                ),
                _ => info!(path = %dir.display(), "{}: found by polling", dir.display()),
            }
        }
        daemon.write_index();
        if let Some(n) = &daemon.notifier
            && let Err(e) = n.ready()
        {
            warn!(error = %e, "cannot tell systemd we are ready: {e}");
        }
        let (known, settled) = (
            daemon.state.runs.len() + daemon.state.settled.len(),
            daemon.state.settled.len(),
        );
        info!(
            roots = daemon.config.roots.len(),
            runs = known,
            settled,
            server = %daemon.config.targets.default_base_url(),
            "syncd run: watching {} root(s), {known} run(s) known ({settled} settled: kept as paths \
             and a stamp, looked at every {}), default server {} (a run's .env may name another)",
            daemon.config.roots.len(),
            humantime::format_duration(daemon.config.idle_poll),
            daemon.config.targets.default_base_url()
        );
        Ok(daemon)
    }

    /// Settled runs the index names whose files, ledger entry and
    /// settings are as they were when it was written are settled again
    /// without being read; the scanner is told their run directories, so
    /// that the first scan passes them by. The rest are found by that scan.
    fn take_back_settled(&mut self) {
        let path = self.config.state_dir.join(settled_index::FILE_NAME);
        let mut check = index::TakeBack::new(&self.config, &self.ledger);
        let (settled, scanner, keeper) = (&mut self.state.settled, &mut self.scanner, &self.keeper);
        let loaded = settled_index::load(&path, self.setup, |run| {
            if !check.still_settled(run) {
                return false;
            }
            settled.settle_vouched(run.wandb_dir, run.packed, run.newest, run.vouch);
            for fragment in &run.fragments {
                if let Some(name) = fragment.parent().and_then(Path::file_name) {
                    scanner.know_run_dir(run.wandb_dir, name);
                }
            }
            // A long start-up is progress, not a stalled loop.
            if settled.len() % 10_000 == 0 {
                keeper.turned();
            }
            true
        });
        match loaded {
            Loaded::Missing => {}
            Loaded::Ignored(why) => info!(
                path = %path.display(),
                "{}: not used ({why}); every run is looked at and the index written again",
                path.display()
            ),
            Loaded::Read { runs, kept } => info!(
                path = %path.display(),
                runs,
                kept,
                "{}: {kept} of {runs} settled run(s) unchanged and taken back as settled; \
                 the others are looked at",
                path.display()
            ),
        }
    }

    /// Writes the settled-run index when a run settled since it was last
    /// written (a failure is said once; the next start-up only takes longer).
    fn write_index(&mut self) {
        if !self.state.settled.changed() {
            return;
        }
        let path = self.config.state_dir.join(settled_index::FILE_NAME);
        match settled_index::write(&path, self.setup, &self.state.settled) {
            Ok(()) => {
                self.state.settled.written();
                self.index_failed = false;
            }
            Err(e) if !self.index_failed => {
                self.index_failed = true;
                warn!(path = %path.display(), error = %e, "cannot write the settled-run index {}: {e}; the next start-up looks at every run", path.display());
            }
            Err(_) => {}
        }
    }

    /// One turn of the loop, after whatever woke it.
    fn turn(&mut self, now: Instant) {
        if now.duration_since(self.last_trigger) >= self.config.trigger_poll {
            self.last_trigger = now;
            self.take_triggers();
        }
        let poll_now = self.take_changes();
        if poll_now || now.duration_since(self.last_live) >= self.config.live_poll {
            self.poll(now);
        }
        self.state.watch_contact(&self.config.targets);
        self.probe_if_due(now);
        self.start_uploads(now);
        // Written by the keeper on its own schedule.
        if now.duration_since(self.last_heartbeat) >= Duration::from_secs(2) {
            self.last_heartbeat = now;
            self.publish_heartbeat();
        }
    }

    /// SIGHUP: new settings (the state directory and lease stay what they
    /// were), and stopped runs are tried again.
    fn reload(&mut self, new: Option<Box<DaemonConfig>>) {
        if let Some(new) = new {
            info!(
                roots = new.roots.len(),
                "SIGHUP: settings reloaded, watching {} root(s)",
                new.roots.len()
            );
            self.scanner.set_roots(new.roots.clone());
            self.state.retarget(&new, &self.ledger);
            let setup = index::setup_digest(&new);
            if setup != self.setup {
                // Settled runs keep the destination they had (as before),
                // which a later start-up must not take as the new one's.
                self.setup = setup;
                self.state.settled.drop_vouches();
            }
            let keep = (self.config.state_dir.clone(), self.config.lease_ttl);
            self.config = *new;
            (self.config.state_dir, self.config.lease_ttl) = keep;
        }
        let retried = self.state.retry_stopped();
        info!(runs = retried, "SIGHUP: retrying stopped runs");
    }

    fn finished(&mut self, id: &str, outcome: RunOutcome, stored: Option<RunLedger>) {
        self.state
            .finished(id, outcome, stored, &self.ledger, &self.config);
    }

    fn take_slurm_reply(&mut self, reply: SlurmReply) {
        if let Some(slurm) = &reply.slurm {
            let accounting = slurm.accounting_error().map(ToString::to_string);
            self.state.take_accounting(accounting);
        }
        self.state.take_slurm_answer(&reply.asked, reply.answer);
        self.slurm = reply.slurm.or_else(Slurm::detect);
    }

    /// Trigger files (`syncd notify`, wandb-osh): their runs are looked at
    /// now and go first.
    fn take_triggers(&mut self) {
        let mut problems = Vec::new();
        for trigger in self.triggers.take(&mut problems) {
            let (files, errors) = wandb_files(std::slice::from_ref(&trigger.target));
            for e in errors {
                warn!(trigger = %trigger.source.display(), error = %e, "trigger {}: {e}", trigger.source.display());
            }
            let mut report = ScanReport::default();
            for file in files {
                if let Some(run_dir) = file.path.parent() {
                    self.scanner.look_at_run_dir(run_dir, &mut report);
                }
                // What `absorb` compares with the ledger's cursor.
                self.scanner.refresh_stamp(&file.path);
                report.changed_files.push(file.path);
            }
            (self.state).absorb(report, &self.scanner, &self.config, &self.ledger);
            self.state.prioritize(&trigger.target);
        }
        // A trigger file that cannot be read or removed comes back every
        // read: said once.
        for p in problems {
            if self.state.note_problem(p.clone()) {
                warn!("{p}");
            }
        }
    }

    /// inotify on local roots: a new run or a writer closing its file is
    /// seen before the next poll. Returns whether to poll now.
    fn take_changes(&mut self) -> bool {
        let changed = self.accelerator.changed();
        let mut poll_now = std::mem::take(&mut self.rescan);
        if changed.is_empty() {
            return poll_now;
        }
        let mut report = ScanReport::default();
        let mut closed = Vec::new();
        for Change {
            path,
            writer_closed,
        } in changed
        {
            if path.extension().is_some_and(|e| e == "wandb") {
                self.scanner.check_files([&path], &mut report);
                if writer_closed {
                    closed.push(path);
                }
            } else if path.is_dir()
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("offline-run-"))
            {
                self.accelerator.watch(&path);
                self.scanner.look_at_run_dir(&path, &mut report);
            } else if path
                .file_name()
                .is_some_and(|n| n == "wandb" || n == ".wandb")
                && path.is_dir()
            {
                // A root's wandb directory appeared: it replaces the root
                // as what is listed, now rather than next poll.
                poll_now = true;
            }
        }
        (self.state).absorb(report, &self.scanner, &self.config, &self.ledger);
        // Its writer is done: the rest goes now, not after the batching
        // interval.
        for path in closed {
            self.state.prioritize(&path);
        }
        poll_now
    }

    /// A poll: the roots and the active runs' files (everything on the
    /// idle schedule), the watches, the settings of stopped runs, Slurm,
    /// and which runs are to be finalized.
    fn poll(&mut self, now: Instant) {
        self.last_live = now;
        let full = now.duration_since(self.last_idle) >= self.config.idle_poll;
        let mut report = self.scanner.scan_roots(full);
        self.state.forget_quiet();
        self.state.settle_quiet(&mut self.scanner, &self.ledger);
        self.scanner
            .check_files(self.state.files_to_check(full), &mut report);
        if full {
            self.last_idle = now;
            // Settled runs whose newest file changed are woken (in
            // `add_file`, by their id).
            let changed = self.state.settled.check(&mut report.syscalls);
            report.changed_files.extend(changed);
        }
        (self.state).absorb(report, &self.scanner, &self.config, &self.ledger);
        self.update_watches();
        if full {
            self.state.recheck_settings(&self.config);
            self.write_index();
        }
        self.ask_slurm();
        self.state.decide_finalization(&self.config);
        self.live_interval = self.state.live_interval(self.config.live_poll);
    }

    /// Watched: the listed directories (where new runs and files appear)
    /// and the active runs' directories (where files close).
    fn update_watches(&mut self) {
        let listed = self
            .scanner
            .wandb_dirs()
            .chain(self.scanner.run_dirs_without_file());
        let active_run_dirs = self
            .state
            .active_runs()
            .filter(|(id, r)| !r.settled(self.state.schedule.state(id)))
            .filter_map(|(_, r)| r.job.fragments.last()?.parent());
        let wanted: HashSet<&Path> = listed
            .map(PathBuf::as_path)
            .chain(active_run_dirs)
            .collect();
        let watching = self.accelerator.watching();
        for dir in &wanted {
            self.accelerator.watch(dir);
        }
        self.accelerator.retain(|dir| wanted.contains(dir));
        // What a newly watched directory got between its listing and its
        // watch is found by scanning once more, next turn.
        self.rescan = self.accelerator.watching() > watching;
    }

    /// One query at a time, as a task: `slurm` comes back with its answer,
    /// and until then the last answer stands.
    fn ask_slurm(&mut self) {
        let Some(ids) = self.state.slurm_question() else {
            return;
        };
        let Some(mut asking) = self.slurm.take() else {
            return;
        };
        self.state.slurm_asked();
        let reply_to = self.replies.slurm.clone();
        // The query runs in a task of its own, watched by this one, so
        // that even a panic in it is answered (else `slurm` would never
        // come back).
        tokio::spawn(async move {
            let query = tokio::spawn(async move {
                let answer = asking.states(&ids).await;
                (asking, ids, answer)
            });
            let reply = match query.await {
                Ok((slurm, asked, answer)) => SlurmReply {
                    slurm: Some(slurm),
                    asked,
                    answer,
                },
                Err(e) => {
                    error!(error = %e, "the Slurm query failed inside syncd: {e}");
                    SlurmReply {
                        slurm: None,
                        asked: Vec::new(),
                        answer: Err(SlurmError::Failed {
                            command: "squeue/sacct".into(),
                            status: "the query failed inside syncd".into(),
                            stderr: e.to_string(),
                        }),
                    }
                }
            };
            if reply_to.send(reply).await.is_err() {
                debug!("a Slurm answer came after the loop ended");
            }
        });
    }

    /// While offline, a probe when its time comes (one at a time).
    fn probe_if_due(&mut self, now: Instant) {
        if self.state.probing || self.state.offline_until.is_none_or(|t| now < t) {
            return;
        }
        self.state.probing = true;
        let clients = self.config.targets.clients();
        let timeout = self.config.retry.timeout;
        let reply_to = self.replies.probe.clone();
        tokio::spawn(async move {
            // Answered even if the probe panics: else `probing` would stay
            // set and no probe would go again.
            let reply = tokio::spawn(probe(clients, timeout))
                .await
                .unwrap_or_else(|e| Err(format!("the probe failed inside syncd: {e}")));
            if reply_to.send(reply).await.is_err() {
                debug!("a probe's answer came after the loop ended");
            }
        });
    }

    /// Hands ready runs to uploads, up to `concurrency` at once (none while
    /// offline).
    fn start_uploads(&mut self, now: Instant) {
        if self.state.offline_until.is_some() {
            return;
        }
        while self.state.schedule.in_flight() < self.config.concurrency.max(1) {
            let Some(id) = self.state.next_ready(now, self.live_interval) else {
                break;
            };
            let Some(client) = self.state.target_of(&id, &self.config, &self.ledger) else {
                continue;
            };
            let Some(run) = self.state.runs.get_mut(&id) else {
                // Queued but no longer followed: a scheduler bug, not a
                // reason to stop every other run.
                error!(run = %id, "{id}: queued but not tracked; dropped from the queue");
                self.state.schedule.stop(&id, "not tracked".into());
                continue;
            };
            if !run.manifest_read {
                run.job.read_job_files();
                run.manifest_read = true;
            }
            let job = run.job.clone();
            let known = run.stored.take().map(|entry| *entry);
            let options = SyncOptions {
                verdict: run.verdict.clone(),
                naming: self.config.naming.clone(),
                ..SyncOptions::default()
            };
            let (ledger, done) = (self.ledger.clone(), self.replies.done.clone());
            debug!(run = %id, "upload starts");
            tokio::spawn(async move {
                let done_with =
                    upload::sync_known_run(Some(&client), &ledger, &options, &job, known, &|_| {})
                        .await;
                if done.send((id, done_with)).await.is_err() {
                    debug!("an upload ended after the loop ended");
                }
            });
        }
    }

    fn publish_heartbeat(&self) {
        self.keeper.publish(
            self.state.heartbeat(&self.config, &self.started_at),
            self.state.summary_line(),
        );
    }

    /// No new work; in-flight uploads get a few seconds to reach a
    /// checkpoint (each step is checkpointed, so abandoning one loses
    /// nothing).
    async fn shut_down(mut self, done_rx: &mut mpsc::Receiver<(String, Finished)>) {
        if let Some(n) = &self.notifier
            && let Err(e) = n.stopping()
        {
            warn!(error = %e, "cannot tell systemd we are stopping: {e}");
        }
        info!(
            uploads = self.state.schedule.in_flight(),
            "stopping: waiting up to 5 s for {} upload(s)",
            self.state.schedule.in_flight()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.state.schedule.in_flight() > 0 && Instant::now() < deadline {
            self.keeper.turned();
            if let Ok(Some((id, (outcome, stored)))) =
                tokio::time::timeout(Duration::from_millis(200), done_rx.recv()).await
            {
                self.finished(&id, outcome, stored);
            }
        }
        if self.state.schedule.in_flight() > 0 {
            warn!(
                uploads = self.state.schedule.in_flight(),
                "stopping with {} upload(s) unfinished; they continue from their last checkpoint next time",
                self.state.schedule.in_flight()
            );
        }
        self.write_index();
        self.keeper.finish();
    }
}

async fn acquire_lease(config: &DaemonConfig) -> Result<Lease, DaemonError> {
    let waits = schedule::lease_wait(config.lease_ttl);
    let mut attempt = 0;
    loop {
        match Lease::acquire(&config.state_dir, config.lease_ttl) {
            // A takeover is logged by the lease itself.
            Ok(lease) => return Ok(lease),
            // Another daemon has it: wait. Anything else (the state
            // directory cannot be written, a bad TTL) will not pass by waiting.
            Err(e @ (LeaseError::Held { .. } | LeaseError::Contended { .. }))
                if config.wait_for_lease =>
            {
                info!(path = %config.state_dir.display(), "{e}; waiting for it");
                tokio::time::sleep(waits.backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[derive(Default)]
struct DaemonState {
    /// Boxed: thousands of runs, most of them settled; a table of boxes
    /// stays small when it grows.
    runs: HashMap<String, Box<Tracked>>,
    /// Which run each `.wandb` file belongs to.
    file_to_run: HashMap<PathBuf, String>,
    /// Which run uploads when.
    schedule: Scheduler<String>,
    /// Offline: no uploads until this instant, then a probe.
    offline_until: Option<Instant>,
    /// Probes that found no server in this outage (for their backoff).
    offline_probes: u32,
    /// The first failure of the current outage, and the newest's reason.
    offline_since: Option<SystemTime>,
    offline_error: Option<String>,
    /// A probe task is out; its answer comes on the probe channel.
    probing: bool,
    /// When the daemon last came back online (or started): a client's
    /// failure older than this is the outage already ridden out.
    online_at: Option<SystemTime>,
    /// The newest answer from any server.
    last_contact: Option<SystemTime>,
    /// `None` when Slurm is not asked.
    slurm_health: Option<SlurmWatch>,
    /// What discovery found wrong (unreadable roots and run directories,
    /// damaged run files, refused trigger files), newest last, each once,
    /// with when: for status.
    problems: VecDeque<String>,
    problems_seen: HashSet<String>,
    foreign_reported: HashSet<PathBuf>,
    /// The last Slurm query succeeded; when not, quiescence decides.
    slurm_answers: bool,
    /// The roots' base directories, one copy shared by their runs.
    root_bases: Vec<Arc<Path>>,
    /// Every run that is not `quiet` (and quiet ones until the next poll):
    /// what the passes of each poll and heartbeat go over, so that their
    /// cost follows the active runs, not every run ever seen.
    active: HashSet<String>,
    /// Settled runs, out of `runs` (and the scanner): a few dozen bytes
    /// each and a stat on the slow schedule, woken when their file changes.
    settled: SettledRuns,
}

impl DaemonState {
    /// Keeps a discovery problem for status (the newest [`MAX_PROBLEMS`]);
    /// `false` when it was already known.
    fn note_problem(&mut self, problem: String) -> bool {
        if !self.problems_seen.insert(problem.clone()) {
            return false;
        }
        let at = humantime::format_rfc3339_seconds(SystemTime::now());
        self.problems.push_back(format!("{at}: {problem}"));
        while self.problems.len() > MAX_PROBLEMS {
            self.problems.pop_front();
        }
        true
    }

    /// Takes a scan's findings: new files join (or start) runs, changed
    /// files mark their run dirty.
    fn absorb(
        &mut self,
        report: ScanReport,
        scanner: &Scanner,
        config: &DaemonConfig,
        ledger: &Ledger,
    ) {
        for problem in report.problems {
            warn!("{problem}");
            self.note_problem(problem);
        }
        for dir in report.foreign {
            if self.foreign_reported.insert(dir.clone()) {
                warn!(
                    path = %dir.display(),
                    "{}: owned by another user; not synced",
                    dir.display()
                );
            }
        }
        for path in report.new_files.into_iter().chain(report.changed_files) {
            let id = match self.file_to_run.get(&path) {
                Some(id) => id.clone(),
                None => match self.add_file(&path, config, ledger) {
                    Some(id) => id,
                    None => continue,
                },
            };
            if let Some(run) = self.runs.get_mut(&id) {
                // Known to the ledger as done, and not grown since: nothing to do
                // (this is what keeps a restart over thousands of runs cheap).
                // As the scan just saw it (not stat'ed again: a live run's
                // file changes every poll); else (a woken settled run's) now.
                let size = match scanner.stamp(&path) {
                    Some(stamp) => stamp.size,
                    None => std::fs::metadata(&path).map_or(u64::MAX, |m| m.len()),
                };
                let at = run.job.fragments.iter().position(|f| *f == path);
                if let Some(known) = at.and_then(|i| run.sizes.get_mut(i))
                    && size != u64::MAX
                {
                    *known = size;
                }
                let acked = at.and_then(|i| run.acked.get(i).copied().flatten());
                if matches!(run.phase, Phase::Synced | Phase::Finalized) && acked == Some(size) {
                    continue;
                }
                // A stopped run is tried again: its files changed.
                run.settings_stamp = None;
                self.active.insert(id.clone());
                run.newest_mtime =
                    run.job
                        .fragments
                        .last()
                        .and_then(|newest| match scanner.stamp(newest) {
                            Some(stamp) => stamp.modified(),
                            None => std::fs::metadata(newest).ok()?.modified().ok(),
                        });
                self.schedule.enqueue(&id);
            }
        }
    }

    /// Registers a newly seen `.wandb` file with its run (same wandb
    /// directory and run id), keeping fragments in start-time order.
    fn add_file(&mut self, path: &Path, config: &DaemonConfig, ledger: &Ledger) -> Option<String> {
        let head = wandb_run::head(path).ok()?;
        let wandb_dir = path.parent()?.parent()?.to_path_buf();
        let id = format!("{}#{}", wandb_dir.display(), head.run_id);
        // A settled run's file changed or it got a new fragment: it is
        // tracked again with all its fragments (its ledger entry is read
        // again as they are added; the cursor decides what is sent).
        if !self.runs.contains_key(&id)
            && let Some(fragments) = self.settled.wake(&wandb_dir, &head.run_id)
        {
            for fragment in fragments.iter().filter(|f| f.as_path() != path) {
                self.add_file(fragment, config, ledger);
            }
        }
        self.file_to_run.insert(path.to_path_buf(), id.clone());
        let found_under = config
            .roots
            .iter()
            .map(RootSpec::base)
            .find(|base| path.starts_with(base))
            .map(|base| self.shared_base(base));
        let run = self.runs.entry(id.clone()).or_insert_with(|| {
            Box::new(Tracked {
                job: RunJob {
                    found_under,
                    ..RunJob::new(head.run_id.clone(), Vec::new())
                },
                start_times: Vec::new(),
                key: None,
                client: None,
                phase: Phase::Queued,
                settings_stamp: None,
                resolved_with: None,
                named_entity: (!head.entity.is_empty()).then(|| head.entity.clone().into()),
                named_project: (!head.project.is_empty()).then(|| head.project.clone().into()),
                slurm_job: None,
                slurm_state: None,
                gone_since: None,
                verdict: None,
                ended: false,
                newest_mtime: None,
                acked: Vec::new(),
                sizes: Vec::new(),
                stored: None,
                manifest_read: false,
            })
        });
        let key = wandb_run::order_key(path, head.start_time);
        let at = run
            .job
            .fragments
            .iter()
            .zip(&run.start_times)
            .take_while(|(f, start)| wandb_run::order_key(f, **start) <= key)
            .count();
        run.job.fragments.insert(at, path.to_path_buf());
        run.start_times.insert(at, head.start_time);
        run.acked.insert(at, None);
        run.sizes.insert(at, 0);
        // A new fragment (a requeued job) reopens a finalized run.
        run.verdict = None;
        run.gone_since = None;
        run.manifest_read = false;
        // A refusal is reported when the run's turn comes (`target_of`).
        let _ = attach_target(run, &config.targets, ledger);
        Some(id)
    }

    /// The client for a run about to be uploaded; a run whose target is
    /// refused is stopped (until its files change or SIGHUP) and said why.
    fn target_of(
        &mut self,
        id: &String,
        config: &DaemonConfig,
        ledger: &Ledger,
    ) -> Option<Arc<Client>> {
        let Some(run) = self.runs.get_mut(id) else {
            // Queued but no longer followed: a scheduler bug, not a reason
            // to stop every other run.
            error!(run = %id, "{id}: queued but not tracked; dropped from the queue");
            self.schedule.stop(id, "not tracked".into());
            return None;
        };
        let error = match &run.client {
            Some(client) => return Some(Arc::clone(client)),
            None => match attach_target(run, &config.targets, ledger) {
                Ok(client) => return Some(client),
                Err(error) => error,
            },
        };
        let error = format!("{error}; {}", settings_retry_hint(config));
        warn!(
            run = %id,
            path = %run.job.run_dir().display(),
            "{}: not uploaded: {error}",
            run.job.run_dir().display()
        );
        run.settings_stamp = Some(settings_stamp(run, &config.targets));
        self.schedule.stop(id, error);
        None
    }

    /// Runs stopped on their settings whose settings files changed are
    /// looked up again and, when they now resolve, queued (on the idle
    /// schedule: a stat per candidate file per stopped run).
    fn recheck_settings(&mut self, config: &DaemonConfig) {
        for id in &self.active {
            let Some(run) = self.runs.get_mut(id) else {
                continue;
            };
            let Some(stamp) = run.settings_stamp else {
                continue;
            };
            let stopped = matches!(self.schedule.state(id), State::Stopped(_));
            if !stopped || settings_stamp(run, &config.targets) == stamp {
                continue;
            }
            run.settings_stamp = None;
            info!(
                run = %id,
                path = %run.job.run_dir().display(),
                "{}: its settings changed, trying it again",
                run.job.run_dir().display()
            );
            // Resolved again when its turn comes (`target_of`).
            run.client = None;
            self.schedule.enqueue(id);
        }
    }

    /// SIGHUP: stopped and backing-off runs go again, at the back of the
    /// queue. Returns how many.
    fn retry_stopped(&mut self) -> usize {
        for id in &self.active {
            if let Some(run) = self.runs.get_mut(id) {
                run.settings_stamp = None;
            }
        }
        self.schedule.retry_stopped()
    }

    /// New settings (SIGHUP): every run's target is looked up again.
    fn retarget(&mut self, config: &DaemonConfig, ledger: &Ledger) {
        for run in self.runs.values_mut() {
            run.client = None;
            // Another target is another ledger entry (the key names it).
            run.stored = None;
            // Read again when its next upload begins.
            run.manifest_read = false;
            // A refusal is reported when the run's turn comes (`target_of`).
            let _ = attach_target(run, &config.targets, ledger);
        }
        // Its new target's ledger may say anything: each is looked at once.
        self.active.extend(self.runs.keys().cloned());
    }

    /// How long a live run's appends are batched with this many runs live:
    /// `poll`, or long enough that they make no more than
    /// [`LIVE_UPLOADS_PER_SEC`] uploads a second between them.
    fn live_interval(&self, poll: Duration) -> Duration {
        live_interval(self.counts().0, poll)
    }

    /// The runs in `active`, with their ids.
    fn active_runs(&self) -> impl Iterator<Item = (&String, &Tracked)> {
        self.active
            .iter()
            .filter_map(|id| self.runs.get(id).map(|r| (id, &**r)))
    }

    /// Quiet runs leave `active` (and the scheduler): from now on only the
    /// full poll looks at them. This is where a run becomes settled.
    fn forget_quiet(&mut self) {
        let (runs, schedule) = (&self.runs, &mut self.schedule);
        self.active.retain(|id| {
            let quiet = runs.get(id).is_none_or(|run| run.quiet(schedule.state(id)));
            !(quiet && schedule.forget(id))
        });
    }

    /// Quiet runs outside `active` (settled, nothing pending, forgotten by
    /// the scheduler) leave memory for [`SettledRuns`]; the scanner forgets
    /// their files too. Their ledger entry stays on disk, read again if the
    /// run is woken.
    fn settle_quiet(&mut self, scanner: &mut Scanner, ledger: &Ledger) {
        let quiet: Vec<String> = (self.runs.iter())
            .filter(|(id, run)| !self.active.contains(*id) && run.quiet(self.schedule.state(id)))
            .map(|(id, _)| id.clone())
            .collect();
        if quiet.is_empty() {
            return;
        }
        for id in quiet {
            if !self.schedule.forget(&id) {
                continue;
            }
            let Some(run) = self.runs.remove(&id) else {
                continue;
            };
            // Each fragment's stamp as the scanner last saw it (the one the
            // run's state was decided on), else as it is now.
            let mut stamps = Vec::with_capacity(run.job.fragments.len());
            let mut unknown = false;
            for fragment in &run.job.fragments {
                self.file_to_run.remove(fragment);
                let stamp = match scanner.forget_file(fragment) {
                    Some(stamp) => FileStamp::from_scan(stamp),
                    None => match std::fs::metadata(fragment) {
                        Ok(meta) => FileStamp::of(&meta),
                        // Looked at again (and woken) on the next slow poll.
                        Err(_) => {
                            unknown = true;
                            FileStamp {
                                size: u64::MAX,
                                mtime_ns: 0,
                            }
                        }
                    },
                };
                stamps.push(stamp);
            }
            let (Some(last), Some(newest)) = (run.job.fragments.last(), stamps.last().copied())
            else {
                continue;
            };
            // As `add_file` names the run: its wandb directory and run id.
            let wandb_dir = last
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new(""));
            let vouch = (!unknown)
                .then(|| {
                    index::vouch(
                        &run.job.id,
                        run.key.as_deref(),
                        run.resolved_with,
                        wandb_dir,
                        &run.job.fragments,
                        &stamps,
                        ledger,
                    )
                })
                .flatten();
            let fragments = &run.job.fragments;
            (self.settled).settle(wandb_dir, &run.job.id, fragments, newest, vouch);
        }
        // Tables sized for the first scan's runs are given back.
        if self.runs.capacity() > 64 && self.runs.len() < self.runs.capacity() / 4 {
            self.runs.shrink_to_fit();
        }
        if self.file_to_run.capacity() > 64
            && self.file_to_run.len() < self.file_to_run.capacity() / 4
        {
            self.file_to_run.shrink_to_fit();
        }
    }

    /// The `.wandb` files a poll stats: every run's newest on a full poll,
    /// the active runs' otherwise.
    fn files_to_check(&self, full: bool) -> Vec<&PathBuf> {
        match full {
            true => self
                .runs
                .values()
                .filter_map(|r| r.job.fragments.last())
                .collect(),
            false => self
                .active_runs()
                .filter(|(id, r)| !r.settled(self.schedule.state(id)))
                .filter_map(|(_, r)| r.job.fragments.last())
                .collect(),
        }
    }

    /// `base` as the one shared copy of it.
    fn shared_base(&mut self, base: PathBuf) -> Arc<Path> {
        if let Some(known) = self.root_bases.iter().find(|b| ***b == *base) {
            return Arc::clone(known);
        }
        let shared: Arc<Path> = Arc::from(base);
        self.root_bases.push(Arc::clone(&shared));
        shared
    }

    /// A triggered run jumps the queue.
    fn prioritize(&mut self, target: &Path) {
        let ids: Vec<String> = match self.file_to_run.get(target) {
            Some(id) => vec![id.clone()],
            None => self
                .runs
                .iter()
                .filter(|(_, r)| {
                    r.job.fragments.iter().any(|f| {
                        f.starts_with(target) || target.starts_with(f.parent().unwrap_or(f))
                    })
                })
                .map(|(id, _)| id.clone())
                .collect(),
        };
        for id in ids {
            self.active.insert(id.clone());
            self.schedule.notify(&id);
        }
    }

    /// The next run to upload, marked as uploading (see
    /// [`Scheduler::next_ready`]).
    fn next_ready(&mut self, now: Instant, live_interval: Duration) -> Option<String> {
        let runs = &self.runs;
        // A run still being written waits for the rest of its interval;
        // one that has ended (or is being finalized) goes at once.
        let still_written = |id: &String| {
            runs.get(id)
                .is_some_and(|run| !run.ended && run.verdict.is_none())
        };
        self.schedule.next_ready(now, live_interval, still_written)
    }

    /// An upload is over: the run takes what its ledger entry says now, and
    /// the scheduler how it went.
    fn finished(
        &mut self,
        id: &str,
        outcome: RunOutcome,
        stored: Option<RunLedger>,
        ledger: &Ledger,
        config: &DaemonConfig,
    ) {
        let id = id.to_string();
        let error = outcome.error.clone().unwrap_or_default();
        let done = match outcome.failure {
            None => Done::Uploaded,
            Some(Failure::Offline) => Done::Offline,
            Some(Failure::Transient) => Done::Failed,
            Some(Failure::Auth | Failure::Config) => {
                Done::Stopped(format!("{error}; {}", settings_retry_hint(config)))
            }
            Some(Failure::Permanent | Failure::Corrupt) => Done::Stopped(error.clone()),
        };
        let wait = match self.schedule.finished(&id, done.clone(), Instant::now()) {
            Ok(wait) => wait,
            Err(e) => {
                error!(run = %id, "{e}; its outcome is taken all the same");
                None
            }
        };
        if let Some(run) = self.runs.get_mut(&id) {
            // Unless a reload sent the run elsewhere while it was uploading
            // (its key names the new target's entry now, read then).
            if run.key.as_deref().is_none_or(|key| key == outcome.key) {
                run.key = Some(outcome.key.clone());
                match stored {
                    Some(entry) => take_entry(run, entry),
                    None => refresh_from_ledger(run, ledger),
                }
            }
            run.settings_stamp = match outcome.failure {
                // A refused key or `.env` is fixed in the settings files.
                Some(Failure::Auth | Failure::Config) => Some(settings_stamp(run, &config.targets)),
                // Not a settings problem: a change of `.env` does not help.
                Some(Failure::Permanent | Failure::Corrupt) => None,
                _ => run.settings_stamp,
            };
        } else {
            warn!(run = %id, "{id}: an upload ended for a run no longer followed");
        }
        match done {
            Done::Uploaded => {
                debug!(run = %id, "upload done");
                // An upload went through: the network is back, whatever a
                // probe still out will say.
                if self.offline_until.is_some() {
                    info!(run = %id, "an upload went through, resuming uploads");
                    self.back_online();
                }
            }
            Done::Offline => self.go_offline(SystemTime::now(), error),
            Done::Stopped(reason) => {
                warn!(run = %outcome.run_id, "{}: stopped: {reason}", outcome.run_id)
            }
            Done::Failed => {
                // Whole seconds: the jitter's nanoseconds say nothing.
                let wait = Duration::from_secs(wait.unwrap_or_default().as_secs());
                warn!(
                    run = %outcome.run_id,
                    error = %error,
                    retry_in = %humantime::format_duration(wait),
                    "{}: failed ({error}), retrying in {}",
                    outcome.run_id,
                    humantime::format_duration(wait)
                );
            }
        }
    }
}

/// How long a live run's appends are batched with `live` runs live.
fn live_interval(live: usize, poll: Duration) -> Duration {
    let live = u32::try_from(live).unwrap_or(u32::MAX);
    poll.max(Duration::from_secs(1) * live / LIVE_UPLOADS_PER_SEC)
}

/// What a run stopped on its settings is told will happen.
fn settings_retry_hint(config: &DaemonConfig) -> String {
    format!(
        "syncd tries it again when one of its .env files or netrc changes (looked at every {}) or on SIGHUP",
        humantime::format_duration(config.idle_poll)
    )
}

/// A stamp of the files a run's destination and key come from: any
/// change to them (written, created, removed) changes it.
fn settings_stamp(run: &Tracked, targets: &Clients) -> u64 {
    let files = targets.settings_files(run.job.run_dir(), &run.job.search_root());
    index::settings_digest(&files, index::mark)
}

/// Resolves where the run goes and, with that, its ledger key; the
/// client, or why the run is refused.
fn attach_target(
    run: &mut Tracked,
    targets: &Clients,
    ledger: &Ledger,
) -> Result<Arc<Client>, String> {
    // Before, so that a file changed while it is read makes the stamp
    // older than the answer, never newer.
    run.resolved_with = Some(settings_stamp(run, targets));
    let target = targets.resolve(run.job.run_dir(), &run.job.search_root());
    run.client = None;
    let target = target.map_err(|e| e.to_string())?;
    run.job.entity = target.entity.clone();
    run.job.project = target.project.clone();
    let (id, first, server) = (&run.job.id, &run.job.fragments[0], target.client.base_url());
    let key = crate::ledger::run_key(id, first, server, None, None);
    // An entry a syncd before fragment identities stored under the path's
    // key is moved to the new key now (this daemon holds the lease), so an
    // upgrade neither re-uploads nor waits for the run's next upload.
    // The legacy key is worked out only when there is no entry under the
    // key: it costs a realpath, and at start-up nearly every run has one.
    run.stored = None;
    let entry = match ledger.load(&key) {
        Ok(None) => {
            let legacy = crate::ledger::legacy_run_key(id, first, server, None, None);
            ledger.load_run(&key, &legacy, true)
        }
        found => found,
    };
    match entry {
        Ok(Some(entry)) => take_entry(run, entry),
        Ok(None) => {}
        // Its upload reads the entry again and says what is wrong with it.
        Err(e) => {
            let error = crate::errors::one_line(&e);
            warn!(run = %run.job.id, key = %key, %error, "{}: cannot read its ledger entry {key}: {error}", run.job.run_dir().display())
        }
    }
    run.key = Some(key);
    run.client = Some(Arc::clone(&target.client));
    Ok(target.client)
}

/// Reads what the last upload recorded: phase, Slurm job, whether the
/// newest fragment has its exit record.
fn refresh_from_ledger(run: &mut Tracked, ledger: &Ledger) {
    run.stored = None;
    let Some(key) = &run.key else { return };
    match ledger.load(key) {
        Ok(Some(entry)) => take_entry(run, entry),
        Ok(None) => {}
        Err(e) => {
            let error = crate::errors::one_line(&e);
            warn!(run = %run.job.id, key = %key, %error, "{}: cannot read its ledger entry {key}: {error}", run.job.run_dir().display())
        }
    }
}

/// Takes what the run's ledger entry says; the entry itself is kept for
/// the next upload while the run is active.
fn take_entry(run: &mut Tracked, entry: RunLedger) {
    run.phase = entry.phase;
    run.acked = run
        .job
        .fragments
        .iter()
        .map(|path| {
            let known = entry
                .fragments
                .iter()
                .find(|f| crate::ledger::same_fragment(&f.path, path));
            known.map(|f| f.cursor)
        })
        .collect();
    run.ended =
        entry.fragments.last().is_some_and(|f| f.exit.is_some()) || entry.acked.complete.is_some();
    let slurm = &entry.state.identity.slurm;
    run.slurm_job = match (slurm.get("array_job_id"), slurm.get("array_task_id")) {
        (Some(array), Some(task)) => Some(format!("{array}_{task}")),
        _ => slurm.get("job_id").cloned(),
    };
    let settled = matches!(
        entry.phase,
        Phase::Synced | Phase::Finalized | Phase::Quarantined
    );
    run.stored = (!settled).then(|| Box::new(entry));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::failed_outcome;

    fn config(state_dir: &Path) -> DaemonConfig {
        DaemonConfig {
            roots: Vec::new(),
            state_dir: state_dir.to_path_buf(),
            targets: Arc::new(
                Clients::new(
                    HashMap::from([("HOME".into(), state_dir.display().to_string())]),
                    RetryPolicy::default(),
                )
                .unwrap(),
            ),
            naming: NamingRule::default(),
            live_poll: Duration::from_secs(1),
            idle_poll: Duration::from_secs(60),
            trigger_poll: Duration::from_secs(1),
            concurrency: 2,
            grace: Duration::from_secs(30),
            quiescence: Duration::from_secs(600),
            osh_dir: None,
            lease_ttl: Duration::from_secs(30),
            wait_for_lease: false,
            retry: RetryPolicy::default(),
            slurm: false,
        }
    }

    #[test]
    fn very_many_live_runs_are_uploaded_less_often_each() {
        let poll = Duration::from_secs(5);
        for (live, every_ms) in [(0, 5000), (50, 5000), (51, 5100), (200, 20_000)] {
            let every = Duration::from_millis(every_ms);
            assert_eq!(live_interval(live, poll), every, "{live}");
        }
        // Fractions of a second too: 3 live runs, each uploaded at most
        // every 0.3 s, not every 0.1 s.
        let fast = Duration::from_millis(100);
        assert_eq!(live_interval(3, fast), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_run_that_is_not_tracked_is_stopped_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, ledger) = (config(tmp.path()), Ledger::open(tmp.path()).unwrap());
        let mut state = DaemonState::default();
        let ghost = "wandb#ghost".to_string();
        state.schedule.enqueue(&ghost);
        let id = state.next_ready(Instant::now(), config.live_poll).unwrap();
        assert!(state.target_of(&id, &config, &ledger).is_none());
        assert!(matches!(state.schedule.state(&ghost), State::Stopped(_)));
        assert_eq!(state.schedule.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_that_ends_for_a_run_not_followed_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, ledger) = (config(tmp.path()), Ledger::open(tmp.path()).unwrap());
        let mut state = DaemonState::default();
        let job = RunJob::new("ghost".into(), vec![tmp.path().join("run-ghost.wandb")]);
        let outcome = failed_outcome(&job, "key".into(), "refused".into());
        state.finished("wandb#ghost", outcome, None, &ledger, &config);
        assert_eq!(state.schedule.in_flight(), 0);
        assert_eq!(state.schedule.queued(), 0);
    }
}
