//! syncd on a real Slurm cluster: jobs submitted with `sbatch` and the
//! sbatch templates, written offline by the real wandb 0.31.0, uploaded by
//! one `syncd run` that asks the cluster's `squeue` about them.
//!
//! The tests run when `SYNCD_SLURM_CONF` names the `slurm.conf` of a running
//! cluster (`tests/slurm/cluster.sh start`; `scripts/test.sh` starts one and
//! sets it). Without one they print a note and pass, unless
//! `SYNCD_REQUIRE_SLURM=1` says a cluster must be there.
//!
//! The first test to run submits every job at once and watches them all
//! (see [`run_jobs`]): one daemon, one test server, every scenario side by
//! side, so the module takes as long as its slowest job (the time limit,
//! about two minutes) and not the sum. Every test then checks its scenario
//! in what was recorded and in the server's state.
//!
//! Job names are the experiment of syncd's run names; each job's run id is
//! the template's `<cluster>-<job>-<RUN_VERSION>`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{start_daemon, status_json};
use crate::official_sync::wandb_cli;
use crate::support::inspect_json;
use crate::wandb_server::WandbServer;

/// Every job's `RUN_VERSION`: part of its run id, and the manifest's
/// `version` (the training's config has none), so names start `v3-`.
const VERSION: &str = "3";
/// How long the daemon waits for an exit record once Slurm says a job ended.
const GRACE: &str = "3s";
/// The longest the jobs and the uploads may take. The time-limit job ends
/// 60–90 s after it starts; the daemon reuses squeue's answers for 30 s.
const DEADLINE: Duration = Duration::from_secs(300);
/// Tasks of the array job (`--array=0-2`).
const ARRAY_TASKS: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Runs to its end while the daemon uploads it.
    Offline,
    /// Killed at its time limit, without warning.
    Timeout,
    /// Warned with SIGUSR1 before its time limit; finishes its run.
    Usr1,
    /// `scontrol requeue` while it runs: two fragments of one run.
    Requeue,
    /// A job array of three tasks.
    Array,
    /// `scancel` while it runs.
    Scancel,
}

/// One job to submit.
struct Spec {
    scenario: Scenario,
    /// `--job-name`: the experiment in syncd's names, and the template's
    /// directory under `wandb-runs/`.
    name: &'static str,
    template: &'static str,
    train_args: &'static str,
    sbatch: &'static [&'static str],
    /// Started through a Python that exports `WANDB_NAME=<job name>-<job
    /// id>`, as a user naming the run would: syncd keeps that name. The
    /// templates name no run, so without this syncd's naming applies.
    named: bool,
}

const SPECS: [Spec; 6] = [
    Spec {
        scenario: Scenario::Offline,
        name: "e2e-offline",
        template: "wandb-offline.sbatch",
        // 30 s: wandb-core writes the file in 32 KiB blocks, about 85 steps
        // each, so several blocks land while the job runs.
        train_args: "--steps 600 --sleep 0.05",
        sbatch: &["--time=5"],
        named: false,
    },
    Spec {
        scenario: Scenario::Timeout,
        name: "e2e-timeout",
        template: "wandb-offline.sbatch",
        train_args: "--steps 100000 --sleep 0.05",
        // The template asks for USR1 120 s before the limit, which a
        // one-minute job gets at once. SIGURG instead: its default action is
        // to be ignored and the batch shell has no trap for it, so the job
        // runs into its limit unwarned.
        sbatch: &["--time=1", "--signal=B:URG@120"],
        named: true,
    },
    Spec {
        scenario: Scenario::Usr1,
        name: "e2e-usr1",
        template: "wandb-offline.sbatch",
        train_args: "--steps 100000 --sleep 0.05",
        // Slurm checks limits every 30 s and sends the warning at the first
        // check less than `@ + 30 s` before the limit: with @10 that is
        // 20–50 s after the start, one check before the TIMEOUT.
        sbatch: &["--time=1", "--signal=B:USR1@10"],
        named: true,
    },
    Spec {
        scenario: Scenario::Requeue,
        name: "e2e-requeue",
        template: "wandb-requeue.sbatch",
        train_args: "--steps 300 --sleep 0.1",
        sbatch: &["--time=5"],
        named: true,
    },
    Spec {
        scenario: Scenario::Array,
        name: "e2e-array",
        template: "wandb-array.sbatch",
        train_args: "--steps 40 --sleep 0.1",
        sbatch: &["--time=5", "--array=0-2"],
        named: false,
    },
    Spec {
        scenario: Scenario::Scancel,
        name: "e2e-scancel",
        template: "wandb-offline.sbatch",
        train_args: "--steps 100000 --sleep 0.05",
        sbatch: &["--time=5"],
        named: true,
    },
];

