//! `syncd run` end to end against the W&B-protocol test server: live runs
//! written by the real wandb, a new run and its end seen through inotify
//! with the polls far apart, finalization by Slurm's verdict (fake
//! `squeue`/`sacct`) and by quiescence, kill -9 chaos, an outage, trigger
//! files, a second daemon, foreign-owned runs, `status`, `sd_notify`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::official_sync::{copy_tree_rooted, wandb_cli};
use crate::support::committed_root;
use crate::sync::{comparable, syncd_sync};
use crate::wandb_server::{Endpoint, Fault, WandbServer};

/// A `syncd run` child process, killed (SIGKILL) if the test ends early.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log {}:\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    /// SIGHUP: reload settings and retry stopped runs.
    pub fn hup(&self) {
        unsafe_kill(self.child.as_ref().unwrap().id(), "HUP");
    }

    /// SIGTERM; the exit status if the process ends within `limit` (else
    /// it is still running and can be waited for again).
    pub fn term_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        unsafe_kill(self.pid(), "TERM");
        self.exit_within(limit)
    }

    pub fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = wait_timeout(self.child.as_mut().expect("running"), limit)?;
        self.child = None;
        Some(status)
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_kill(child.id(), "TERM");
        wait_timeout(&mut child, Duration::from_secs(15)).expect("daemon exits on SIGTERM")
    }

    fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Starts `syncd run` on `roots` with fast polls; `extra` flags and `env` added.
pub fn start_daemon(
    server: &WandbServer,
    home: &Path,
    roots: &[&Path],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    std::fs::create_dir_all(home).unwrap();
    let log = home.join(format!(
        "daemon-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncd"));
    cmd.arg("run")
        .args(["--state-dir", home.join("state").to_str().unwrap()]);
    // Fast polls unless the test sets its own.
    for (flag, value) in [
        ("--poll", "300ms"),
        ("--idle-poll", "2s"),
        ("--retry-min-ms", "50"),
        ("--lease-ttl", "3s"),
    ] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(extra)
        .args(roots)
        .env("WANDB_API_KEY", server.api_key())
        .env("WANDB_BASE_URL", server.base_url())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("SYNCD_STATE_DIR")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("SYNCD_ROOTS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon {
        child: Some(cmd.spawn().expect("start syncd run")),
        log,
    }
}

pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn steps(run: &Value) -> usize {
    run["history"].as_array().map_or(0, Vec::len)
}

