//! Slurm as the liveness oracle: is the job that writes a run still alive,
//! and if not, how did it end? The daemon asks once per poll cycle, for all
//! the jobs it watches at once, from a task of its own: the commands run as
//! `tokio::process` children with a deadline, killed when it passes or when
//! the daemon stops, and the loop uses the last answer meanwhile.
//!
//! # How the question is put
//!
//! `squeue` answers from the controller's memory, which holds every job that
//! is queued or running and, with `--states=all`, also jobs that ended less
//! than `MinJobAge` ago (300 s by default). `sacct` answers from the
//! accounting database, which remembers finished jobs for good and is the
//! only source of exit codes. So one call of [`Slurm::states`] runs at most:
//!
//! ```text
//! squeue --noheader --array --states=all --format=%i|%A|%T --jobs=<ids>
//! sacct  --noheader --parsable2 --allocations --format=JobID,JobIDRaw,State,ExitCode --jobs=<ids>
//! ```
//!
//! the second one only for the ids `squeue` did not list or listed as ended,
//! and each once per chunk of [`MAX_IDS_PER_COMMAND`] ids. Answers are cached
//! for a TTL, failures too: squeue's man page warns that calling it from
//! loops can deny service to `slurmctld`, and a daemon on every login node is
//! exactly such a loop.
//!
//! # Facts checked against Slurm 22.05 (Debian 12 `slurm-client`) and its source
//!
//! - Both commands accept exactly the flags above (run against a dummy
//!   `slurm.conf`: they get as far as contacting the controller/database).
//! - `-j` takes an optional argument, so it is spelled `--jobs=<list>`.
//! - sacct's JobID is `A_T` for array elements and `A+K` for het
//!   components; array index lists are cut at 64 bytes unless
//!   `SLURM_BITSTR_LEN` says otherwise, so it is set to 0 (no limit).
//! - With exactly one id `squeue` asks the controller for that job alone and
//!   fails with `slurm_load_jobs error: Invalid job id specified` (exit 1)
//!   once the job is purged; with several ids it loads all jobs and filters,
//!   so unknown ids are simply absent. Both mean "the controller forgot it".
//! - `squeue --jobs=A` matches a plain job A, every element of array A, every
//!   component of heterogeneous job A, and the array element whose own job
//!   id is A; `--jobs=A_T` matches element T of array A. `%i` prints
//!   `A_T` for elements and `A+K` for het components, `%A` the element's own
//!   job id: that is the `SLURM_JOB_ID` an array task sees, and what W&B's
//!   metadata records, so rows are matched on both.
//! - `SQUEUE_*`/`SACCT_*` environment variables (e.g. `SQUEUE_USERS`,
//!   `SQUEUE_FORMAT2`, `SLURM_CLUSTERS`) filter or reshape the output, so
//!   they are removed from the commands' environment.
//! - Job state words, including the ones that are not in [`JobState`]'s
//!   named variants (`CONFIGURING`, `REQUEUE_HOLD`, `SPECIAL_EXIT`, …):
//!   every one of those is non-final.
//!
//! # Not verified here (no running Slurm yet; check on the test cluster)
//!
//! - The exact `%A` printed for array elements that are still pending and
//!   not yet split off the array record.
//! - `sacct -X` rows for arrays (the element's own id in JobIDRaw; pending
//!   elements folded into one `A_[1-10%2]` row), and whether
//!   `sacct --jobs=<own id of an array element>` finds the element.
//! - That `sacct` without `--duplicates` shows only the newest record of a
//!   requeued job, and what `ExitCode` holds for TIMEOUT, OUT_OF_MEMORY and
//!   CANCELLED (the signal part is assumed to be the signal that killed it).
//! - Whether `sacct --jobs` hides other users' jobs (irrelevant for a
//!   per-user daemon).
//! - Newer Slurm has `squeue --only-job-state`, a lighter RPC; 22.05 lacks it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::{find_program, output_within_async};

/// Ids per `squeue`/`sacct` invocation. Keeps the argument list a few KiB;
/// with more than one id `squeue` loads the whole queue anyway, so chunks
/// only need to be big, not precise.
pub(crate) const MAX_IDS_PER_COMMAND: usize = 1000;

/// How long an answer (or a failure) is reused before Slurm is asked again.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// How long one `squeue`/`sacct` may take before it is killed.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A job's state in Slurm's own words (squeue(1), "JOB STATE CODES").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Running,
    Suspended,
    Completing,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    OutOfMemory,
    NodeFail,
    Preempted,
    BootFail,
    Deadline,
    /// Put back in the queue (`scontrol requeue`, `--requeue` after a node
    /// failure or preemption): it runs again under the same job id.
    Requeued,
    /// Any other word. Every other state Slurm documents is non-final
    /// (`CONFIGURING`, `RESIZING`, `SIGNALING`, `STAGE_OUT`, `STOPPED`,
    /// `REQUEUE_HOLD`, `REQUEUE_FED`, `SPECIAL_EXIT`, `RESV_DEL_HOLD`,
    /// `REVOKED`), so these count as alive.
    Other(String),
}