/// One run a job writes (an array writes one per task).
struct Unit {
    spec: &'static Spec,
    /// What `sbatch` printed: the job's id, or the array's.
    job_id: String,
    /// The job as squeue's `%i` and syncd's status name it: `A_T` for an
    /// array task.
    job: String,
    /// The job's `WANDB_DIR` (it holds `wandb/` and the manifest).
    dir: PathBuf,
    run_id: String,
    /// The job's output file.
    out: PathBuf,
}

/// What the watch saw of one unit.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Slurm states as they changed, with the seconds since the first submit.
    states: Vec<(String, f64)>,
    running_since: Option<Instant>,
    /// The most history lines the server had while the job was RUNNING and
    /// the run was not complete.
    live_lines: usize,
    /// When the requeue or scancel was done, and the server's lines then.
    acted: Option<(f64, usize)>,
    /// When the server's run became complete.
    complete_at: Option<f64>,
}

impl Seen {
    fn state(&self) -> &str {
        self.states.last().map_or("", |(s, _)| s.as_str())
    }
}

/// A unit with what was seen of it and left behind by it.
struct Outcome {
    unit: Unit,
    seen: Seen,
    /// The run as `syncd inspect --json` reads the job's directory.
    inspect: Value,
    output: String,
}

/// Everything the tests check: the server, and what was recorded.
struct E2e {
    server: WandbServer,
    outcomes: Vec<Outcome>,
    /// `syncd status --json` once the daemon stopped.
    status: Value,
    daemon_log: String,
    daemon_exit: String,
}

static E2E: OnceLock<Result<Option<E2e>, String>> = OnceLock::new();

/// The jobs' outcome, run by the first caller; `None` without a cluster.
/// A failure to run them fails every test with the same message (the jobs
/// are not submitted again).
fn e2e() -> Option<&'static E2e> {
    let result = E2E.get_or_init(|| {
        std::panic::catch_unwind(run_jobs).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into())
        })
    });
    match result {
        Ok(e2e) => e2e.as_ref(),
        Err(message) => panic!("running the Slurm jobs failed: {message}"),
    }
}

fn required() -> bool {
    std::env::var("SYNCD_REQUIRE_SLURM").is_ok_and(|v| v == "1")
}

/// `SYNCD_SLURM_CONF` if it names the configuration of a cluster whose node
/// answers; otherwise a note (or a failure under `SYNCD_REQUIRE_SLURM=1`).
fn cluster_conf() -> Option<PathBuf> {
    let conf = std::env::var_os("SYNCD_SLURM_CONF")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let problem = match &conf {
        None => "SYNCD_SLURM_CONF is not set".to_string(),
        Some(c) if !c.is_file() => format!("SYNCD_SLURM_CONF={} is no file", c.display()),
        Some(c) => match slurm(c, "sinfo")
            .args(["--noheader", "--format=%T"])
            .output()
        {
            Ok(out)
                if out.status.success()
                    && String::from_utf8_lossy(&out.stdout).lines().any(|state| {
                        ["idle", "mixed", "allocated", "completing"].contains(&state.trim())
                    }) =>
            {
                return conf;
            }
            Ok(out) => format!(
                "no node of the cluster of SYNCD_SLURM_CONF={} is up (sinfo: {}{})",
                c.display(),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => format!("cannot run sinfo: {e}"),
        },
    };
    assert!(
        !required(),
        "SYNCD_REQUIRE_SLURM=1 but {problem} (tests/slurm/cluster.sh start)"
    );
    eprintln!(
        "note: {problem}; the Slurm tests are skipped (start a cluster: tests/slurm/README.md)"
    );
    None
}

/// A Slurm command for the cluster of `conf`, without the variables that
/// would change what it does (`SBATCH_*` options, `SQUEUE_*` formats, the
/// `SLURM_*` of a job these tests might run in, `WANDB_*` the jobs would
/// inherit).
fn slurm(conf: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if ["SLURM_", "SBATCH_", "SQUEUE_", "WANDB_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("SLURM_CONF", conf);
    cmd
}

/// The templates' rule for names in run ids and paths: lower case, anything
/// outside `[a-z0-9_-]` replaced by `-`, at most 64 characters.
fn sanitize(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '-',
        })
        .take(64)
        .collect()
}