pub fn status_json(home: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args([
            "status",
            "--json",
            "--state-dir",
            home.join("state").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn committed_copy(version: &str, case: &str, root: &Path) {
    copy_tree_rooted(
        &committed_root().join(version).join(case).join("wandb"),
        root,
    );
}

fn python_writer(venv: &Path, dir: &Path, id: &str, steps: u32, sleep: &str) -> Child {
    Command::new(venv.join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb/live_writer.py"))
        .args([
            "--dir",
            dir.to_str().unwrap(),
            "--id",
            id,
            "--steps",
            &steps.to_string(),
            "--sleep",
            sleep,
        ])
        .env("HOME", dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// What a test with real wandb writers needs: the wandb venv, a scratch
/// root (without `wandb/`), a home and a test server.
struct WriterSetup {
    venv: PathBuf,
    tmp: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    server: WandbServer,
}

/// `None` (the test is skipped) without the wandb venv.
fn writer_setup() -> Option<WriterSetup> {
    let cli = wandb_cli()?;
    let venv = cli.parent()?.parent()?.to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    std::fs::create_dir_all(&root).unwrap();
    let home = tmp.path().join("home");
    Some(WriterSetup {
        venv,
        tmp,
        root,
        home,
        server: WandbServer::start(),
    })
}

#[test]
fn live_runs_grow_without_completing_and_finish_once() {
    let Some(setup) = writer_setup() else { return };
    let (venv, root, home, server) = (&setup.venv, &setup.root, &setup.home, &setup.server);
    let daemon = start_daemon(server, home, &[root], &["--no-slurm"], &[]);
    let mut writer = python_writer(venv, root, "fxdaemon", 3000, "0.002");
    let mut seen_partial = false;
    while writer.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(run) = server.run("fxdaemon") {
            let n = steps(&run);
            if run["complete"] == true {
                assert_eq!(n, 3000, "completed only with everything");
            }
            seen_partial |= n > 0 && n < 3000;
        }
    }
    assert!(writer.wait().unwrap().success());
    wait_until(Duration::from_secs(20), "the run to complete", || {
        server
            .run("fxdaemon")
            .is_some_and(|r| r["complete"] == true)
    });
    let run = server.run("fxdaemon").unwrap();
    assert!(seen_partial, "the run was on the server while it trained");
    assert_eq!(steps(&run), 3000);
    assert_eq!(run["history_lines_received"], 3000, "each line sent once");
    assert_eq!(run["exitcode"], 0);
    let status = status_json(home);
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(status["runs"][0]["state"], "synced");
    assert!(daemon.stop().success(), "SIGTERM exits 0");
    let status = status_json(home);
    assert_eq!(status["daemon"]["running"], false);
}

#[test]
fn on_a_local_root_a_new_run_and_its_end_are_seen_without_waiting_for_the_poll() {
    // The root's `wandb/` does not exist yet: wandb creates it.
    let Some(setup) = writer_setup() else { return };
    let (venv, root, home, server) = (&setup.venv, &setup.root, &setup.home, &setup.server);
    // Polls far apart: only inotify can make the run visible in time.
    let daemon = start_daemon(
        server,
        home,
        &[root],
        &["--no-slurm", "--poll", "120s", "--idle-poll", "600s"],
        &[],
    );
    wait_until(Duration::from_secs(10), "the daemon's first scan", || {
        daemon.log_text().contains("syncd run: watching")
    });
    assert!(daemon.log_text().contains("watched with inotify"));
    let started = Instant::now();
    let mut writer = python_writer(venv, root, "fxwatched", 300, "0.01");
    wait_until(Duration::from_secs(60), "the new run on the server", || {
        server.run("fxwatched").is_some()
    });
    assert!(writer.wait().unwrap().success());
    let ended = Instant::now();
    // The writer closing its file says the run is done: no poll needed.
    wait_until(Duration::from_secs(20), "the run to complete", || {
        server
            .run("fxwatched")
            .is_some_and(|r| r["complete"] == true)
    });
    assert!(
        started.elapsed() < Duration::from_secs(110),
        "finished before the first poll"
    );
    eprintln!(
        "complete {:.1} s after the writer exited",
        ended.elapsed().as_secs_f64()
    );
    let run = server.run("fxwatched").unwrap();
    assert_eq!(steps(&run), 300);
    assert_eq!(run["history_lines_received"], 300, "each line sent once");
    assert!(daemon.stop().success());
}

/// Fake Slurm commands on PATH: `squeue` knows no job any more; `sacct`
/// says array task 4240_2 (job 4242) ended in TIMEOUT.
pub fn fake_slurm(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for (name, body) in [
        ("squeue", "#!/bin/sh\nexit 0\n"),
        // The fixture is array task 4240_2, whose own job id is 4242.
        ("sacct", "#!/bin/sh\necho '4240_2|4242|TIMEOUT|0:15'\n"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The committed Slurm fixture cut just before its exit record: a run whose
/// job (4242) was killed at its time limit.
pub fn timed_out_run(root: &Path) -> PathBuf {
    committed_copy("0.31.0", "slurm_env", root);
    let file = crate::support::wandb_files_under(root).remove(0);
    let fragment = syncd::source::wandb::fragment::read_fragment(&file, Default::default())
        .expect("read fixture");
    assert!(fragment.state.exit.is_some());
    // Find where the exit record starts and cut there.
    let mut reader =
        syncd::source::wandb::framing::LogReader::open(std::fs::File::open(&file).unwrap(), 0)
            .unwrap();
    let mut exit_at = None;
    while let Some(raw) = reader.next_record().unwrap() {
        if syncd::source::wandb::record::peek(raw.payload)
            .unwrap()
            .kind
            == syncd::source::wandb::proto::RecordKind::Exit
        {
            exit_at = Some(raw.start);
        }
    }
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..exit_at.unwrap() as usize]).unwrap();
    file
}

#[test]
fn a_job_gone_without_exit_record_is_finalized_with_slurms_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    timed_out_run(&root);
    let path = fake_slurm(&tmp.path().join("bin"));
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(
        &server,
        &home,
        &[&root],
        &["--grace", "1s"],
        &[("PATH", &path)],
    );
    wait_until(Duration::from_secs(20), "the run to be finalized", || {
        server
            .run("fxslurm0")
            .is_some_and(|r| r["complete"] == true)
    });
    let run = server.run("fxslurm0").unwrap();
    assert_eq!(run["exitcode"], 1);
    assert_eq!(run["summary"]["slurm_state"], "TIMEOUT");
    assert!(
        run["tags"].to_string().contains("slurm:TIMEOUT"),
        "{}",
        run["tags"]
    );
    assert_eq!(steps(&run), 10);
    let status = status_json(&home);
    let entry = &status["runs"][0];
    assert_eq!(entry["state"], "finalized");
    assert!(
        entry["reason"].as_str().unwrap().contains("TIMEOUT"),
        "{entry:#}"
    );
    assert_eq!(entry["slurm_job"], "4240_2");
    daemon.stop();
}

#[test]
fn without_slurm_a_quiet_run_is_finalized_after_the_quiescence_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "sigkill", &root);
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(
        &server,
        &home,
        &[&root],
        &["--no-slurm", "--quiescence", "2s"],
        &[],
    );
    wait_until(Duration::from_secs(20), "finalization", || {
        server
            .run("fxsigkil")
            .is_some_and(|r| r["complete"] == true)
    });
    assert_eq!(server.run("fxsigkil").unwrap()["exitcode"], 1);
    assert_eq!(status_json(&home)["runs"][0]["state"], "finalized");
    daemon.stop();
}

/// kill -9 of the daemon at random moments while runs grow: the final state
/// equals one clean sync of the final files; no line missing or doubled.
#[test]
fn killing_the_daemon_again_and_again_loses_and_duplicates_nothing() {
    let Some(setup) = writer_setup() else { return };
    let (venv, root, home, server) = (&setup.venv, &setup.root, &setup.home, &setup.server);
    let tmp = &setup.tmp;
    let mut writers = vec![
        python_writer(venv, root, "fxchaos1", 4000, "0.003"),
        python_writer(venv, root, "fxchaos2", 2000, "0.005"),
    ];
    let iterations: u64 = std::env::var("SYNCD_CHAOS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    for i in 0..iterations {
        let daemon = start_daemon(server, home, &[root], &["--no-slurm", "--wait"], &[]);
        std::thread::sleep(Duration::from_millis(100 + (i * 7919) % 300));
        daemon.kill9();
    }
    for w in &mut writers {
        assert!(w.wait().unwrap().success());
    }
    let daemon = start_daemon(server, home, &[root], &["--no-slurm", "--wait"], &[]);
    wait_until(Duration::from_secs(60), "both runs complete", || {
        ["fxchaos1", "fxchaos2"]
            .iter()
            .all(|id| server.run(id).is_some_and(|r| r["complete"] == true))
    });
    daemon.stop();
    let clean = WandbServer::start();
    let out = syncd_sync(
        &clean,
        &tmp.path().join("clean"),
        &[root.join("wandb").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0));
    for id in ["fxchaos1", "fxchaos2"] {
        let run = server.run(id).unwrap();
        assert_eq!(run["gaps"], 0, "{id}");
        assert_eq!(
            comparable(&run),
            comparable(&clean.run(id).unwrap()),
            "{id} after {iterations} kills"
        );
    }
}

#[test]
fn an_outage_is_ridden_out_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "finished", &root);
    let server = WandbServer::start();
    for endpoint in [Endpoint::Graphql, Endpoint::FileStream, Endpoint::Storage] {
        server.inject(endpoint, Fault::Drop, 100_000);
    }
    let home = tmp.path().join("home");
    let daemon = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(20), "status to say offline", || {
        status_json(&home)["daemon"]["online"] == false
    });
    let requests_while_down = server.snapshot()["counters"]["requests"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let later = server.snapshot()["counters"]["requests"].as_u64().unwrap();
    assert!(
        later - requests_while_down <= 6,
        "offline: probes only, not hammering ({requests_while_down} -> {later})"
    );
    server.clear_faults();
    wait_until(Duration::from_secs(90), "upload after the outage", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    let run = server.run("fxfinish").unwrap();
    assert_eq!(steps(&run), 200);
    assert_eq!(run["gaps"], 0);
    wait_until(
        Duration::from_secs(10),
        "status to say online again",
        || status_json(&home)["daemon"]["online"] == true,
    );
    daemon.stop();
}

#[test]
fn trigger_files_and_wandb_osh_commands_upload_without_waiting_for_the_poll() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    std::fs::create_dir_all(root.join("wandb")).unwrap();
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    // Polls far apart: only a trigger can make the upload quick.
    let daemon = start_daemon(
        &server,
        &home,
        &[&root],
        &["--no-slurm", "--poll", "60s", "--idle-poll", "600s"],
        &[],
    );
    std::thread::sleep(Duration::from_secs(1));
    committed_copy("0.31.0", "exit_code_3", &root);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        server.run("fxexit03").is_none(),
        "not found by polling this soon"
    );
    let run_dir = crate::support::wandb_files_under(&root)[0]
        .parent()
        .unwrap()
        .to_path_buf();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args([
            "notify",
            run_dir.to_str().unwrap(),
            "--state-dir",
            home.join("state").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    wait_until(Duration::from_secs(10), "the triggered upload", || {
        server
            .run("fxexit03")
            .is_some_and(|r| r["complete"] == true)
    });
    eprintln!("trigger to completed run: {:?}", started.elapsed());

    // The same through wandb-osh's command directory.
    committed_copy("0.31.0", "nan_inf", &root);
    let osh = home.join(".wandb_osh_command_dir");
    std::fs::create_dir_all(&osh).unwrap();
    let nan_dir = crate::support::wandb_files_under(&root)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("fxnaninf"))
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::write(osh.join("0123abcd.command"), nan_dir.to_str().unwrap()).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the wandb-osh triggered upload",
        || {
            server
                .run("fxnaninf")
                .is_some_and(|r| r["complete"] == true)
        },
    );
    assert!(
        !osh.join("0123abcd.command").exists(),
        "command file consumed like wandb-osh does"
    );
    daemon.stop();
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_or_waits_then_takes_over() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "finished", &root);
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let first = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(20), "the first daemon's upload", || {
        server.run("fxfinish").is_some()
    });
    let mut second = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    let status = wait_timeout(second.child.as_mut().unwrap(), Duration::from_secs(10))
        .expect("second daemon exits");
    assert_eq!(status.code(), Some(2));
    assert!(
        second.log_text().contains("lease") || second.log_text().contains("holds"),
        "{}",
        second.log_text()
    );
    second.child = None;

    // With --wait, it takes over once the first is gone (its lease expires).
    let waiting = start_daemon(&server, &home, &[&root], &["--no-slurm", "--wait"], &[]);
    std::thread::sleep(Duration::from_secs(1));
    first.kill9();
    wait_until(
        Duration::from_secs(20),
        "the waiting daemon to take over",
        || {
            status_json(&home)["daemon"]["running"] == true
                && waiting.log_text().contains("watching")
        },
    );
    let run = server.run("fxfinish").unwrap();
    assert_eq!(run["history_lines_received"], 200, "never uploaded twice");
    waiting.stop();
}

