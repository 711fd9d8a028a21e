//! `syncd inspect PATH...`: reads offline runs and reports what each holds
//! and what state it is in, as tables or as one JSON document.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use comfy_table::{Table, presets};
use serde::Serialize;

use super::{Outcome, PathError, default_wandb_dir};
use crate::cli::InspectArgs;
use crate::discover;
use crate::naming::{NamingRule, find_manifest, name_run};
use crate::project::search_root;
use crate::source::wandb::fragment::{
    self, CorruptionReport, FileClass, Fragment, ReadOptions, Writer,
};
use crate::source::wandb::framing::Tail;
use crate::source::wandb::run::{self, Run};
use crate::source::wandb::value::Value;
use crate::source::wandb::views::{ArtifactInfo, FileKind, Policy};

/// Version of the `--json` document; bumped on incompatible changes.
pub(crate) const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub schema: u32,
    pub runs: Vec<RunReport>,
    /// Paths that could not be read, with the reason.
    pub errors: Vec<PathError>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunReport {
    pub run_id: String,
    pub name: Option<String>,
    pub entity: Option<String>,
    pub project: Option<String>,
    pub group: Option<String>,
    pub job_type: Option<String>,
    pub tags: Vec<String>,
    pub notes: Option<String>,
    /// RFC 3339, UTC.
    pub start_time: Option<String>,
    pub resumed: bool,
    pub host: Option<String>,
    pub program: Option<String>,
    pub git: Option<crate::source::wandb::proto::GitRepoRecord>,
    pub slurm_job_id: Option<String>,
    pub slurm: BTreeMap<String, String>,
    pub producer: Option<String>,
    pub class: FileClass,
    pub records: BTreeMap<&'static str, u64>,
    pub history_rows: u64,
    pub last_step: Option<i64>,
    pub events_rows: u64,
    pub console_lines: u64,
    pub exit_code: Option<i32>,
    pub files: Vec<FileReport>,
    pub artifacts: Vec<ArtifactReport>,
    pub alerts: u64,
    pub preempting: bool,
    pub metrics: Vec<String>,
    pub summary: serde_json::Value,
    pub config: serde_json::Value,
    pub fragments: Vec<FragmentReport>,
    pub problems: Vec<String>,
    /// What the run will be called on the server.
    pub naming: NamingReport,
}

/// An artifact the run logged, and where its upload stands in syncd's
/// ledger (`queued` when the ledger has none).
#[derive(Debug, Serialize)]
pub(crate) struct ArtifactReport {
    pub name: String,
    pub kind: String,
    pub entries: usize,
    /// `queued`, `uploading`, `committed` or `not uploadable`.
    pub state: &'static str,
    pub reason: Option<String>,
}

impl From<ArtifactInfo> for ArtifactReport {
    fn from(info: ArtifactInfo) -> ArtifactReport {
        ArtifactReport {
            name: info.name,
            kind: info.kind,
            entries: info.entries,
            state: "queued",
            reason: None,
        }
    }
}