impl JobState {
    /// Reads a state as `squeue %T` or `sacct State` print it: `RUNNING`,
    /// `CANCELLED by 1000`, or a truncated `CANCELLED+`.
    pub fn parse(text: &str) -> JobState {
        let word = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches('+')
            .to_ascii_uppercase();
        match word.as_str() {
            "PENDING" => JobState::Pending,
            "RUNNING" => JobState::Running,
            "SUSPENDED" => JobState::Suspended,
            "COMPLETING" => JobState::Completing,
            "COMPLETED" => JobState::Completed,
            "FAILED" => JobState::Failed,
            "CANCELLED" => JobState::Cancelled,
            "TIMEOUT" => JobState::Timeout,
            "OUT_OF_MEMORY" => JobState::OutOfMemory,
            "NODE_FAIL" => JobState::NodeFail,
            "PREEMPTED" => JobState::Preempted,
            "BOOT_FAIL" => JobState::BootFail,
            "DEADLINE" => JobState::Deadline,
            "REQUEUED" => JobState::Requeued,
            _ => JobState::Other(word),
        }
    }

    /// The job may still write to its run: it is queued, running, winding
    /// down or going to run again. Only the nine final states say no;
    /// unknown words say yes, because declaring a live run finished is the
    /// one mistake syncd must not make.
    pub fn is_alive(&self) -> bool {
        !matches!(
            self,
            JobState::Completed
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Timeout
                | JobState::OutOfMemory
                | JobState::NodeFail
                | JobState::Preempted
                | JobState::BootFail
                | JobState::Deadline
        )
    }

    /// Slurm's word for the state, e.g. `TIMEOUT` or `OUT_OF_MEMORY`.
    pub fn name(&self) -> &str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Suspended => "SUSPENDED",
            JobState::Completing => "COMPLETING",
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
            JobState::Timeout => "TIMEOUT",
            JobState::OutOfMemory => "OUT_OF_MEMORY",
            JobState::NodeFail => "NODE_FAIL",
            JobState::Preempted => "PREEMPTED",
            JobState::BootFail => "BOOT_FAIL",
            JobState::Deadline => "DEADLINE",
            JobState::Requeued => "REQUEUED",
            JobState::Other(word) => word,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What Slurm says about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobInfo {
    pub state: JobState,
    /// The batch script's exit code, from `sacct`; only for ended jobs.
    pub exit_code: Option<i32>,
    /// The signal that ended the job, if one did; only for ended jobs.
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SlurmError {
    #[error(
        "neither squeue nor sacct is configured, so job states cannot be asked; \
         install Slurm's client commands on this node or turn Slurm liveness off"
    )]
    NoCommands,
    #[error(
        "could not run `{command}`: {source}; check that Slurm's client commands \
         are installed and executable on this node"
    )]
    Spawn {
        command: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error(
        "`{command}` gave no answer within {} and was killed; the Slurm controller \
         or accounting database is slow or unreachable (try `scontrol ping`)",
        humantime::format_duration(*.timeout)
    )]
    Timeout { command: String, timeout: Duration },
    #[error(
        "`{command}` failed ({status}): {stderr}; check that this node can reach the \
         Slurm controller (`scontrol ping`) and, for sacct, that job accounting is enabled"
    )]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// The Slurm client commands to ask, plus the cache that keeps the daemon
/// from asking too often.
#[derive(Debug)]
pub(crate) struct Slurm {
    squeue: Option<PathBuf>,
    sacct: Option<PathBuf>,
    ttl: Duration,
    timeout: Duration,
    max_ids_per_command: usize,
    /// Answers by normalised job; `None` = Slurm knows nothing of it.
    cache: HashMap<JobRef, (Instant, Option<JobInfo>)>,
    /// The last failed query, replayed for the TTL instead of retrying.
    last_failure: Option<(Instant, SlurmError)>,
    /// The last `sacct` failure that did not fail a query (see
    /// [`Slurm::accounting_error`]).
    accounting_error: Option<SlurmError>,
    /// `squeue` failed while `sacct` answered for it (said once per streak).
    squeue_failing: bool,
}

impl Slurm {
    /// Finds `squeue` and `sacct` on `PATH`; `None` when neither is there
    /// (not a Slurm cluster, or the client commands aren't installed).
    pub(crate) fn detect() -> Option<Slurm> {
        Self::detect_in(std::env::var_os("PATH").as_deref())
    }

    fn detect_in(path_var: Option<&OsStr>) -> Option<Slurm> {
        let find = |name: &str| find_program(Path::new(name), path_var);
        let (squeue, sacct) = (find("squeue"), find("sacct"));
        if squeue.is_none() && sacct.is_none() {
            return None;
        }
        Some(Slurm::with_commands(squeue, sacct))
    }