#[test]
fn runs_owned_by_someone_else_are_not_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "exit_code_3", &root);
    committed_copy("0.31.0", "finished", &root);
    let foreign = crate::support::wandb_files_under(&root)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("fxexit03"))
        .unwrap();
    let foreign_dir = foreign.parent().unwrap();
    if Command::new("chown")
        .args(["-R", "12345:12345"])
        .arg(foreign_dir)
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("note: cannot chown (not root); foreign-owner test skipped");
        return;
    }
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(20), "the user's own run", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        server.run("fxexit03").is_none(),
        "a foreign run is never uploaded"
    );
    assert!(
        daemon.log_text().contains("owned by another user"),
        "{}",
        daemon.log_text()
    );
    daemon.stop();
}

#[test]
fn systemd_is_told_ready_and_status() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "exit_code_3", &root);
    let socket_path = tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let server = WandbServer::start();
    let daemon = start_daemon(
        &server,
        &tmp.path().join("home"),
        &[&root],
        &["--no-slurm"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !(seen.iter().any(|m: &String| m.contains("READY=1"))
            && seen.iter().any(|m| m.contains("STATUS="))
            && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    let status = seen
        .iter()
        .find(|m| m.contains("STATUS="))
        .expect("a STATUS message");
    // Before any request was answered the daemon does not claim "online".
    assert!(
        status.contains("queued") && status.contains("not contacted yet"),
        "{status}"
    );
    assert!(seen.iter().any(|m| m.contains("WATCHDOG=1")), "{seen:?}");
    daemon.stop();
}

/// `syncd status` on a ledger with known contents and no daemon.
#[test]
fn status_reports_known_ledger_contents_without_a_daemon() {
    use syncd::ledger::{ErrorNote, Ledger, Phase, RunLedger};
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let ledger = Ledger::open(&state).unwrap();
    let mut synced = RunLedger::new("wandb-aaa-1".into(), "aaa".into(), "http://x".into());
    synced.phase = Phase::Synced;
    synced.acked.history_lines = 1200;
    synced.acked.complete = Some(0);
    synced.state.identity.project = Some("proj-a".into());
    synced.state.identity.display_name = Some("v3-train_4242".into());
    synced
        .state
        .identity
        .slurm
        .insert("job_id".into(), "4242".into());
    synced.last_upload = Some("2026-11-23T10:00:00Z".into());
    let mut finalized = RunLedger::new("wandb-bbb-2".into(), "bbb".into(), "http://x".into());
    finalized.phase = Phase::Finalized;
    finalized.finalized_reason =
        Some("Slurm job 77 ended (TIMEOUT) without the run writing an exit record".into());
    finalized.state.identity.project = Some("proj-b".into());
    let mut broken = RunLedger::new("wandb-ccc-3".into(), "ccc".into(), "http://x".into());
    broken.phase = Phase::Quarantined;
    broken.last_error = Some(ErrorNote {
        at: "2026-11-23T10:00:00Z".into(),
        message: "corrupt at byte 99".into(),
    });
    broken.state.identity.project = Some("proj-a".into());
    for entry in [&synced, &finalized, &broken] {
        ledger.save(entry).unwrap();
    }
    std::fs::write(state.join("runs/wandb-bad-4.json"), b"{not json").unwrap();

    let status = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .arg("status")
            .args(["--state-dir", state.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "status always exits 0");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&status(&["--json"])).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["daemon"]["running"], false);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let by_id = |id: &str| runs.iter().find(|r| r["run_id"] == id).unwrap().clone();
    assert_eq!(by_id("aaa")["state"], "synced");
    assert_eq!(by_id("aaa")["history_lines_sent"], 1200);
    assert_eq!(by_id("aaa")["slurm_job"], "4242");
    assert_eq!(by_id("aaa")["name"], "v3-train_4242");
    assert_eq!(by_id("aaa")["exit_code"], 0);
    assert_eq!(by_id("bbb")["state"], "finalized");
    assert!(by_id("bbb")["reason"].as_str().unwrap().contains("TIMEOUT"));
    assert_eq!(by_id("ccc")["state"], "quarantined");
    assert_eq!(by_id("ccc")["reason"], "corrupt at byte 99");
    assert_eq!(
        json["errors"].as_array().unwrap().len(),
        1,
        "the damaged ledger is reported"
    );

    let filtered: Value = serde_json::from_str(&status(&[
        "--json",
        "--project",
        "proj-a",
        "--state",
        "quarantined",
    ]))
    .unwrap();
    assert_eq!(filtered["runs"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["runs"][0]["run_id"], "ccc");

    let human = status(&[]);
    for expected in [
        "daemon not running",
        "v3-train_4242",
        "synced",
        "finalized",
        "TIMEOUT",
        "quarantined",
        "corrupt at byte 99",
        "4242",
    ] {
        assert!(
            human.contains(expected),
            "missing {expected:?} in:\n{human}"
        );
    }
    // A state directory that does not exist yet is not an error either.
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args([
            "status",
            "--state-dir",
            tmp.path().join("none").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("daemon not running"));
    assert!(!tmp.path().join("none").exists(), "status creates nothing");
}

/// A 429 storm with several runs uploading at once: Retry-After pauses all
/// of them, and everything completes.
#[test]
fn a_day_long_retry_after_is_capped_and_status_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "finished", &root);
    let server = WandbServer::start();
    server.inject(
        Endpoint::FileStream,
        Fault::Status {
            code: 429,
            retry_after: Some(86_400),
        },
        1,
    );
    let home = tmp.path().join("home");
    let daemon = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(20), "status to show the pause", || {
        !status_json(&home)["daemon"]["rate_limited"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let status = status_json(&home);
    let pause = status["daemon"]["rate_limited"][0].as_str().unwrap();
    assert!(
        pause.contains("Retry-After 86400 s") && pause.contains("capped to 60 s"),
        "{pause}"
    );
    // The daemon waits in a task: it stays live and stops at once.
    let started = Instant::now();
    assert!(daemon.stop().success());
    assert!(started.elapsed() < Duration::from_secs(7));
}

#[test]
fn a_429_storm_is_waited_out_by_every_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    for case in ["finished", "exit_code_3", "nan_inf", "slurm_env"] {
        committed_copy("0.31.0", case, &root);
    }
    let server = WandbServer::start();
    server.inject(
        Endpoint::FileStream,
        Fault::Status {
            code: 429,
            retry_after: Some(2),
        },
        6,
    );
    let home = tmp.path().join("home");
    let started = Instant::now();
    let daemon = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(60), "all four runs complete", || {
        ["fxfinish", "fxexit03", "fxnaninf", "fxslurm0"]
            .iter()
            .all(|id| server.run(id).is_some_and(|r| r["complete"] == true))
    });
    let elapsed = started.elapsed();
    let file_stream = server.snapshot()["counters"]["file_stream"]
        .as_u64()
        .unwrap();
    // Six 429s with Retry-After 2 s, shared by all workers: the storm costs
    // seconds, not six back-to-back failures per worker.
    assert!(
        elapsed >= Duration::from_secs(2),
        "Retry-After was honoured ({elapsed:?})"
    );
    assert!(
        file_stream <= 6 + 4 * 3,
        "workers waited instead of hammering: {file_stream} file_stream requests"
    );
    for id in ["fxfinish", "fxexit03", "fxnaninf", "fxslurm0"] {
        assert_eq!(server.run(id).unwrap()["gaps"], 0);
    }
    daemon.stop();
}

/// SIGHUP reads the config file again: a root added there is watched.
#[test]
fn sighup_reloads_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    committed_copy("0.31.0", "exit_code_3", &first.join("wandb"));
    committed_copy("0.31.0", "nan_inf", &second.join("wandb"));
    let home = tmp.path().join("home");
    let config = home.join("config/syncd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "roots = [{:?}]\nslurm = false\n",
            first.display().to_string()
        ),
    )
    .unwrap();
    let server = WandbServer::start();
    let daemon = start_daemon(&server, &home, &[], &[], &[]);
    wait_until(Duration::from_secs(20), "the first root's run", || {
        server
            .run("fxexit03")
            .is_some_and(|r| r["complete"] == true)
    });
    assert!(server.run("fxnaninf").is_none());
    std::fs::write(
        &config,
        format!(
            "roots = [{:?}, {:?}]\nslurm = false\n",
            first.display().to_string(),
            second.display().to_string()
        ),
    )
    .unwrap();
    daemon.hup();
    wait_until(Duration::from_secs(20), "the added root's run", || {
        server
            .run("fxnaninf")
            .is_some_and(|r| r["complete"] == true)
    });
    assert!(
        daemon.log_text().contains("settings reloaded"),
        "{}",
        daemon.log_text()
    );
    daemon.stop();
}

