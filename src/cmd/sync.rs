//! `syncd sync PATH...`: uploads every run under the paths once, sending
//! only what the server does not have yet, `-j` runs at a time.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::{Outcome, PathError, default_wandb_dir};
use crate::cli::SyncArgs;
use crate::config;
use crate::destination::clients::Clients;
use crate::discover;
use crate::engine::job::{
    Failure, Progress, RunJob, RunOutcome, SyncOptions, WouldSend, not_attempted,
};
use crate::ledger::{Ledger, Phase};
use crate::sink::retry::{RetryNotice, RetryObserver, RetryPolicy, observe_retries};
use crate::sink::wandb::client::Client;
use crate::sink::wandb::upload;
use crate::source::wandb::run;

/// Version of the `--json` document.
pub(crate) const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub(crate) struct SyncReport {
    pub schema: u32,
    pub dry_run: bool,
    pub base_url: String,
    pub runs: Vec<RunOutcome>,
    pub errors: Vec<PathError>,
}

pub(crate) fn run(args: SyncArgs) -> anyhow::Result<Outcome> {
    let env = crate::config::ProcessEnv;
    let Some(naming) = super::naming_rule(args.name_template.as_ref(), env) else {
        return Ok(Outcome::Usage);
    };
    let policy = RetryPolicy {
        min_wait: std::time::Duration::from_millis(args.retry_min_ms),
        max_wait: std::time::Duration::from_millis(args.retry_max_ms.max(args.retry_min_ms)),
        max_attempts: args.attempts,
        timeout: args.timeout,
    };
    let targets = Clients::from_process(args.base_url.clone(), policy)?;
    let state_dir = config::state_dir(args.state_dir.clone(), env)?;
    let ledger = Ledger::open(&state_dir)?;
    // Absolute from here on: a relative path's parents (the project
    // directory holding `wandb/` and its `.env`) are part of where the run
    // goes.
    let paths: Vec<PathBuf> = if args.paths.is_empty() {
        vec![default_wandb_dir()]
    } else {
        args.paths.clone()
    }
    .iter()
    .map(|p| crate::project::absolute(p))
    .collect();

    let (files, discover_errors) = discover::wandb_files(&paths);
    let mut errors: Vec<PathError> = discover_errors.iter().map(PathError::from).collect();
    let mut heads = Vec::new();
    for file in files {
        match run::head(&file.path) {
            Ok(head) => heads.push(head),
            Err(e) => errors.push(PathError {
                path: file.path,
                error: format!("cannot read: {e}"),
            }),
        }
    }
    let jobs: Vec<RunJob> = run::group_heads(heads)
        .into_iter()
        .map(|(id, heads)| {
            let mut job = RunJob::new(id, heads.into_iter().map(|h| h.path).collect());
            job.found_under = paths
                .iter()
                .find(|p| job.fragments[0].starts_with(p))
                .map(|p| Arc::from(p.as_path()));
            job.read_job_files();
            job
        })
        .collect();

    // Each run's server, key, entity and project (its `.env`, the user's,
    // the environment, netrc). A dry run resolves them too: it refuses what
    // the real sync refuses, and finds the run's ledger entry by its key.
    let mut planned = Vec::new();
    let mut target_failures = Vec::new();
    for mut job in jobs {
        match targets.resolve(job.run_dir(), &job.search_root()) {
            Ok(target) => {
                // A long wait is said, not sat through in silence.
                let server = target.client.base_url().to_string();
                target
                    .client
                    .on_pause(move |pause| eprintln!("syncd: {server}: {pause}"));
                job.entity = target.entity.clone();
                job.project = target.project.clone();
                planned.push((job, target.client));
            }
            Err(e) => target_failures.push((job, e.to_string())),
        }
    }
    if planned.is_empty() && errors.is_empty() && !target_failures.is_empty() {
        // Nothing can be sent at all: a configuration error, said once per
        // distinct cause.
        let mut said = std::collections::HashSet::new();
        for (_, message) in &target_failures {
            if said.insert(message.clone()) {
                eprintln!("syncd: error: {message}");
            }
        }
        return Ok(Outcome::Usage);
    }
    let options = SyncOptions {
        entity: args.entity.clone(),
        project: args.project.clone(),
        finalize: args.finalize,
        verdict: None,
        stale_after: args.stale_after,
        dry_run: args.dry_run,
        batch_bytes: args.batch_bytes.max(1),
        naming,
    };
    // One worker: the uploads take turns on it (a run's reading yields to
    // its requests under way, see `upload`), and memory stays that of one
    // thread. With two, each thread's allocator arena grew to the batches
    // it had seen (a 300,000-step run peaked at 33 MB instead of 23 MB),
    // for little gain: the work is reading, and requests mostly wait. Two
    // threads sharing one arena (glibc's arena limit) were slower still
    // (the threads contend for its lock) than this one thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut outcomes = runtime.block_on(sync_all(
        ledger,
        options,
        planned,
        usize::from(args.jobs),
        args.json,
    ));
    outcomes.extend(
        target_failures
            .into_iter()
            .map(|(job, message)| not_attempted(&job, message)),
    );

    let report = SyncReport {
        schema: SCHEMA,
        dry_run: args.dry_run,
        base_url: targets.default_base_url(),
        runs: outcomes,
        errors,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_human(&mut out, &report)?;
    }
    let failed = !report.errors.is_empty() || report.runs.iter().any(|r| r.error.is_some());
    Ok(if failed {
        Outcome::SomeFailed
    } else {
        Outcome::Ok
    })
}