/// The `ClusterName` of `conf` (what jobs see as `SLURM_CLUSTER_NAME`).
fn cluster_name(conf: &Path) -> String {
    let text = std::fs::read_to_string(conf).expect("read slurm.conf");
    text.lines()
        .find_map(|l| {
            let (key, value) = l.trim().split_once('=')?;
            key.eq_ignore_ascii_case("ClusterName")
                .then(|| value.trim().to_string())
        })
        .expect("slurm.conf has a ClusterName")
}

/// Slurm's final job states: the job will not run again (what the daemon
/// itself takes as the job being over).
fn is_final(state: &str) -> bool {
    !syncd::engine::JobState::parse(state).is_alive()
}

/// The state of every job and array task, keyed by `%i`: the command syncd
/// runs (src/engine/slurm.rs), for all the jobs at once. Empty if squeue
/// failed (the next look asks again).
fn job_states(conf: &Path, ids: &[String]) -> BTreeMap<String, String> {
    let out = slurm(conf, "squeue")
        .args([
            "--noheader",
            "--array",
            "--states=all",
            "--format=%i|%A|%T",
            &format!("--jobs={}", ids.join(",")),
        ])
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.trim().split('|');
            let job = fields.next()?;
            let state = fields.nth(1)?.split_whitespace().next()?;
            Some((job.to_string(), state.to_string()))
        })
        .collect()
}

/// Submitted jobs, cancelled when dropped: at the end of the watch, and on
/// any failure before it.
struct Jobs {
    conf: PathBuf,
    ids: Vec<String>,
}

impl Drop for Jobs {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            // Ended jobs are left alone by scancel (it says so on stderr).
            let _ = slurm(&self.conf, "scancel").args(&self.ids).output();
        }
    }
}

/// Where the jobs write and what they are given.
struct Setup {
    conf: PathBuf,
    cluster: String,
    work: PathBuf,
    python: PathBuf,
    /// The Python for `named` jobs (see [`Spec::named`]).
    python_named: PathBuf,
    state_dir: PathBuf,
}

impl Setup {
    fn scratch(&self) -> PathBuf {
        self.work.join("scratch")
    }

    fn out_dir(&self) -> PathBuf {
        self.work.join("out")
    }

    /// Submits `spec`'s job; the units it will write.
    fn submit(&self, spec: &'static Spec, jobs: &mut Jobs) -> Vec<Unit> {
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("sbatch-templates");
        let array = spec.scenario == Scenario::Array;
        let output = if array { "%x-%A_%a.out" } else { "%x-%j.out" };
        let python = if spec.named {
            &self.python_named
        } else {
            &self.python
        };
        let out = slurm(&self.conf, "sbatch")
            .arg("--parsable")
            .arg(format!("--job-name={}", spec.name))
            .arg(format!("--output={}/{output}", self.out_dir().display()))
            .arg(format!("--chdir={}", self.work.display()))
            .args(spec.sbatch)
            .arg(templates.join(spec.template))
            .env("SCRATCH_ROOT", self.scratch())
            .env("PYTHON", python)
            .env("TRAIN_SCRIPT", templates.join("train_example.py"))
            .env("TRAIN_ARGS", spec.train_args)
            .env("SYNCD", env!("CARGO_BIN_EXE_syncd"))
            .env("SYNCD_STATE_DIR", &self.state_dir)
            .env("RUN_VERSION", VERSION)
            .env("WANDB_PROJECT", "syncd-e2e")
            .env("WANDB_SILENT", "true")
            .env("HOME", self.work.join("job-home"))
            .output()
            .expect("run sbatch");
        assert!(
            out.status.success(),
            "sbatch {} failed: {}",
            spec.template,
            String::from_utf8_lossy(&out.stderr)
        );
        // --parsable prints `id` or `id;cluster`.
        let job_id = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        jobs.ids.push(job_id.clone());
        let jobs_of: Vec<String> = if array {
            (0..ARRAY_TASKS).map(|t| format!("{job_id}_{t}")).collect()
        } else {
            vec![job_id.clone()]
        };
        jobs_of
            .into_iter()
            .map(|job| Unit {
                spec,
                job_id: job_id.clone(),
                dir: self.scratch().join("wandb-runs").join(spec.name).join(&job),
                run_id: sanitize(&format!("{}-{job}-{VERSION}", self.cluster)),
                out: self.out_dir().join(format!("{}-{job}.out", spec.name)),
                job,
            })
            .collect()
    }
}

