//! `syncd sync PATH...`: uploads every run under the paths once, sending
//! only what the server does not have yet, `-j` runs at a time.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context as _;
use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::Outcome;
use super::inspect::{PathError, default_wandb_dir};
use crate::cli::SyncArgs;
use crate::config;
use crate::discover;
use crate::engine::worker::{self, Progress, RunJob, RunOutcome, SyncOptions};
use crate::ledger::{Ledger, Phase};
use crate::sink::retry::RetryPolicy;
use crate::sink::wandb::client::Client;
use crate::sink::wandb::credentials;
use crate::source::wandb::run;

/// Version of the `--json` document.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub schema: u32,
    pub dry_run: bool,
    pub base_url: String,
    pub runs: Vec<RunOutcome>,
    pub errors: Vec<PathError>,
}

pub fn run(args: SyncArgs) -> anyhow::Result<Outcome> {
    let env = |k: &str| std::env::var(k).ok();
    let base_url = config::wandb_base_url(args.base_url.clone(), env);
    // The key is checked before anything is read, so a missing one costs nothing.
    let key = if args.dry_run {
        None
    } else {
        match credentials::find_api_key(&base_url, env) {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!("syncd: error: {e}");
                return Ok(Outcome::Usage);
            }
        }
    };
    let state_dir = config::state_dir(args.state_dir.clone(), env);
    let ledger = Ledger::open(&state_dir)?;
    let paths = if args.paths.is_empty() {
        vec![default_wandb_dir()]
    } else {
        args.paths.clone()
    };

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
        .map(|(id, heads)| RunJob {
            id,
            fragments: heads.into_iter().map(|h| h.path).collect(),
        })
        .collect();

    let options = SyncOptions {
        entity: args.entity.clone(),
        project: args.project.clone(),
        finalize: args.finalize,
        verdict: None,
        stale_after: args.stale_after,
        dry_run: args.dry_run,
        batch_bytes: args.batch_bytes.max(1),
    };
    let client = match &key {
        Some(key) => {
            let policy = RetryPolicy {
                min_wait: std::time::Duration::from_millis(args.retry_min_ms),
                ..RetryPolicy::default()
            };
            Some(Client::new(&base_url, &key.key, policy)?)
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcomes = runtime.block_on(sync_all(
        client,
        ledger,
        options,
        jobs,
        usize::from(args.jobs),
        args.json,
    ));

    let report = SyncReport {
        schema: SCHEMA,
        dry_run: args.dry_run,
        base_url,
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
    client: Option<Client>,
    ledger: Ledger,
    options: SyncOptions,
    jobs: Vec<RunJob>,
    parallel: usize,
    quiet: bool,
) -> Vec<RunOutcome> {
    let bars = Bars::new(jobs.len(), quiet);
    let shared = Arc::new((
        client,
        ledger,
        options,
        tokio::sync::Semaphore::new(parallel),
        bars,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (order, job) in jobs.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let (client, ledger, options, limit, bars) = &*shared;
            let _permit = limit.acquire().await.expect("semaphore never closes");
            let bar = bars.start(&job.id);
            let progress = |p: Progress| bar.update(p);
            let outcome = worker::sync_run(client.as_ref(), ledger, options, &job, &progress).await;
            bars.finish(bar, &outcome);
            (order, outcome)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(result) => outcomes.push(result),
            Err(e) => eprintln!("syncd: a run's upload task failed: {e}"),
        }
    }
    outcomes.sort_by_key(|(order, _)| *order);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

/// A bar per run and a total on a terminal; one plain line per finished
/// run otherwise.
struct Bars {
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    runs: usize,
}

struct RunBar {
    bar: Option<ProgressBar>,
}

impl RunBar {
    fn update(&self, p: Progress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_read);
        }
    }
}

impl Bars {
    fn new(runs: usize, quiet: bool) -> Bars {
        if quiet || !std::io::stderr().is_terminal() {
            return Bars {
                multi: None,
                total: None,
                runs,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(runs as u64));
        total.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} runs")
                .expect("template"),
        );
        total.set_prefix("total");
        Bars {
            multi: Some(multi),
            total: Some(total),
            runs,
        }
    }

    fn start(&self, run_id: &str) -> RunBar {
        let Some(multi) = &self.multi else {
            return RunBar { bar: None };
        };
        let bar = multi.insert_from_back(1, ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}")
                .expect("template"),
        );
        bar.set_prefix(run_id.chars().take(12).collect::<String>());
        RunBar { bar: Some(bar) }
    }

    fn finish(&self, bar: RunBar, outcome: &RunOutcome) {
        let summary = one_line(outcome);
        match (bar.bar, &self.total) {
            (Some(bar), Some(total)) => {
                bar.finish_with_message(summary);
                total.inc(1);
                if total.position() as usize == self.runs {
                    total.finish();
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
    match &o.error {
        Some(e) => format!("failed: {e}"),
        None => format!(
            "{} ({} history lines, {} sent now)",
            phase_name(o.phase),
            o.history_lines,
            o.history_lines_sent
        ),
    }
}

fn write_human(out: &mut impl Write, report: &SyncReport) -> std::io::Result<()> {
    if !report.runs.is_empty() {
        let mut table = Table::new();
        table.load_preset(presets::UTF8_BORDERS_ONLY);
        // Wrap to the terminal's width instead of running off its edge.
        table.set_content_arrangement(ContentArrangement::Dynamic);
        table.set_header(vec![
            "run",
            "state",
            "on server",
            "history",
            "sent now",
            "exit",
            "notes",
        ]);
        for o in &report.runs {
            let mut notes: Vec<String> = o.warnings.clone();
            if o.artifacts_not_uploaded > 0 {
                notes.push(format!(
                    "{} artifact(s) not uploaded: syncd does not upload artifacts yet",
                    o.artifacts_not_uploaded
                ));
            }
            if let Some(e) = &o.error {
                notes.insert(0, format!("error: {e}"));
            }
            table.add_row(vec![
                o.run_id.clone(),
                phase_name(o.phase).to_string(),
                o.server_path.clone().unwrap_or_else(|| "-".into()),
                o.history_lines.to_string(),
                o.history_lines_sent.to_string(),
                o.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                notes.join("\n"),
            ]);
        }
        writeln!(out, "{table}")?;
    }
    for e in &report.errors {
        writeln!(out, "error: {}", e.error)?;
    }
    let failed = report.runs.iter().filter(|r| r.error.is_some()).count();
    let verb = if report.dry_run {
        "would sync"
    } else {
        "synced"
    };
    writeln!(
        out,
        "{verb} {} run(s) to {}, {failed} failed",
        report.runs.len(),
        report.base_url
    )
}