/// The display name and group a run gets on the server: the naming
/// template's when it renders (and the user did not name the run), else the
/// run's own.
#[derive(Debug, Serialize)]
pub(crate) struct NamingReport {
    pub display_name: Option<String>,
    pub group: Option<String>,
    /// The name comes from the template (not the run's own).
    pub from_template: bool,
    /// The job manifest the Slurm facts were also taken from.
    #[serde(with = "crate::paths::serde_opt_path")]
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub(crate) struct FragmentReport {
    #[serde(with = "crate::paths::serde_path")]
    pub path: PathBuf,
    pub size: u64,
    pub class: FileClass,
    pub records: u64,
    pub record_types: BTreeMap<&'static str, u64>,
    pub history_rows: u64,
    pub first_step: Option<i64>,
    pub last_step: Option<i64>,
    pub exit_code: Option<i32>,
    pub start_time: Option<String>,
    pub slurm_job_id: Option<String>,
    /// Offset after the last complete record: where an incremental read resumes.
    pub cursor: u64,
    pub tail: Tail,
    pub corruption: Vec<CorruptionReport>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct FileReport {
    /// Relative to the run's `files/` directory.
    pub path: String,
    pub policy: Policy,
    pub kind: FileKind,
    /// `present`, `missing`, `outside-link` (a symlink, in any component,
    /// leads out of the run directory), `not-a-file` (a named pipe, device,
    /// directory…) or `unreadable`. Only `present` files are uploaded.
    pub on_disk: &'static str,
    /// Why a file that is there will not be uploaded.
    pub refused: Option<String>,
}

pub(crate) fn run(args: InspectArgs) -> anyhow::Result<Outcome> {
    // Absolute, as `syncd sync` takes them: the search for a run's job
    // manifest starts from the run and goes up to the project directory.
    let paths: Vec<PathBuf> = if args.paths.is_empty() {
        vec![default_wandb_dir()]
    } else {
        args.paths.clone()
    }
    .iter()
    .map(|p| crate::project::absolute(p))
    .collect();
    let options = ReadOptions {
        recover: args.recover,
    };
    let env = crate::config::ProcessEnv;
    let Some(naming) = super::naming_rule(args.name_template.as_ref(), env) else {
        return Ok(Outcome::Usage);
    };
    let mut report = inspect(
        &paths,
        options,
        args.stale_after,
        SystemTime::now(),
        &naming,
    );
    if report.runs.iter().any(|r| !r.artifacts.is_empty())
        && let Ok(state_dir) = crate::config::state_dir(None, env)
    {
        artifact_states(&mut report, &state_dir);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_human(&mut out, &report)?;
    }
    let failed =
        !report.errors.is_empty() || report.runs.iter().any(|r| r.class == FileClass::Corrupt);
    Ok(if failed {
        Outcome::SomeFailed
    } else {
        Outcome::Ok
    })
}

/// Fills in the runs' artifacts' states from the ledger under `state_dir`
/// (any server: the entry whose first fragment is the run's).
fn artifact_states(report: &mut Report, state_dir: &Path) {
    let Ok(ledger) = crate::ledger::Ledger::open_existing(state_dir) else {
        return;
    };
    let entries: Vec<_> = ledger
        .all()
        .into_iter()
        .flatten()
        .filter(|e| !e.state.artifacts.is_empty())
        .collect();
    for run in report.runs.iter_mut().filter(|r| !r.artifacts.is_empty()) {
        let Some(first) = run.fragments.first() else {
            continue;
        };
        let Some(entry) = entries.iter().find(|e| {
            e.fragments
                .first()
                .is_some_and(|f| crate::ledger::same_fragment(&f.path, &first.path))
        }) else {
            continue;
        };
        for (shown, status) in run
            .artifacts
            .iter_mut()
            .zip(crate::sink::wandb::artifact::statuses(entry))
        {
            shown.state = status.state;
            shown.reason = status.reason;
            if let Some(why) = &shown.reason {
                run.problems
                    .push(format!("artifact {} is not uploadable: {why}", shown.name));
            }
        }
    }
}

/// Reads every run under `paths`. A newest fragment unmodified for
/// `stale_after` is taken to have lost its writer.
pub(crate) fn inspect(
    paths: &[PathBuf],
    options: ReadOptions,
    stale_after: Duration,
    now: SystemTime,
    naming: &NamingRule,
) -> Report {
    let (files, discover_errors) = discover::wandb_files(paths);
    let mut errors: Vec<PathError> = discover_errors.iter().map(PathError::from).collect();
    let mut fragments = Vec::new();
    for file in files {
        match fragment::read_fragment_leaving_out(
            &file.path,
            options,
            crate::sink::wandb::filestream::leave_out_oversized_values,
        ) {
            Ok(f) => fragments.push(f),
            Err(e) => errors.push(PathError {
                path: file.path,
                error: format!("cannot read: {e}"),
            }),
        }
    }
    let runs = run::group(fragments)
        .into_iter()
        .map(|run| {
            let writer = newest_writer(&run, stale_after, now);
            let mut report = run_report(&run, writer);
            report.naming = naming_report(&run, naming, paths);
            report
        })
        .collect();
    Report {
        schema: SCHEMA,
        runs,
        errors,
    }
}

fn naming_report(run: &Run, rule: &NamingRule, paths: &[PathBuf]) -> NamingReport {
    let identity = run.identity();
    let first = &run.fragments[0].path;
    let run_dir = first.parent().unwrap_or(Path::new("."));
    let found_under = paths.iter().find(|p| first.starts_with(p));
    let manifest = find_manifest(
        run_dir,
        &search_root(run_dir, found_under.map(PathBuf::as_path)),
    )
    .inspect_err(|error| {
        tracing::warn!(run_dir = %run_dir.display(), %error, "the job manifest was not read; names are shown without it");
    })
    .ok()
    .flatten();
    // Config keys as the uploader sees them: later fragments continue the
    // earlier ones.
    let mut config = crate::source::wandb::value::Map::new();
    for fragment in &run.fragments {
        config.extend(
            fragment
                .state
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    let naming = name_run(rule, &identity, &config, manifest.as_ref().map(|(_, m)| m));
    NamingReport {
        from_template: naming.display_name.is_some(),
        display_name: naming
            .display_name
            .or_else(|| identity.display_name.clone()),
        group: naming.group.or_else(|| identity.group.clone()),
        manifest: manifest.map(|(path, _)| path),
    }
}

fn newest_writer(run: &Run, stale_after: Duration, now: SystemTime) -> Writer {
    let modified = run.fragments.last().and_then(|f| f.modified);
    match modified.and_then(|m| now.duration_since(m).ok()) {
        Some(age) if age >= stale_after => Writer::Gone,
        // Modified in the future (clock skew on a shared FS) or just now.
        _ if stale_after.is_zero() => Writer::Gone,
        _ => Writer::Alive,
    }
}

fn rfc3339(secs: Option<f64>) -> Option<String> {
    let secs = secs.filter(|s| s.is_finite() && *s >= 0.0)?;
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs);
    Some(humantime::format_rfc3339_micros(time).to_string())
}

fn type_counts(fragment: &Fragment) -> BTreeMap<&'static str, u64> {
    fragment.kinds.iter().map(|(k, n)| (k.name(), *n)).collect()
}

fn run_report(run: &Run, newest_writer: Writer) -> RunReport {
    let identity = run.identity();
    let last = run
        .fragments
        .last()
        .expect("a run has at least one fragment");
    let mut records = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut artifacts = Vec::new();
    let mut metrics: Vec<String> = Vec::new();
    let mut summary = crate::source::wandb::value::Map::new();
    let mut fragments = Vec::new();
    let count = run.fragments.len();
    for (i, fragment) in run.fragments.iter().enumerate() {
        let state = &fragment.state;
        for (kind, n) in type_counts(fragment) {
            *records.entry(kind).or_insert(0) += n;
        }
        let run_dir = fragment.path.parent().unwrap_or(Path::new("."));
        for (path, entry) in &state.files {
            let (on_disk, refused) = file_on_disk(run_dir, path);
            files.insert(
                path.clone(),
                FileReport {
                    path: path.clone(),
                    policy: entry.policy,
                    kind: entry.kind,
                    on_disk,
                    refused,
                },
            );
        }
        artifacts.extend(state.artifacts.iter().cloned());
        for m in &state.metrics {
            if !metrics.contains(m) {
                metrics.push(m.clone());
            }
        }
        // A resumed fragment's summary continues the earlier one's.
        summary.extend(state.summary.iter().map(|(k, v)| (k.clone(), v.clone())));
        let writer = if i + 1 == count {
            newest_writer
        } else {
            Writer::Gone
        };
        fragments.push(FragmentReport {
            path: fragment.path.clone(),
            size: fragment.size,
            class: fragment.classify(writer),
            records: fragment.records,
            record_types: type_counts(fragment),
            history_rows: state.history_rows,
            first_step: state.first_step,
            last_step: state.last_step,
            exit_code: state.exit.map(|e| e.code),
            start_time: rfc3339(state.identity.start_time),
            slurm_job_id: state.identity.slurm_job_id().map(str::to_string),
            cursor: fragment.cursor,
            tail: fragment.tail,
            corruption: fragment.corruption.clone(),
            problems: fragment.problems.clone(),
        });
    }
    let mut problems: Vec<String> = Vec::new();
    for (fragment, report) in run.fragments.iter().zip(&fragments) {
        for p in &report.problems {
            let prefix = if count > 1 {
                format!("{}: ", crate::paths::display(&fragment.path))
            } else {
                String::new()
            };
            problems.push(format!("{prefix}{p}"));
        }
    }
    for file in files.values().filter(|f| f.on_disk != "present") {
        problems.push(match &file.refused {
            Some(why) => format!("files/{} {why} and will not be uploaded", file.path),
            None => format!("files/{} is listed but missing on disk", file.path),
        });
    }
    let class = run.class(newest_writer);
    if class == FileClass::Truncated {
        problems.push("no exit record and the writer is gone: the run was cut off (killed, timed out or crashed)".into());
    }
    RunReport {
        run_id: identity.run_id.clone().unwrap_or_else(|| run.id.clone()),
        name: identity.display_name.clone(),
        entity: identity.entity.clone(),
        project: identity.project.clone(),
        group: identity.group.clone(),
        job_type: identity.job_type.clone(),
        tags: identity.tags.clone(),
        notes: identity.notes.clone(),
        start_time: rfc3339(identity.start_time),
        resumed: identity.resumed,
        host: identity.host.clone(),
        program: identity.program.clone(),
        git: identity.git.clone(),
        slurm_job_id: identity.slurm_job_id().map(str::to_string),
        slurm: identity.slurm.clone(),
        producer: identity.producer.clone(),
        class,
        records,
        history_rows: run.history_rows(),
        last_step: run.fragments.iter().filter_map(|f| f.state.last_step).max(),
        events_rows: run.fragments.iter().map(|f| f.state.events_rows).sum(),
        console_lines: run
            .fragments
            .iter()
            .map(|f| f.state.console.line_count())
            .sum(),
        exit_code: last.state.exit.map(|e| e.code),
        files: files.into_values().collect(),
        artifacts: artifacts.into_iter().map(ArtifactReport::from).collect(),
        alerts: run.fragments.iter().map(|f| f.state.alerts).sum(),
        preempting: run.fragments.iter().any(|f| f.state.preempting),
        metrics,
        summary: Value::Object(summary).to_strict(),
        config: Value::Object(last.state.config.clone()).to_strict(),
        fragments,
        problems,
        naming: NamingReport {
            display_name: None,
            group: None,
            from_template: false,
            manifest: None,
        },
    }
}

/// Whether `files/<rel>` exists and may be uploaded, decided as the upload
/// decides it (by opening it): a file reached through a symlink, in any
/// component, that leads out of the run directory, or one that is not a
/// regular file, is reported with the reason instead (only the run's own
/// data leaves the machine).
fn file_on_disk(run_dir: &Path, rel: &str) -> (&'static str, Option<String>) {
    let path = run_dir.join("files").join(rel);
    if std::fs::symlink_metadata(&path).is_err() {
        return ("missing", None);
    }
    match crate::fs::open_beneath(run_dir, &path) {
        Ok(_) => ("present", None),
        Err(e) => match crate::fs::refusal(&e) {
            Some(refused @ crate::fs::Refused::Outside(_)) => {
                ("outside-link", Some(refused.to_string()))
            }
            Some(refused) => ("not-a-file", Some(refused.to_string())),
            None if e.kind() == std::io::ErrorKind::NotFound => ("missing", None),
            None => ("unreadable", Some(format!("cannot be read ({e})"))),
        },
    }
}

fn write_human(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    for run in &report.runs {
        let mut table = Table::new();
        table.load_preset(presets::NOTHING);
        let dash = || "-".to_string();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(dash);
        table.add_row(vec![
            "run".to_string(),
            format!("{} ({})", run.run_id, run.class.name()),
        ]);
        table.add_row(vec!["name".to_string(), opt(&run.name)]);
        let server_name = match (&run.naming.display_name, &run.naming.group) {
            (name, Some(group)) => format!("{} (group {group})", opt(name)),
            (name, None) => opt(name),
        };
        table.add_row(vec!["name on server".to_string(), server_name]);
        let project = match (&run.entity, &run.project) {
            (Some(e), Some(p)) => format!("{e}/{p}"),
            (None, Some(p)) => p.clone(),
            _ => dash(),
        };
        table.add_row(vec!["project".to_string(), project]);
        let fragment_lines: Vec<String> = run
            .fragments
            .iter()
            .map(|f| {
                format!(
                    "{} ({}, {} bytes)",
                    crate::paths::display(&f.path),
                    f.class.name(),
                    f.size
                )
            })
            .collect();
        table.add_row(vec![
            format!("fragments ({})", run.fragments.len()),
            fragment_lines.join("\n"),
        ]);
        let total: u64 = run.records.values().sum();
        let mut by_type: Vec<_> = run.records.iter().collect();
        by_type.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let by_type: Vec<String> = by_type.iter().map(|(k, n)| format!("{k} {n}")).collect();
        table.add_row(vec![
            "records".to_string(),
            format!("{total}: {}", by_type.join(", ")),
        ]);
        let last_step = run.last_step.map_or_else(dash, |s| s.to_string());
        table.add_row(vec![
            "history".to_string(),
            format!("{} rows, last step {last_step}", run.history_rows),
        ]);
        table.add_row(vec![
            "exit code".to_string(),
            run.exit_code.map_or_else(dash, |c| c.to_string()),
        ]);
        table.add_row(vec!["slurm job".to_string(), opt(&run.slurm_job_id)]);
        if !run.artifacts.is_empty() {
            let lines: Vec<String> = run
                .artifacts
                .iter()
                .map(|a| {
                    let state = match &a.reason {
                        Some(why) => format!("{}: {why}", a.state),
                        None => a.state.to_string(),
                    };
                    format!("{} ({}, {} entries): {state}", a.name, a.kind, a.entries)
                })
                .collect();
            table.add_row(vec!["artifacts".to_string(), lines.join("\n")]);
        }
        let problems = if run.problems.is_empty() {
            dash()
        } else {
            run.problems.join("\n")
        };
        table.add_row(vec!["problems".to_string(), problems]);
        // Cells are padded to the widest; trailing blanks are noise in a pipe.
        for line in table.to_string().lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        writeln!(out)?;
    }
    for error in &report.errors {
        writeln!(out, "error: {}", error.error)?;
    }
    let corrupt = report
        .runs
        .iter()
        .filter(|r| r.class == FileClass::Corrupt)
        .count();
    writeln!(
        out,
        "{} run(s), {} corrupt, {} path(s) with errors",
        report.runs.len(),
        corrupt,
        report.errors.len()
    )
}