/// Submits every job, starts the daemon, watches until every job ended and
/// every run is complete on the server (or [`DEADLINE`]), then stops the
/// daemon and cancels what is left.
fn run_jobs() -> Option<E2e> {
    let conf = cluster_conf()?;
    let Some(cli) = wandb_cli() else {
        assert!(
            !required(),
            "SYNCD_REQUIRE_SLURM=1 but there is no wandb venv (scripts/test.sh makes it)"
        );
        return None;
    };
    let venv = cli.parent().unwrap().parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_path_buf();
    let home = work.join("home");
    let setup = Setup {
        cluster: cluster_name(&conf),
        python: venv.join("bin/python"),
        python_named: work.join("bin/python-named"),
        state_dir: home.join("state"),
        work,
        conf,
    };
    for dir in [
        setup.scratch(),
        setup.out_dir(),
        setup.work.join("bin"),
        setup.work.join("job-home"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(
        &setup.python_named,
        format!(
            "#!/bin/sh\n# A training whose user names its run.\nexport WANDB_NAME=\"$SLURM_JOB_NAME-$SLURM_JOB_ID\"\nexec '{}' \"$@\"\n",
            setup.python.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&setup.python_named, std::fs::Permissions::from_mode(0o755)).unwrap();

    let server = WandbServer::start();
    // The templates' layout: <scratch>/wandb-runs/<job name>/<job>/wandb/.
    let root = setup.scratch().join("wandb-runs/*/*");
    let daemon = start_daemon(
        &server,
        &home,
        &[&root],
        &["--grace", GRACE],
        &[("SLURM_CONF", setup.conf.to_str().unwrap())],
    );
    let mut jobs = Jobs {
        conf: setup.conf.clone(),
        ids: Vec::new(),
    };
    let started = Instant::now();
    let units: Vec<Unit> = SPECS
        .iter()
        .flat_map(|spec| setup.submit(spec, &mut jobs))
        .collect();
    let seen = watch(&server, &setup.conf, &jobs.ids, &units, started);
    let watched = started.elapsed();

    let daemon_log = daemon.log_text();
    let daemon_exit = format!("{}", daemon.stop());
    drop(jobs);
    let status = status_json(&home);
    let outcomes: Vec<Outcome> = units
        .into_iter()
        .zip(seen)
        .map(|(unit, seen)| Outcome {
            inspect: if unit.dir.join("wandb").is_dir() {
                inspect_json(&[&unit.dir], &[]).1["runs"][0].clone()
            } else {
                Value::Null
            },
            output: std::fs::read_to_string(&unit.out).unwrap_or_default(),
            unit,
            seen,
        })
        .collect();
    let e2e = E2e {
        server,
        outcomes,
        status,
        daemon_log,
        daemon_exit,
    };
    eprintln!(
        "Slurm jobs watched for {:.0} s (seconds since the first submit):",
        watched.as_secs_f64()
    );
    for o in &e2e.outcomes {
        eprintln!("  {}", o.summary());
    }
    Some(e2e)
}

/// Samples every 0.5 s: the server's runs, then the jobs' states; does the
/// requeue and the scancel once their job has run a while. Returns when
/// every job ended and every run is complete, or at [`DEADLINE`].
fn watch(
    server: &WandbServer,
    conf: &Path,
    ids: &[String],
    units: &[Unit],
    started: Instant,
) -> Vec<Seen> {
    let mut seen = vec![Seen::default(); units.len()];
    loop {
        let secs = started.elapsed().as_secs_f64();
        // The server first, then Slurm: lines the server had before squeue
        // said RUNNING arrived while the job ran (it runs from its start).
        let runs: Vec<Option<Value>> = units.iter().map(|u| server.run(&u.run_id)).collect();
        let states = job_states(conf, ids);
        for ((unit, s), run) in units.iter().zip(seen.iter_mut()).zip(&runs) {
            let lines = run.as_ref().map_or(0, |r| global_steps(r).len());
            let complete = run.as_ref().is_some_and(|r| r["complete"] == true);
            if complete && s.complete_at.is_none() {
                s.complete_at = Some(secs);
            }
            let Some(state) = states.get(&unit.job) else {
                continue;
            };
            if s.state() != state {
                s.states.push((state.clone(), secs));
            }
            if state != "RUNNING" {
                continue;
            }
            let since = *s.running_since.get_or_insert_with(Instant::now);
            if !complete {
                s.live_lines = s.live_lines.max(lines);
            }
            // Once the job ran a while and some of its lines are uploaded.
            let action: &[&str] = match unit.spec.scenario {
                Scenario::Requeue => &["scontrol", "requeue"],
                Scenario::Scancel => &["scancel"],
                _ => continue,
            };
            let ran = since.elapsed();
            if s.acted.is_none()
                && ran >= Duration::from_secs(12)
                && (lines > 0 || ran >= Duration::from_secs(30))
            {
                let out = slurm(conf, action[0])
                    .args(&action[1..])
                    .arg(&unit.job_id)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{action:?} {}: {}",
                    unit.job_id,
                    String::from_utf8_lossy(&out.stderr)
                );
                s.acted = Some((secs, lines));
            }
        }
        let done = seen
            .iter()
            .all(|s| is_final(s.state()) && s.complete_at.is_some());
        if done || started.elapsed() > DEADLINE {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Outcome {
    /// One line: the job, its states, the action, the server's completion.
    fn summary(&self) -> String {
        let states: Vec<String> = self
            .seen
            .states
            .iter()
            .map(|(s, at)| format!("{s}@{at:.0}"))
            .collect();
        format!(
            "{:<12} {:<12} {}{}; live lines {}; run complete at {}",
            self.unit.spec.name,
            self.unit.job,
            states.join(" "),
            self.seen
                .acted
                .map(|(at, lines)| format!(" (acted at {at:.0} s, {lines} lines uploaded)"))
                .unwrap_or_default(),
            self.seen.live_lines,
            self.seen
                .complete_at
                .map_or("never".into(), |at| format!("{at:.0} s")),
        )
    }

    /// For failure messages: what was seen, the job's output, and what the
    /// daemon logged about the run or its job.
    fn context(&self, daemon_log: &str) -> String {
        let about: Vec<&str> = daemon_log
            .lines()
            .filter(|l| l.contains(&self.unit.run_id) || l.contains(&self.unit.job))
            .collect();
        format!(
            "{}\n--- job output {}:\n{}--- daemon log about it:\n{}",
            self.summary(),
            self.unit.out.display(),
            self.output,
            about.join("\n")
        )
    }

    /// The job's final Slurm state.
    fn state(&self) -> &str {
        self.seen.state()
    }
}

impl E2e {
    fn all(&self, scenario: Scenario) -> Vec<&Outcome> {
        self.outcomes
            .iter()
            .filter(|o| o.unit.spec.scenario == scenario)
            .collect()
    }

    fn one(&self, scenario: Scenario) -> &Outcome {
        self.all(scenario)[0]
    }

    /// The server's run of `o`.
    fn run(&self, o: &Outcome) -> Value {
        self.server.run(&o.unit.run_id).unwrap_or_else(|| {
            panic!(
                "run {} is not on the server\n{}\n--- daemon log:\n{}",
                o.unit.run_id,
                self.why(o),
                self.daemon_log
            )
        })
    }

    /// [`Outcome::context`] with this daemon's log.
    fn why(&self, o: &Outcome) -> String {
        o.context(&self.daemon_log)
    }

    /// The entries of `syncd status --json` for `o`'s run.
    fn status_of(&self, o: &Outcome) -> Vec<&Value> {
        self.status["runs"]
            .as_array()
            .map(|runs| {
                runs.iter()
                    .filter(|r| r["run_id"] == o.unit.run_id.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `global_step` of every history line the server holds, in order (`-1`
/// for a line without one).
fn global_steps(run: &Value) -> Vec<i64> {
    run["history"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r["global_step"].as_i64().unwrap_or(-1))
                .collect()
        })
        .unwrap_or_default()
}

/// Each history line was sent once, at its place: none resent, none skipped.
fn assert_sent_once(e2e: &E2e, run: &Value, o: &Outcome) {
    assert_eq!(run["gaps"], 0, "no gap in the history\n{}", e2e.why(o));
    assert_eq!(
        run["history_lines_received"].as_u64(),
        Some(global_steps(run).len() as u64),
        "every history line sent once\n{}",
        e2e.why(o)
    );
}

/// A run with Slurm's verdict: no exit record in the file, finalized from
/// the job's final state, every line the file holds uploaded once.
fn assert_finalized_by_slurm(e2e: &E2e, o: &Outcome, verdict: &str) {
    assert_eq!(o.state(), verdict, "{}", e2e.why(o));
    assert_eq!(
        o.inspect["exit_code"],
        Value::Null,
        "Slurm's SIGTERM reaches wandb-core too: the file has no exit record\n{}",
        e2e.why(o)
    );
    let run = e2e.run(o);
    assert_eq!(run["complete"], true, "finalized\n{}", e2e.why(o));
    assert_ne!(run["exitcode"], 0, "a cut-off run is no success");
    assert_eq!(
        run["summary"]["slurm_state"], verdict,
        "summary {}",
        run["summary"]
    );
    assert!(
        run["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == &format!("slurm:{verdict}"))),
        "tags {}",
        run["tags"]
    );
    assert_sent_once(e2e, &run, o);
    let rows = o.inspect["history_rows"].as_u64().unwrap() as i64;
    assert!(rows > 0, "the job logged before it ended\n{}", e2e.why(o));
    assert_eq!(
        global_steps(&run),
        (0..rows).collect::<Vec<_>>(),
        "the history the file holds, each step once"
    );
    let status = e2e.status_of(o);
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["state"], "finalized", "{:#}", status[0]);
    assert_eq!(status[0]["slurm_job"], o.unit.job.as_str());
    assert!(
        status[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(verdict)),
        "{:#}",
        status[0]
    );
}

#[test]
fn a_job_is_uploaded_while_it_runs_and_completed_once_it_ends() {
    let Some(e2e) = e2e() else { return };
    let o = e2e.one(Scenario::Offline);
    assert_eq!(o.state(), "COMPLETED", "{}", e2e.why(o));
    assert!(
        o.seen.live_lines > 0,
        "history lines reached the server while the job was RUNNING and the run not complete\n{}",
        e2e.why(o)
    );
    let run = e2e.run(o);
    assert_eq!(run["complete"], true);
    assert_eq!(run["exitcode"], 0);
    assert_sent_once(e2e, &run, o);
    assert_eq!(global_steps(&run), (0..600).collect::<Vec<_>>());
    assert_eq!(run["summary"]["slurm_state"], Value::Null);
    let status = e2e.status_of(o);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["state"], "synced", "{:#}", status[0]);
    assert_eq!(status[0]["slurm_job"], o.unit.job.as_str());
}

#[test]
fn a_job_killed_at_its_time_limit_is_finalized_as_timeout() {
    let Some(e2e) = e2e() else { return };
    assert_finalized_by_slurm(e2e, e2e.one(Scenario::Timeout), "TIMEOUT");
}

#[test]
fn the_usr1_warning_before_the_time_limit_lets_the_run_finish() {
    let Some(e2e) = e2e() else { return };
    let o = e2e.one(Scenario::Usr1);
    // The trap forwards the warning, the training finishes its run and
    // exits 138 (128 + SIGUSR1) before Slurm's limit: FAILED, not TIMEOUT.
    assert_eq!(o.state(), "FAILED", "{}", e2e.why(o));
    assert!(o.output.contains("job: SIGUSR1 at"), "{}", e2e.why(o));
    assert!(o.output.contains("train: run finished"), "{}", e2e.why(o));
    let logged: i64 = o
        .output
        .lines()
        .find_map(|l| l.strip_prefix("train: interrupted at step "))
        .and_then(|rest| rest.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the training says where it stopped\n{}", e2e.why(o)));
    assert!(logged > 0, "the training ran before the warning");
    let run = e2e.run(o);
    assert_eq!(run["complete"], true);
    assert_eq!(run["exitcode"], 138, "the run's own exit record");
    assert_eq!(run["preempting"], true);
    assert_eq!(
        run["summary"]["slurm_state"],
        Value::Null,
        "no verdict needed"
    );
    assert_sent_once(e2e, &run, o);
    assert_eq!(
        global_steps(&run),
        (0..logged).collect::<Vec<_>>(),
        "every logged step"
    );
    assert_eq!(e2e.status_of(o)[0]["state"], "synced");
}

#[test]
fn a_requeued_job_continues_its_run_in_one_server_run() {
    let Some(e2e) = e2e() else { return };
    let o = e2e.one(Scenario::Requeue);
    assert_eq!(o.state(), "COMPLETED", "{}", e2e.why(o));
    let (_, uploaded_before) = o
        .seen
        .acted
        .unwrap_or_else(|| panic!("the job was requeued\n{}", e2e.why(o)));
    assert!(
        uploaded_before > 0,
        "the first start's lines were uploaded before the requeue"
    );
    let runnings = o.seen.states.iter().filter(|(s, _)| s == "RUNNING").count();
    assert_eq!(runnings, 2, "ran, was requeued, ran again\n{}", e2e.why(o));
    // The first start was cut off by the requeue's SIGTERM; the second
    // resumed from the checkpoint and finished.
    let fragments = o.inspect["fragments"].as_array().expect("fragments");
    assert_eq!(fragments.len(), 2, "{:#}", o.inspect);
    let mut fragments = fragments.clone();
    fragments.sort_by_key(|f| f["path"].as_str().unwrap_or_default().to_string());
    assert_eq!(fragments[0]["exit_code"], Value::Null);
    assert_eq!(fragments[1]["exit_code"], 0);
    let rows = |f: &Value| f["history_rows"].as_u64().unwrap() as usize;

    let run = e2e.run(o);
    assert_eq!(run["complete"], true);
    assert_eq!(run["exitcode"], 0);
    assert_sent_once(e2e, &run, o);
    assert_eq!(
        global_steps(&run).len(),
        rows(&fragments[0]) + rows(&fragments[1])
    );
    let restarts: Vec<i64> = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["restart"].as_i64().unwrap_or(-1))
        .collect();
    // `restart` is SLURM_RESTART_COUNT: the first start's lines, then the
    // second's.
    let expected: Vec<i64> = std::iter::repeat_n(0, rows(&fragments[0]))
        .chain(std::iter::repeat_n(1, rows(&fragments[1])))
        .collect();
    assert_eq!(restarts, expected, "both fragments' lines, in order");
    let global = global_steps(&run);
    assert!(
        global.windows(2).all(|w| w[0] < w[1]),
        "no step twice: {global:?}"
    );
    assert_eq!(global.last(), Some(&299), "trained to the end");
    assert_eq!(e2e.status_of(o).len(), 1, "one run in the ledger");
}

#[test]
fn an_array_job_uploads_one_run_per_task() {
    let Some(e2e) = e2e() else { return };
    let tasks = e2e.all(Scenario::Array);
    assert_eq!(tasks.len(), ARRAY_TASKS as usize);
    for (task, o) in tasks.iter().enumerate() {
        assert_eq!(o.state(), "COMPLETED", "{}", e2e.why(o));
        let run = e2e.run(o);
        assert_eq!(run["complete"], true, "{}", e2e.why(o));
        assert_eq!(run["exitcode"], 0);
        assert_sent_once(e2e, &run, o);
        assert_eq!(global_steps(&run), (0..40).collect::<Vec<_>>());
        // TASK_ARGS gives each task its index as seed.
        assert_eq!(run["config"]["seed"]["value"], task);
        let status = e2e.status_of(o);
        assert_eq!(status[0]["slurm_job"], o.unit.job.as_str());
    }
}

#[test]
fn scancel_finalizes_the_run_as_cancelled() {
    let Some(e2e) = e2e() else { return };
    let o = e2e.one(Scenario::Scancel);
    assert!(o.seen.acted.is_some(), "scancel was run\n{}", e2e.why(o));
    assert!(
        o.seen.live_lines > 0,
        "lines were uploaded before the scancel"
    );
    assert_finalized_by_slurm(e2e, o, "CANCELLED");
}

#[test]
fn the_daemon_stops_cleanly() {
    let Some(e2e) = e2e() else { return };
    assert!(
        e2e.daemon_exit.contains("exit status: 0"),
        "{}\n{}",
        e2e.daemon_exit,
        e2e.daemon_log
    );
}

// ---- Names ------------------------------------------------------------------
// syncd names a run `v{version}-{experiment}_{job}` and groups array tasks
// `{experiment}_{array_job_id}` (src/naming/mod.rs: DEFAULT_TEMPLATE,
// DEFAULT_GROUP_TEMPLATE), unless the run has a name or group of its own.

/// A run with no name of its own gets the templated name; an array's tasks
/// the array's group.
#[test]
fn naming_unnamed_runs_get_the_templated_name_and_arrays_a_group() {
    let Some(e2e) = e2e() else { return };
    let o = e2e.one(Scenario::Offline);
    let run = e2e.run(o);
    assert_eq!(
        run["displayName"],
        format!("v{VERSION}-{}_{}", o.unit.spec.name, o.unit.job)
    );
    assert_eq!(run["groupName"], Value::Null, "a plain job has no group");
    for o in e2e.all(Scenario::Array) {
        let run = e2e.run(o);
        // `job` is `<array job id>_<task id>` for a task.
        assert_eq!(
            run["displayName"],
            format!("v{VERSION}-{}_{}", o.unit.spec.name, o.unit.job)
        );
        assert_eq!(
            run["groupName"],
            format!("{}_{}", o.unit.spec.name, o.unit.job_id)
        );
    }
}

/// A job that exports `WANDB_NAME=<job name>-<job id>` (a name the user
/// chose) keeps it.
#[test]
fn naming_a_run_named_by_its_job_script_keeps_its_name() {
    let Some(e2e) = e2e() else { return };
    for scenario in [Scenario::Timeout, Scenario::Requeue, Scenario::Scancel] {
        let o = e2e.one(scenario);
        let run = e2e.run(o);
        assert_eq!(
            run["displayName"],
            format!("{}-{}", o.unit.spec.name, o.unit.job),
            "{}",
            e2e.why(o)
        );
    }
}

/// `syncd inspect --json` (its `naming` object) and `syncd status --json`
/// (`name`, `group`) say which name and group a run gets.
#[test]
fn naming_inspect_and_status_show_the_name_a_run_gets() {
    let Some(e2e) = e2e() else { return };
    let o = e2e.one(Scenario::Offline);
    let name = format!("v{VERSION}-{}_{}", o.unit.spec.name, o.unit.job);
    assert_eq!(
        o.inspect["naming"]["display_name"],
        name.as_str(),
        "{:#}",
        o.inspect
    );
    assert_eq!(e2e.status_of(o)[0]["name"], name.as_str());
    let task = e2e.all(Scenario::Array)[0];
    let group = format!("{}_{}", task.unit.spec.name, task.unit.job_id);
    assert_eq!(task.inspect["naming"]["group"], group.as_str());
    assert_eq!(e2e.status_of(task)[0]["group"], group.as_str());
}