async fn sync_all(
    ledger: Ledger,
    options: SyncOptions,
    jobs: Vec<(RunJob, Arc<Client>)>,
    parallel: usize,
    quiet: bool,
) -> Vec<RunOutcome> {
    let bars = Bars::new(jobs.len(), quiet);
    let shared = Arc::new((ledger, options, tokio::sync::Semaphore::new(parallel), bars));
    let mut tasks = tokio::task::JoinSet::new();
    // Which run each task uploads, so that a task that panics is still
    // reported as that run's failure.
    let mut running = std::collections::HashMap::new();
    for (order, (job, client)) in jobs.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let unfinished = not_attempted(&job, String::new());
        let handle = tasks.spawn(async move {
            let (ledger, options, limit, bars) = &*shared;
            let _permit = limit.acquire().await.expect("semaphore never closes");
            let bar = Arc::new(bars.start(&job.id));
            let progress = |p: Progress| bar.update(p);
            let shown = Arc::clone(&bar);
            let observer: RetryObserver = Arc::new(move |notice: &RetryNotice| shown.retry(notice));
            let outcome = observe_retries(
                observer,
                upload::sync_run(Some(&client), ledger, options, &job, &progress),
            )
            .await;
            bars.finish(&bar, &outcome);
            (order, outcome)
        });
        running.insert(handle.id(), (order, unfinished));
    }
    let mut outcomes = join_all(tasks, running).await;
    outcomes.sort_by_key(|(order, _)| *order);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

/// Every task's outcome; a task that panicked (or was cancelled) becomes a
/// failure of its run, taken from `running`, so that it is reported and
/// fails the exit status instead of vanishing from the report.
async fn join_all(
    mut tasks: tokio::task::JoinSet<(usize, RunOutcome)>,
    mut running: std::collections::HashMap<tokio::task::Id, (usize, RunOutcome)>,
) -> Vec<(usize, RunOutcome)> {
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next_with_id().await {
        match done {
            Ok((_, result)) => outcomes.push(result),
            Err(e) => {
                let Some((order, mut outcome)) = running.remove(&e.id()) else {
                    continue;
                };
                let cause = match e.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into()),
                    Err(e) => e.to_string(),
                };
                outcome.error = Some(format!(
                    "syncd failed while uploading this run (a bug; please report it): {cause}"
                ));
                outcome.failure = Some(Failure::Transient);
                outcomes.push((order, outcome));
            }
        }
    }
    outcomes
}

/// A bar per run and a total on a terminal; one plain line per finished
/// run, and per retry, otherwise. A bar that failed stays where it stood.
struct Bars {
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    runs: usize,
    /// Runs ended, and how many of them failed.
    ended: std::sync::Mutex<(usize, usize)>,
}

struct RunBar {
    run_id: String,
    bar: Option<ProgressBar>,
}

impl RunBar {
    fn update(&self, p: Progress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_read);
            // Moving again: whatever a retry said is over.
            bar.set_message("");
        }
    }

    /// What failed and when the next attempt is: on the bar, or as a line.
    fn retry(&self, notice: &RetryNotice) {
        let wait = format!("{:.1}s", notice.wait.as_secs_f64());
        match &self.bar {
            Some(bar) => bar.set_message(format!(
                "{} failed ({}); attempt {} of {}, next in {wait}",
                notice.what,
                short(&notice.error),
                notice.attempt,
                notice.attempts
            )),
            None => eprintln!(
                "{}: {} failed (attempt {} of {}): {}; next attempt in {wait}",
                self.run_id, notice.what, notice.attempt, notice.attempts, notice.error
            ),
        }
    }
}

/// The start of an error, for a progress line.
fn short(error: &str) -> String {
    const MAX: usize = 60;
    if error.chars().count() <= MAX {
        error.to_string()
    } else {
        format!("{}…", error.chars().take(MAX).collect::<String>())
    }
}