    /// Uses these commands (either may be missing) with the default TTL and
    /// timeout.
    pub(crate) fn with_commands(squeue: Option<PathBuf>, sacct: Option<PathBuf>) -> Slurm {
        Slurm {
            squeue,
            sacct,
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
            max_ids_per_command: MAX_IDS_PER_COMMAND,
            cache: HashMap::new(),
            last_failure: None,
            accounting_error: None,
            squeue_failing: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_ttl(mut self, ttl: Duration) -> Slurm {
        self.ttl = ttl;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Slurm {
        self.timeout = timeout;
        self
    }

    /// The states of these jobs, keyed by the id strings as given.
    ///
    /// Ids may be plain (`12345`), array elements (`12345_7`, or the
    /// element's own id as in its `SLURM_JOB_ID`), het components
    /// (`12345+1`, asked as the whole het job) or steps (`12345.batch`,
    /// asked as their job). A job asked as a whole (an array, a het job)
    /// is alive while any part of it is.
    ///
    /// An id missing from the answer is one Slurm knows nothing about: it
    /// ended so long ago that the controller forgot it and accounting has
    /// no record (or is off), it belongs to another cluster, or it is not
    /// a job id at all. It is not alive.
    ///
    /// When every id was answered less than the TTL ago, the answer comes
    /// from the cache; otherwise all of them are asked again in one batch.
    ///
    /// # Errors
    ///
    /// When Slurm could not tell whether a job is alive: `squeue` failed,
    /// timed out or is missing, and `sacct` could not answer either. The
    /// same error is returned without asking again until the TTL has passed.
    pub(crate) async fn states(
        &mut self,
        job_ids: &[String],
    ) -> Result<HashMap<String, JobInfo>, SlurmError> {
        let now = Instant::now();
        let ttl = self.ttl;
        self.cache
            .retain(|_, (at, _)| now.duration_since(*at) < ttl);

        let wanted: Vec<(&String, JobRef)> = job_ids
            .iter()
            .filter_map(|id| Some((id, JobRef::parse(id)?)))
            .collect();
        // One stale id re-asks the whole set: an invocation costs the same
        // for one id or a thousand (squeue loads the whole queue for more
        // than one), and a set asked together expires together, so a
        // steady set costs one round per TTL instead of one per arrival.
        if wanted.iter().any(|(_, job)| !self.cache.contains_key(job)) {
            let mut seen = HashSet::new();
            let to_ask: Vec<JobRef> = wanted
                .iter()
                .map(|(_, job)| *job)
                .filter(|job| seen.insert(*job))
                .collect();
            if let Some((at, error)) = &self.last_failure
                && now.duration_since(*at) < ttl
            {
                return Err(error.clone());
            }
            match self.ask(&to_ask).await {
                Ok(mut answers) => {
                    self.last_failure = None;
                    for job in to_ask {
                        self.cache.insert(job, (now, answers.remove(&job)));
                    }
                }
                Err(error) => {
                    self.last_failure = Some((now, error.clone()));
                    return Err(error);
                }
            }
        }

        Ok(wanted
            .into_iter()
            .filter_map(|(id, job)| {
                let info = self.cache.get(&job)?.1.clone()?;
                Some((id.clone(), info))
            })
            .collect())
    }

    /// Why the last answer lacks how some ended jobs ended: `sacct` failed
    /// (accounting off, slurmdbd down) while `squeue` had already answered
    /// whether they are alive. Cleared by the next `sacct` that succeeds.
    pub(crate) fn accounting_error(&self) -> Option<&SlurmError> {
        self.accounting_error.as_ref()
    }

    async fn ask(&mut self, jobs: &[JobRef]) -> Result<HashMap<JobRef, JobInfo>, SlurmError> {
        if self.squeue.is_none() && self.sacct.is_none() {
            return Err(SlurmError::NoCommands);
        }
        let mut answers = HashMap::new();
        for chunk in jobs.chunks(self.max_ids_per_command.max(1)) {
            self.ask_chunk(chunk, &mut answers).await?;
        }
        Ok(answers)
    }

    async fn ask_chunk(
        &mut self,
        jobs: &[JobRef],
        answers: &mut HashMap<JobRef, JobInfo>,
    ) -> Result<(), SlurmError> {
        let id_list = jobs
            .iter()
            .map(JobRef::to_string)
            .collect::<Vec<_>>()
            .join(",");

        // squeue first: it is the controller's current view, and for a
        // requeued job it shows the new PENDING life, not the old ending.
        let squeue = match &self.squeue {
            Some(program) => {
                let args = [
                    "--noheader",
                    "--array",
                    "--states=all",
                    "--format=%i|%A|%T",
                    &format!("--jobs={id_list}"),
                ];
                match run(program, &args, self.timeout).await {
                    Ok(stdout) => Ok(parse_rows(&stdout, 3)),
                    // A single purged id: the controller's way to say "gone".
                    Err(SlurmError::Failed { stderr, .. })
                        if stderr.contains("Invalid job id specified") =>
                    {
                        Ok(Vec::new())
                    }
                    Err(error) => Err(error),
                }
            }
            None => Ok(Vec::new()),
        };
        let squeue_answered = self.squeue.is_some() && squeue.is_ok();
        if squeue_answered && self.squeue_failing {
            self.squeue_failing = false;
            tracing::info!("squeue answers again");
        }
        let squeue_rows = squeue.as_deref().unwrap_or_default();

        // sacct for the rest, and for ended jobs' exit codes.
        let mut for_sacct = Vec::new();
        for job in jobs {
            match best_row(squeue_rows, job) {
                Some(row) if row.state.is_alive() => {
                    answers.insert(*job, row.info());
                }
                Some(row) => {
                    answers.insert(*job, row.info());
                    for_sacct.push(*job);
                }
                None => for_sacct.push(*job),
            }
        }
        if for_sacct.is_empty() {
            return Ok(());
        }
        let Some(program) = &self.sacct else {
            // No accounting to ask: what squeue said (or didn't) is all.
            return squeue.map(|_| ());
        };
        let id_list = for_sacct
            .iter()
            .map(JobRef::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let args = [
            "--noheader",
            "--parsable2",
            "--allocations",
            "--format=JobID,JobIDRaw,State,ExitCode",
            &format!("--jobs={id_list}"),
        ];
        let sacct_rows = match run(program, &args, self.timeout).await {
            Ok(stdout) => {
                if self.accounting_error.take().is_some() {
                    tracing::info!("sacct answers again; exit codes of ended jobs are known again");
                }
                parse_rows(&stdout, 4)
            }
            // squeue answered, so liveness is known: a job it does not list
            // has left the controller and is over; sacct would only have
            // said how it ended. Said once until sacct answers again, since
            // the question comes back every poll.
            Err(error) if squeue_answered => {
                if self.accounting_error.is_none() {
                    tracing::warn!(
                        %error,
                        jobs = for_sacct.len(),
                        "sacct failed: jobs that ended are finalized without their exit code \
                         until it answers (squeue still says which jobs are alive)"
                    );
                }
                self.accounting_error = Some(error);
                return Ok(());
            }
            // Neither could say; squeue's error is the root cause if it had one.
            Err(error) => return Err(squeue.err().unwrap_or(error)),
        };
        // sacct stood in for a squeue that failed: liveness now rests on
        // accounting, which lags the controller.
        if let Err(error) = &squeue
            && !self.squeue_failing
        {
            self.squeue_failing = true;
            tracing::warn!(%error, "squeue failed; job states come from sacct until it answers");
        }
        for job in for_sacct {
            let Some(row) = best_row(&sacct_rows, &job) else {
                continue;
            };
            match answers.get_mut(&job) {
                // The controller's state is fresher than accounting's; sacct
                // only adds how the job ended.
                Some(info) => {
                    if !row.state.is_alive() {
                        info.exit_code = row.exit_code;
                        info.signal = row.signal;
                    }
                }
                None => {
                    answers.insert(job, row.info());
                }
            }
        }
        Ok(())
    }
}

/// A job id as asked: the job, and for an array element its index.
/// Het offsets and step suffixes are dropped, because liveness is a
/// property of the whole job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct JobRef {
    job: u64,
    task: Option<u32>,
}

impl JobRef {
    /// `None` for anything that is not a job id. Only digits get through,
    /// so an id read from a file a job wrote cannot smuggle a second id or
    /// an option into the command line.
    fn parse(text: &str) -> Option<JobRef> {
        let text = text.trim();
        let text = text.split('.').next()?; // step: 12345.batch, 12345_7.0
        let text = text.split('+').next()?; // het component: 12345+1
        let (job, task) = match text.split_once('_') {
            Some((job, task)) => (job, Some(parse_digits(task)?)),
            None => (text, None),
        };
        Some(JobRef {
            job: parse_digits(job)?,
            task,
        })
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.task {
            Some(task) => write!(f, "{}_{task}", self.job),
            None => write!(f, "{}", self.job),
        }
    }
}

fn parse_digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    // `str::parse` would also take a leading `+`.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One line of `squeue`/`sacct` output.
#[derive(Debug)]
struct Row {
    /// From `%i`/`JobID`: `12345`, `12345_7`, `12345_[1-10%2]`, `12345+1`.
    job: u64,
    tasks: Tasks,
    /// From `%A`/`JobIDRaw`: the job's own id (differs for array elements).
    own_id: Option<u64>,
    state: JobState,
    exit_code: Option<i32>,
    signal: Option<i32>,
}

#[derive(Debug)]
enum Tasks {
    /// Not an array element.
    None,
    /// Inclusive index ranges: `7` or `[1-3,5%2]` (`%2` is a throttle).
    Ranges(Vec<(u32, u32)>),
}

impl Row {
    fn parse(line: &str, fields: usize) -> Option<Row> {
        let parts: Vec<&str> = line.trim().split('|').collect();
        if parts.len() != fields {
            return None; // e.g. a "CLUSTER: name" header
        }
        let id = parts[0].split('.').next()?.split('+').next()?;
        let (job, tasks) = match id.split_once('_') {
            Some((job, tasks)) => (job, Tasks::Ranges(parse_ranges(tasks)?)),
            None => (id, Tasks::None),
        };
        let state = JobState::parse(parts[2]);
        if state.name().is_empty() {
            return None;
        }
        let (exit_code, signal) = match parts.get(3).and_then(|s| s.split_once(':')) {
            Some((code, signal)) => (
                code.trim().parse().ok(),
                signal.trim().parse().ok().filter(|&s: &i32| s != 0),
            ),
            None => (None, None),
        };
        Some(Row {
            job: parse_digits(job)?,
            tasks,
            own_id: parse_digits(parts[1].trim()),
            state,
            exit_code,
            signal,
        })
    }

    fn answers(&self, wanted: &JobRef) -> bool {
        match (wanted.task, &self.tasks) {
            (Some(task), Tasks::Ranges(ranges)) => {
                self.job == wanted.job && ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&task))
            }
            (Some(_), Tasks::None) => false,
            (None, _) => self.job == wanted.job || self.own_id == Some(wanted.job),
        }
    }

    fn info(&self) -> JobInfo {
        let ended = !self.state.is_alive();
        JobInfo {
            state: self.state.clone(),
            exit_code: self.exit_code.filter(|_| ended),
            signal: self.signal.filter(|_| ended),
        }
    }
}

fn parse_rows(stdout: &str, fields: usize) -> Vec<Row> {
    stdout
        .lines()
        .filter_map(|line| Row::parse(line, fields))
        .collect()
}

/// `7` or `[1-3,5%2]` (also `1-3:2` step syntax, taken as the whole range).
fn parse_ranges(text: &str) -> Option<Vec<(u32, u32)>> {
    let text = text.trim_start_matches('[');
    let text = text.split(']').next()?;
    let text = text.split('%').next()?;
    text.split(',')
        .map(|part| {
            let part = part.split(':').next()?;
            match part.split_once('-') {
                Some((lo, hi)) => Some((parse_digits(lo)?, parse_digits(hi)?)),
                None => parse_digits(part).map(|n| (n, n)),
            }
        })
        .collect()
}

/// The row that speaks for `wanted`: an alive one if any (an array or het
/// job is alive while any part is), else the first.
fn best_row<'a>(rows: &'a [Row], wanted: &JobRef) -> Option<&'a Row> {
    let mut matching = rows.iter().filter(|row| row.answers(wanted));
    let first = matching.next()?;
    if first.state.is_alive() {
        return Some(first);
    }
    Some(matching.find(|row| row.state.is_alive()).unwrap_or(first))
}