/// A settled run is kept as its paths and a stamp, not tracked: the daemon
/// says how many it put away, status still lists them (from the ledger),
/// and such a run is woken when its file grows (the new lines go once) or a
/// new fragment of it appears (it continues as the same run, nothing sent
/// twice).
#[test]
fn settled_runs_are_put_away_and_woken_by_a_grown_file_or_a_new_fragment() {
    use crate::sync::WrittenRun;
    use syncd::source::wandb::proto::{RecordType, RunExitRecord};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    let wandb = root.join("wandb");
    let mut grown = WrittenRun::create(&wandb, "fxgrown");
    for step in 0..3 {
        grown.history(step);
    }
    grown.append(RecordType::Exit(RunExitRecord {
        exit_code: 0,
        runtime: 3,
        not_complete: false,
    }));
    let resumed = committed_root().join("0.31.0/resumed/wandb");
    let mut fragments: Vec<PathBuf> = std::fs::read_dir(&resumed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fragments.sort();
    assert_eq!(fragments.len(), 2, "{fragments:?}");
    let copy_fragment = |dir: &Path| copy_tree_rooted(dir, &wandb.join(dir.file_name().unwrap()));
    copy_fragment(&fragments[0]);

    // Synced before the daemon starts: at start-up both runs are settled.
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let out = syncd_sync(&server, &home, &[root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = |id: &str| server.run(id).unwrap()["history_lines_received"].clone();
    assert_eq!(lines("fxgrown"), 3);
    let daemon = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(20), "the daemon's first scan", || {
        daemon.log_text().contains("syncd run: watching")
    });
    assert!(
        daemon.log_text().contains("2 run(s) known (2 settled"),
        "{}",
        daemon.log_text()
    );
    let status = status_json(&home);
    let state_of = |status: &Value, id: &str| {
        let runs = status["runs"].as_array().unwrap();
        let run = runs.iter().find(|r| r["run_id"] == id);
        run.map(|r| r["state"].clone()).unwrap_or_default()
    };
    assert_eq!(state_of(&status, "fxgrown"), "synced", "{status:#}");
    assert_eq!(state_of(&status, "fxresume"), "synced", "{status:#}");

    // The finished run's file grows: found on the slow poll (2 s here).
    for step in 3..6 {
        grown.history(step);
    }
    wait_until(Duration::from_secs(20), "the grown run's new lines", || {
        steps(&server.run("fxgrown").unwrap()) == 6
    });
    // A new fragment of the other run: it joins the run put away.
    copy_fragment(&fragments[1]);
    let reference = WandbServer::start();
    let both = tmp.path().join("reference");
    copy_tree_rooted(&resumed, &both.join("wandb"));
    let out = syncd_sync(
        &reference,
        &tmp.path().join("ref-home"),
        &[both.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let expected = reference.run("fxresume").unwrap();
    wait_until(Duration::from_secs(20), "the new fragment's lines", || {
        steps(&server.run("fxresume").unwrap()) == steps(&expected)
    });
    // Two more slow polls: nothing is sent again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lines("fxgrown"), 6, "each line sent once");
    let run = server.run("fxresume").unwrap();
    assert_eq!(comparable(&run), comparable(&expected));
    assert_eq!(
        run["history_lines_received"], expected["history_lines_received"],
        "each line sent once"
    );
    let status = status_json(&home);
    assert_eq!(state_of(&status, "fxgrown"), "synced", "{status:#}");
    assert_eq!(state_of(&status, "fxresume"), "synced", "{status:#}");
    assert!(daemon.stop().success());
}

/// The "N of M settled run(s) ... taken back" the daemon's start-up logs,
/// as (taken back, named by the index); `None` without an index used.
fn taken_back(log: &str) -> Option<(usize, usize)> {
    let line = log.lines().find(|l| l.contains("taken back as settled"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let of = words.iter().position(|w| *w == "of")?;
    Some((words[of - 1].parse().ok()?, words[of + 1].parse().ok()?))
}

/// A daemon started on `root` that has finished its first scan; its log.
fn start_and_stop(server: &WandbServer, home: &Path, root: &Path, env: &[(&str, &str)]) -> String {
    let daemon = start_daemon(server, home, &[root], &["--no-slurm"], env);
    wait_until(Duration::from_secs(30), "the daemon's first scan", || {
        daemon.log_text().contains("syncd run: watching")
    });
    let log = daemon.log_text();
    assert!(daemon.stop().success());
    log
}

#[test]
fn the_settled_run_index_takes_back_only_runs_whose_files_ledger_and_settings_are_unchanged() {
    use crate::sync::WrittenRun;
    use syncd::source::wandb::proto::{RecordType, RunExitRecord};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    let wandb = root.join("wandb");
    let finished = |id: &str| {
        let mut run = WrittenRun::create(&wandb, id);
        for step in 0..3 {
            run.history(step);
        }
        run.append(RecordType::Exit(RunExitRecord {
            exit_code: 0,
            runtime: 3,
            not_complete: false,
        }));
        run
    };
    let mut grown = finished("fxgrown");
    let gone = finished("fxgone");
    let moved = finished("fxmoved");
    finished("fxsame");
    let resumed = committed_root().join("0.31.0/resumed/wandb");
    let mut fragments: Vec<PathBuf> = std::fs::read_dir(&resumed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fragments.sort();
    let copy_fragment = |dir: &Path| copy_tree_rooted(dir, &wandb.join(dir.file_name().unwrap()));
    copy_fragment(&fragments[0]);
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let out = syncd_sync(&server, &home, &[root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = |id: &str| server.run(id).unwrap()["history_lines_received"].clone();
    let index = home.join("state/settled-runs.index");

    // The first start looks at every run and writes the index; the next
    // takes all five back from it, and nothing is sent again.
    let log = start_and_stop(&server, &home, &root, &[]);
    assert_eq!(taken_back(&log), None, "{log}");
    assert!(log.contains("5 run(s) known (5 settled"), "{log}");
    assert!(index.is_file());
    let log = start_and_stop(&server, &home, &root, &[]);
    assert_eq!(taken_back(&log), Some((5, 5)), "{log}");
    assert!(log.contains("5 run(s) known (5 settled"), "{log}");

    // While no daemon runs: one run's file grows, another gets a new
    // fragment, a ledger entry is deleted, and a `.env` sends a run to
    // another server.
    for step in 3..6 {
        grown.history(step);
    }
    copy_fragment(&fragments[1]);
    for entry in std::fs::read_dir(home.join("state/runs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("wandb-fxgone-") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let elsewhere = WandbServer::start();
    let env_file = moved.dir.join(".env");
    std::fs::write(
        &env_file,
        format!(
            "WANDB_BASE_URL={}\nWANDB_API_KEY={}\n",
            elsewhere.base_url(),
            elsewhere.api_key()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(gone);

    let daemon = start_daemon(&server, &home, &[&root], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(30), "the daemon's first scan", || {
        daemon.log_text().contains("syncd run: watching")
    });
    // Unchanged: fxsame, and fxresume's first fragment (its new one wakes it).
    let log = daemon.log_text();
    assert_eq!(taken_back(&log), Some((2, 5)), "{log}");
    wait_until(Duration::from_secs(30), "the grown run's new lines", || {
        steps(&server.run("fxgrown").unwrap()) == 6
    });
    wait_until(
        Duration::from_secs(30),
        "the deleted entry's run again",
        || lines("fxgone") == 6,
    );
    wait_until(
        Duration::from_secs(30),
        "the moved run on its new server",
        || elsewhere.run("fxmoved").is_some_and(|r| steps(&r) == 3),
    );
    let reference = WandbServer::start();
    let both = tmp.path().join("reference");
    copy_tree_rooted(&resumed, &both.join("wandb"));
    let out = syncd_sync(
        &reference,
        &tmp.path().join("ref-home"),
        &[both.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let expected = reference.run("fxresume").unwrap();
    wait_until(Duration::from_secs(30), "the new fragment's lines", || {
        steps(&server.run("fxresume").unwrap()) == steps(&expected)
    });
    // A slow poll more: each line sent once (the deleted entry's twice).
    std::thread::sleep(Duration::from_secs(3));
    assert!(daemon.stop().success());
    assert_eq!(lines("fxgrown"), 6);
    assert_eq!(lines("fxsame"), 3);
    assert_eq!(lines("fxgone"), 6);
    assert_eq!(lines("fxmoved"), 3);
    assert_eq!(
        server.run("fxresume").unwrap()["history_lines_received"],
        expected["history_lines_received"]
    );

    // Written again with what changed: all five back.
    let log = start_and_stop(&server, &home, &root, &[]);
    assert_eq!(taken_back(&log), Some((5, 5)), "{log}");

    // Another environment (here a netrc the daemon is pointed at) is
    // another setup: the index is not used, every run is looked at.
    let netrc = tmp.path().join("netrc").display().to_string();
    let log = start_and_stop(&server, &home, &root, &[("NETRC", &netrc)]);
    assert_eq!(taken_back(&log), None, "{log}");
    assert!(log.contains("written with other settings"), "{log}");
    assert!(log.contains("5 run(s) known (5 settled"), "{log}");

    // Written for that setup, so not used by the next start either.
    let log = start_and_stop(&server, &home, &root, &[]);
    assert!(log.contains("written with other settings"), "{log}");
    let log = start_and_stop(&server, &home, &root, &[]);
    assert_eq!(taken_back(&log), Some((5, 5)), "{log}");

    // A damaged index is not used, and is written again whole.
    let mut bytes = std::fs::read(&index).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&index, &bytes).unwrap();
    let log = start_and_stop(&server, &home, &root, &[]);
    assert_eq!(taken_back(&log), None, "{log}");
    assert!(log.contains("not used"), "{log}");
    let log = start_and_stop(&server, &home, &root, &[]);
    assert_eq!(taken_back(&log), Some((5, 5)), "{log}");
    for (id, sent) in [("fxgrown", 6), ("fxsame", 3), ("fxgone", 6)] {
        assert_eq!(lines(id), sent, "{id}: nothing sent again");
    }
    assert_eq!(
        elsewhere.run("fxmoved").unwrap()["history_lines_received"],
        3
    );
}