impl Bars {
    fn new(runs: usize, quiet: bool) -> Bars {
        if quiet || !std::io::stderr().is_terminal() {
            return Bars {
                multi: None,
                total: None,
                runs,
                ended: Default::default(),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(runs as u64));
        total.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} runs {msg}")
                .expect("template"),
        );
        total.set_prefix("total");
        Bars {
            multi: Some(multi),
            total: Some(total),
            runs,
            ended: Default::default(),
        }
    }

    fn start(&self, run_id: &str) -> RunBar {
        let Some(multi) = &self.multi else {
            return RunBar {
                run_id: run_id.to_string(),
                bar: None,
            };
        };
        let bar = multi.insert_from_back(1, ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}")
                .expect("template"),
        );
        bar.set_prefix(run_id.chars().take(12).collect::<String>());
        RunBar {
            run_id: run_id.to_string(),
            bar: Some(bar),
        }
    }

    /// A run ended: a bar that succeeded is full, one that failed is left
    /// where it stood; the total counts runs synced, so it is full only
    /// when every run was.
    fn finish(&self, bar: &RunBar, outcome: &RunOutcome) {
        let summary = one_line(outcome);
        let failed = outcome.error.is_some();
        let (ended, failures) = {
            let mut ended = self.ended.lock().expect("never poisoned");
            ended.0 += 1;
            ended.1 += usize::from(failed);
            *ended
        };
        match (&bar.bar, &self.total) {
            (Some(bar), Some(total)) => {
                if failed {
                    bar.abandon_with_message(summary);
                } else {
                    bar.finish_with_message(summary);
                    total.inc(1);
                }
                if ended == self.runs {
                    if failures == 0 {
                        total.finish();
                    } else {
                        total.abandon_with_message(format!("{failures} failed"));
                    }
                }
            }
            _ => {
                if self.multi.is_none() && self.total.is_none() {
                    eprintln!("{}: {summary}", outcome.run_id);
                }
            }
        }
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Queued => "queued",
        Phase::Live => "live",
        Phase::Synced => "synced",
        Phase::Finalized => "finalized",
        Phase::Failed => "failed",
        Phase::Quarantined => "quarantined",
    }
}

fn one_line(o: &RunOutcome) -> String {
    match (&o.error, &o.would_send) {
        (Some(e), _) => format!("failed: {e}"),
        (None, Some(would)) => format!("{} ({})", phase_name(o.phase), would_send_text(would)),
        (None, None) => format!(
            "{} ({} history lines, {} sent now)",
            phase_name(o.phase),
            o.history_lines,
            o.history_lines_sent
        ),
    }
}

fn would_send_text(would: &WouldSend) -> String {
    format!(
        "would send {} lines / {} files / {} bytes",
        would.lines, would.files, would.bytes
    )
}

fn write_human(out: &mut impl Write, report: &SyncReport) -> std::io::Result<()> {
    if !report.runs.is_empty() {
        let mut rows = Vec::new();
        let header = [
            "run",
            "state",
            "on server",
            "history",
            if report.dry_run {
                "would send"
            } else {
                "sent now"
            },
            "exit",
            "notes",
        ];
        for o in &report.runs {
            let mut notes: Vec<String> = o.warnings.clone();
            for a in &o.artifacts {
                if let Some(why) = &a.reason {
                    notes.push(format!("artifact {} not uploadable: {why}", a.name));
                } else if a.state != "committed" {
                    notes.push(format!("artifact {}: {}", a.name, a.state));
                }
            }
            if let Some(e) = &o.error {
                notes.insert(0, format!("error: {e}"));
            }
            rows.push(vec![
                o.run_id.clone(),
                phase_name(o.phase).to_string(),
                o.server_path.clone().unwrap_or_else(|| "-".into()),
                o.history_lines.to_string(),
                match &o.would_send {
                    Some(would) => would_send_text(would)
                        .trim_start_matches("would send ")
                        .to_string(),
                    None => o.history_lines_sent.to_string(),
                },
                o.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                notes.join("\n"),
            ]);
        }
        super::write_table(out, &header, rows)?;
    }
    for e in &report.errors {
        writeln!(out, "error: {}", e.error)?;
    }
    let failed = report.runs.iter().filter(|r| r.error.is_some()).count();
    let runs = report.runs.len();
    if report.dry_run {
        let mut total = WouldSend::default();
        for would in report.runs.iter().filter_map(|r| r.would_send.as_ref()) {
            total.lines += would.lines;
            total.files += would.files;
            total.bytes += would.bytes;
        }
        writeln!(
            out,
            "dry run: {} of {runs} run(s) would be synced to {} ({}), {failed} failed; nothing was sent",
            runs - failed,
            report.base_url,
            would_send_text(&total)
        )
    } else {
        writeln!(
            out,
            "{} of {runs} run(s) synced to {}, {failed} failed",
            runs - failed,
            report.base_url
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::RunJob;

    #[tokio::test]
    async fn a_task_that_panics_is_a_failed_run_in_the_report() {
        let mut tasks = tokio::task::JoinSet::new();
        let mut running = std::collections::HashMap::new();
        for (order, id) in ["fine", "bad"].into_iter().enumerate() {
            let job = RunJob::new(id.into(), vec![format!("/r/run-{id}.wandb").into()]);
            let unfinished = not_attempted(&job, String::new());
            let done = not_attempted(&job, "reached".into());
            let handle = tasks.spawn(async move {
                assert_ne!(id, "bad", "boom in {id}");
                (order, done)
            });
            running.insert(handle.id(), (order, unfinished));
        }
        let mut outcomes = join_all(tasks, running).await;
        outcomes.sort_by_key(|(order, _)| *order);
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert_eq!(outcomes[0].1.error.as_deref(), Some("reached"));
        let bad = &outcomes[1].1;
        assert_eq!(bad.run_id, "bad");
        let error = bad.error.as_deref().unwrap();
        assert!(error.contains("boom in bad"), "{error}");
    }
}