/// Runs a Slurm command, killing it after `timeout`. Returns its stdout.
async fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<String, SlurmError> {
    let command = describe(program, args);
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // A user's squeue/sacct settings must not filter or reshape the answer.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("SQUEUE_")
            || key_text.starts_with("SACCT_")
            || key_text == "SLURM_CLUSTERS"
        {
            cmd.env_remove(&key);
        }
    }
    // Array index lists are cut at 64 bytes by default (`12345_[1-3,5…`);
    // 0 lifts the limit (squeue's own `--array` sets it the same way).
    cmd.env("SLURM_BITSTR_LEN", "0");
    let output = output_within_async(cmd, timeout)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::TimedOut => SlurmError::Timeout {
                command: command.clone(),
                timeout,
            },
            _ => SlurmError::Spawn {
                command: command.clone(),
                source: Arc::new(source),
            },
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(SlurmError::Failed {
        command,
        status: output.status.to_string(),
        stderr: shorten(&one_line(&String::from_utf8_lossy(&output.stderr)), 1000),
    })
}

/// The command line for error messages, with a long id list cut short.
fn describe(program: &Path, args: &[&str]) -> String {
    let line = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|arg| arg.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    shorten(&line, 300)
}

/// Slurm's multi-line complaints, joined so they fit one log line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of fake `squeue`/`sacct` scripts that print canned
    /// output and append their arguments to `<name>.log`.
    struct FakeSlurm {
        dir: tempfile::TempDir,
    }

    impl FakeSlurm {
        fn new() -> FakeSlurm {
            FakeSlurm {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// Installs `name` printing `stdout` and `stderr`, exiting `code`.
        fn command(&self, name: &str, stdout: &str, stderr: &str, code: i32) -> PathBuf {
            let log = self.dir.path().join(format!("{name}.log"));
            let body = format!(
                "printf '%s\\n' \"$*\" >> '{}'\ncat <<'EOF'\n{stdout}EOF\nprintf '%s' '{stderr}' >&2\nexit {code}\n",
                log.display()
            );
            self.script(name, &body)
        }

        /// Installs `name` with this shell body.
        fn script(&self, name: &str, body: &str) -> PathBuf {
            let source = self.dir.path().join(format!("{name}.src"));
            let target = self.dir.path().join(name);
            std::fs::write(&source, format!("#!/bin/sh\n{body}")).unwrap();
            // Another test thread forking while this process holds the
            // script open for writing would make exec fail with ETXTBSY;
            // `install` writes the executable in its own process instead.
            let status = Command::new("install")
                .arg("-m")
                .arg("0755")
                .arg(&source)
                .arg(&target)
                .status()
                .unwrap();
            assert!(status.success());
            target
        }

        /// The argument lines each invocation of `name` logged.
        fn calls(&self, name: &str) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .map(|log| log.lines().map(str::to_string).collect())
                .unwrap_or_default()
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn state_of(answer: &HashMap<String, JobInfo>, id: &str) -> JobState {
        answer[id].state.clone()
    }

    #[tokio::test]
    async fn running_pending_and_requeued_jobs_are_alive_and_need_no_sacct() {
        let fake = FakeSlurm::new();
        let squeue = fake.command(
            "squeue",
            "100|100|RUNNING\n101|101|PENDING\n102|102|REQUEUED\n103|103|REQUEUE_HOLD\n",
            "",
            0,
        );
        let sacct = fake.command("sacct", "", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let answer = slurm
            .states(&ids(&["100", "101", "102", "103"]))
            .await
            .unwrap();

        assert_eq!(state_of(&answer, "100"), JobState::Running);
        assert_eq!(state_of(&answer, "101"), JobState::Pending);
        assert_eq!(state_of(&answer, "102"), JobState::Requeued);
        assert_eq!(
            state_of(&answer, "103"),
            JobState::Other("REQUEUE_HOLD".into())
        );
        assert!(answer.values().all(|info| info.state.is_alive()));
        assert!(answer.values().all(|info| info.exit_code.is_none()));
        assert_eq!(
            fake.calls("squeue"),
            ["--noheader --array --states=all --format=%i|%A|%T --jobs=100,101,102,103"]
        );
        assert!(fake.calls("sacct").is_empty());
    }

    #[tokio::test]
    async fn ended_jobs_come_from_sacct_with_exit_code_and_signal() {
        let fake = FakeSlurm::new();
        // squeue knows none of them any more (several ids: no error).
        let squeue = fake.command("squeue", "", "", 0);
        let sacct = fake.command(
            "sacct",
            "200|200|COMPLETED|0:0\n\
             201|201|TIMEOUT|0:15\n\
             202|202|CANCELLED by 1000|0:15\n\
             203|203|OUT_OF_MEMORY|0:125\n\
             204|204|NODE_FAIL|1:0\n\
             205|205|PREEMPTED|0:15\n\
             206|206|FAILED|3:0\n\
             207|207|REQUEUED|0:0\n",
            "",
            0,
        );
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));
        let all = ["200", "201", "202", "203", "204", "205", "206", "207"];

        let answer = slurm.states(&ids(&all)).await.unwrap();

        let expect = |id: &str, state: JobState, code: i32, signal: Option<i32>| {
            let info = &answer[id];
            assert_eq!(info.state, state, "{id}");
            assert_eq!(info.exit_code, Some(code), "{id}");
            assert_eq!(info.signal, signal, "{id}");
            assert!(!info.state.is_alive(), "{id}");
        };
        expect("200", JobState::Completed, 0, None);
        expect("201", JobState::Timeout, 0, Some(15));
        expect("202", JobState::Cancelled, 0, Some(15));
        expect("203", JobState::OutOfMemory, 0, Some(125));
        expect("204", JobState::NodeFail, 1, None);
        expect("205", JobState::Preempted, 0, Some(15));
        expect("206", JobState::Failed, 3, None);
        // A requeued job in accounting will run again.
        assert_eq!(answer["207"].state, JobState::Requeued);
        assert!(answer["207"].state.is_alive());
        assert_eq!(answer["207"].exit_code, None);

        assert_eq!(fake.calls("squeue").len(), 1);
        assert_eq!(
            fake.calls("sacct"),
            [
                "--noheader --parsable2 --allocations --format=JobID,JobIDRaw,State,ExitCode \
              --jobs=200,201,202,203,204,205,206,207"
            ]
        );
    }

    #[tokio::test]
    async fn squeue_state_of_an_ended_job_wins_and_sacct_adds_the_exit_code() {
        let fake = FakeSlurm::new();
        // Still in the controller's memory (MinJobAge), accounting lags.
        let squeue = fake.command("squeue", "300|300|TIMEOUT\n301|301|RUNNING\n", "", 0);
        let sacct = fake.command("sacct", "300|300|RUNNING|0:15\n", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let answer = slurm.states(&ids(&["300", "301"])).await.unwrap();

        assert_eq!(answer["300"].state, JobState::Timeout);
        assert_eq!(answer["300"].exit_code, None, "sacct's row was not final");
        assert_eq!(answer["301"].state, JobState::Running);
        assert_eq!(fake.calls("sacct").len(), 1);
        assert!(fake.calls("sacct")[0].ends_with("--jobs=300"));
    }

    #[tokio::test]
    async fn array_elements_report_their_own_state() {
        let fake = FakeSlurm::new();
        // Element 1 runs under its own id 512; 2 and 3 are pending.
        let squeue = fake.command(
            "squeue",
            "500_1|512|RUNNING\n500_2|500|PENDING\n500_3|500|PENDING\n",
            "",
            0,
        );
        let sacct = fake.command(
            "sacct",
            "500_4|513|COMPLETED|0:0\n500_5|514|FAILED|2:0\n600_[1-4%2]|600|PENDING|0:0\n",
            "",
            0,
        );
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let answer = slurm
            .states(&ids(&[
                "500_1", "500_2", "500_4", "500_5", "512", "513", "600_3", "500_9",
            ]))
            .await
            .unwrap();

        assert_eq!(state_of(&answer, "500_1"), JobState::Running);
        assert_eq!(state_of(&answer, "500_2"), JobState::Pending);
        assert_eq!(state_of(&answer, "500_4"), JobState::Completed);
        assert_eq!(state_of(&answer, "500_5"), JobState::Failed);
        assert_eq!(answer["500_5"].exit_code, Some(2));
        // An element's own job id (its SLURM_JOB_ID) finds the same row.
        assert_eq!(state_of(&answer, "512"), JobState::Running);
        assert_eq!(state_of(&answer, "513"), JobState::Completed);
        // A pending array folded into one accounting row still counts.
        assert_eq!(state_of(&answer, "600_3"), JobState::Pending);
        assert!(!answer.contains_key("500_9"));
        assert!(
            fake.calls("squeue")[0].ends_with("--jobs=500_1,500_2,500_4,500_5,512,513,600_3,500_9")
        );
    }

    #[tokio::test]
    async fn a_whole_array_or_het_job_is_alive_while_any_part_is() {
        let fake = FakeSlurm::new();
        let squeue = fake.command(
            "squeue",
            "700_1|700|COMPLETED\n700_2|701|RUNNING\n800+0|800|COMPLETING\n800+1|801|RUNNING\n",
            "",
            0,
        );
        let mut slurm = Slurm::with_commands(Some(squeue), None);

        // Het component and step forms are asked as their job, once.
        let answer = slurm
            .states(&ids(&["700", "800+1", "800.batch", " 800 "]))
            .await
            .unwrap();

        assert_eq!(state_of(&answer, "700"), JobState::Running);
        assert_eq!(state_of(&answer, "800+1"), JobState::Completing);
        assert_eq!(state_of(&answer, "800.batch"), JobState::Completing);
        assert_eq!(state_of(&answer, " 800 "), JobState::Completing);
        assert_eq!(fake.calls("squeue").len(), 1);
        assert!(fake.calls("squeue")[0].ends_with("--jobs=700,800"));
    }

    #[tokio::test]
    async fn ids_unknown_to_both_and_non_ids_are_absent() {
        let fake = FakeSlurm::new();
        let squeue = fake.command("squeue", "", "", 0);
        let sacct = fake.command("sacct", "", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let answer = slurm
            .states(&ids(&["900", "901", "--all", "1,2", "", "+5", "x_1"]))
            .await
            .unwrap();

        assert!(answer.is_empty());
        // Only real ids reach the command line.
        assert!(fake.calls("squeue")[0].ends_with("--jobs=900,901"));
        assert!(fake.calls("sacct")[0].ends_with("--jobs=900,901"));
    }

    #[tokio::test]
    async fn a_single_purged_id_makes_squeue_fail_and_sacct_answers() {
        let fake = FakeSlurm::new();
        let squeue = fake.command(
            "squeue",
            "",
            "slurm_load_jobs error: Invalid job id specified",
            1,
        );
        let sacct = fake.command("sacct", "42|42|COMPLETED|0:0\n", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let answer = slurm.states(&ids(&["42"])).await.unwrap();

        assert_eq!(state_of(&answer, "42"), JobState::Completed);
    }

    #[tokio::test]
    async fn squeue_error_falls_back_to_sacct_for_every_id() {
        let fake = FakeSlurm::new();
        let squeue = fake.command(
            "squeue",
            "",
            "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
            1,
        );
        let sacct = fake.command("sacct", "10|10|RUNNING|0:0\n11|11|COMPLETED|0:0\n", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let answer = slurm.states(&ids(&["10", "11"])).await.unwrap();

        assert_eq!(state_of(&answer, "10"), JobState::Running);
        assert_eq!(state_of(&answer, "11"), JobState::Completed);
        assert!(fake.calls("sacct")[0].ends_with("--jobs=10,11"));
    }

    #[tokio::test]
    async fn both_failing_is_an_error_with_squeues_stderr() {
        let fake = FakeSlurm::new();
        let squeue = fake.command(
            "squeue",
            "",
            "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
            1,
        );
        let sacct = fake.command(
            "sacct",
            "",
            "sacct: error: Slurm accounting storage is disabled",
            1,
        );
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let error = slurm.states(&ids(&["10"])).await.unwrap_err();

        let SlurmError::Failed { stderr, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(stderr.contains("Unable to contact slurm controller"));
        let message = error.to_string();
        assert!(message.contains("squeue"), "{message}");
        assert!(message.contains("scontrol ping"), "{message}");
    }

    #[tokio::test]
    async fn sacct_failing_after_squeue_answered_only_loses_how_jobs_ended() {
        let fake = FakeSlurm::new();
        let squeue = fake.command("squeue", "20|20|RUNNING\n21|21|TIMEOUT\n", "", 0);
        let sacct = fake.command(
            "sacct",
            "",
            "sacct: error: Slurm accounting storage is disabled",
            1,
        );
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));

        let answer = slurm.states(&ids(&["20", "21", "22"])).await.unwrap();

        assert_eq!(state_of(&answer, "20"), JobState::Running);
        assert_eq!(state_of(&answer, "21"), JobState::Timeout);
        assert_eq!(answer["21"].exit_code, None);
        assert!(!answer.contains_key("22"), "gone from the controller");
        let note = slurm.accounting_error().unwrap().to_string();
        assert!(note.contains("accounting storage is disabled"), "{note}");
    }

    /// Every poll asks again: the failure is said once, and so is the end
    /// of it.
    #[tokio::test]
    async fn a_failing_sacct_is_logged_once_until_it_answers_again() {
        let fake = FakeSlurm::new();
        let squeue = fake.command("squeue", "21|21|TIMEOUT\n", "", 0);
        let failing = |fake: &FakeSlurm| {
            fake.command(
                "sacct",
                "",
                "sacct: error: Slurm accounting storage is disabled",
                1,
            )
        };
        let mut slurm =
            Slurm::with_commands(Some(squeue), Some(failing(&fake))).with_ttl(Duration::ZERO);
        let (_guard, log) = crate::telemetry::capture::start();

        for _ in 0..3 {
            slurm.states(&ids(&["21"])).await.unwrap();
        }
        let warned = log.lines_with("sacct failed");
        assert_eq!(warned.len(), 1, "{}", log.text());
        assert!(warned[0].contains("WARN"), "{}", warned[0]);
        assert!(
            warned[0].contains("accounting storage is disabled"),
            "{}",
            warned[0]
        );

        fake.command("sacct", "21|21|TIMEOUT|0:0\n", "", 0);
        slurm.states(&ids(&["21"])).await.unwrap();
        slurm.states(&ids(&["21"])).await.unwrap();
        assert_eq!(
            log.lines_with("sacct answers again").len(),
            1,
            "{}",
            log.text()
        );
        assert!(slurm.accounting_error().is_none());
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_after_the_timeout() {
        let fake = FakeSlurm::new();
        let squeue = fake.script("squeue", "exec sleep 30\n");
        let mut slurm = Slurm::with_commands(Some(squeue.clone()), None)
            .with_timeout(Duration::from_millis(300));

        let started = Instant::now();
        let error = slurm.states(&ids(&["1"])).await.unwrap_err();

        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(error, SlurmError::Timeout { .. }), "{error:?}");
        assert!(error.to_string().contains("300ms"), "{error}");

        // A hanging squeue with accounting available still gets an answer.
        let sacct = fake.command("sacct", "1|1|RUNNING|0:0\n", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct))
            .with_timeout(Duration::from_millis(300));
        assert_eq!(
            slurm.states(&ids(&["1"])).await.unwrap()["1"].state,
            JobState::Running
        );
    }

    #[tokio::test]
    async fn missing_commands() {
        let empty = tempfile::tempdir().unwrap();
        assert!(Slurm::detect_in(Some(empty.path().as_os_str())).is_none());
        assert!(Slurm::detect_in(None).is_none());

        let fake = FakeSlurm::new();
        fake.command("sacct", "", "", 0);
        // Not executable: not a command.
        std::fs::write(fake.dir.path().join("squeue"), "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([empty.path(), fake.dir.path()]).unwrap();
        let slurm = Slurm::detect_in(Some(&path)).unwrap();
        assert_eq!(slurm.squeue, None);
        assert_eq!(slurm.sacct, Some(fake.dir.path().join("sacct")));

        let mut slurm = Slurm::with_commands(Some(empty.path().join("squeue")), None);
        let error = slurm.states(&ids(&["1"])).await.unwrap_err();
        assert!(matches!(error, SlurmError::Spawn { .. }), "{error:?}");

        let mut slurm = Slurm::with_commands(None, None);
        assert!(matches!(
            slurm.states(&ids(&["1"])).await,
            Err(SlurmError::NoCommands)
        ));
        // Nothing to ask, nothing to fail.
        assert!(slurm.states(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn answers_are_cached_for_the_ttl_and_a_new_id_reasks_the_set() {
        let fake = FakeSlurm::new();
        let squeue = fake.command("squeue", "1|1|RUNNING\n2|2|RUNNING\n", "", 0);
        let sacct = fake.command("sacct", "", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue.clone()), Some(sacct.clone()))
            .with_ttl(Duration::from_secs(3600));

        slurm.states(&ids(&["1", "3"])).await.unwrap();
        slurm.states(&ids(&["3", "1"])).await.unwrap();
        let answer = slurm.states(&ids(&["1", "2", "3"])).await.unwrap();

        assert_eq!(answer.len(), 2);
        assert_eq!(fake.calls("squeue").len(), 2);
        assert!(fake.calls("squeue")[1].ends_with("--jobs=1,2,3"));
        // "3" is unknown: remembered as such until the set is asked again.
        assert_eq!(fake.calls("sacct").len(), 2);
        assert!(fake.calls("sacct")[1].ends_with("--jobs=3"));

        let mut uncached = Slurm::with_commands(Some(squeue), Some(sacct)).with_ttl(Duration::ZERO);
        uncached.states(&ids(&["1"])).await.unwrap();
        uncached.states(&ids(&["1"])).await.unwrap();
        assert_eq!(fake.calls("squeue").len(), 4);
    }

    #[tokio::test]
    async fn a_failure_is_replayed_for_the_ttl_without_asking_again() {
        let fake = FakeSlurm::new();
        let squeue = fake.command("squeue", "", "controller down", 1);
        let mut slurm =
            Slurm::with_commands(Some(squeue), None).with_ttl(Duration::from_secs(3600));

        let first = slurm.states(&ids(&["1"])).await.unwrap_err();
        let second = slurm.states(&ids(&["1", "2"])).await.unwrap_err();

        assert_eq!(first.to_string(), second.to_string());
        assert_eq!(fake.calls("squeue").len(), 1);
    }

    #[tokio::test]
    async fn huge_id_lists_are_chunked() {
        let fake = FakeSlurm::new();
        let squeue = fake.command("squeue", "1|1|RUNNING\n5|5|RUNNING\n", "", 0);
        let sacct = fake.command("sacct", "", "", 0);
        let mut slurm = Slurm::with_commands(Some(squeue), Some(sacct));
        slurm.max_ids_per_command = 2;

        let answer = slurm
            .states(&ids(&["1", "2", "3", "4", "5"]))
            .await
            .unwrap();

        assert_eq!(answer.len(), 2);
        assert_eq!(
            fake.calls("squeue")
                .iter()
                .map(|call| call.rsplit(' ').next().unwrap().to_string())
                .collect::<Vec<_>>(),
            ["--jobs=1,2", "--jobs=3,4", "--jobs=5"]
        );
        // Per chunk, sacct only for what squeue did not list.
        assert_eq!(
            fake.calls("sacct")
                .iter()
                .map(|call| call.rsplit(' ').next().unwrap().to_string())
                .collect::<Vec<_>>(),
            ["--jobs=2", "--jobs=3,4"]
        );
    }

    #[test]
    fn state_words() {
        for word in [
            "PENDING",
            "RUNNING",
            "SUSPENDED",
            "COMPLETING",
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
            "REQUEUED",
            "CONFIGURING",
            "SPECIAL_EXIT",
        ] {
            assert_eq!(JobState::parse(word).name(), word);
        }
        assert_eq!(JobState::parse("CANCELLED by 0"), JobState::Cancelled);
        assert_eq!(JobState::parse("CANCELLED+"), JobState::Cancelled);
        assert_eq!(JobState::parse("running"), JobState::Running);
        assert!(JobState::parse("CONFIGURING").is_alive());
        assert!(JobState::parse("COMPLETING").is_alive());
        assert!(!JobState::parse("DEADLINE").is_alive());
        assert_eq!(JobState::Timeout.to_string(), "TIMEOUT");
    }
}
