//! The first ten minutes of a new user, and `sync` telling the truth: the
//! quick start's layout (a private `.env` beside `wandb/`) used from the
//! project directory with relative paths; one run reached by several
//! spellings, a symlink or a moved project; an unreachable or silent server;
//! dry runs; help and piped tables.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::sync::{committed_case, text};
use crate::wandb_server::WandbServer;

const RUN: &str = "fxfinish";

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The quick start's layout: `<tmp>/proj/wandb/<run>` (the finished
/// fixture run), with nothing else. Returns the project directory.
fn project(tmp: &Path) -> PathBuf {
    let wandb = committed_case("0.31.0", "finished", tmp);
    let proj = tmp.join("proj");
    std::fs::rename(wandb.parent().unwrap(), &proj).unwrap();
    proj
}

fn run_dir_name(proj: &Path) -> String {
    let entry = std::fs::read_dir(proj.join("wandb"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap();
    entry.file_name().to_str().unwrap().to_string()
}

/// `syncd sync ARGS` in `cwd` with nothing about W&B in the environment:
/// server and key come from `.env` files; state and config under `home`.
fn sync_in(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    sync_command(home, cwd, args).output().unwrap()
}

fn sync_command(home: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncd"));
    cmd.arg("sync")
        .args(["--state-dir", home.join("state").to_str().unwrap()])
        .args(args)
        .current_dir(cwd)
        .env_remove("WANDB_API_KEY")
        .env_remove("WANDB_BASE_URL")
        .env_remove("WANDB_ENTITY")
        .env_remove("WANDB_PROJECT")
        .env_remove("WANDB_DIR")
        .env_remove("NETRC")
        .env_remove("SYNCD_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"));
    cmd
}

fn env_for(server: &WandbServer, entity: &str) -> String {
    format!(
        "WANDB_BASE_URL={}\nWANDB_API_KEY={}\nWANDB_ENTITY={entity}\n",
        server.base_url(),
        server.api_key()
    )
}

fn counters(server: &WandbServer) -> Value {
    server.snapshot()["counters"].clone()
}

#[test]
fn sync_in_the_project_directory_finds_the_env_beside_wandb() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let run = format!("wandb/{}", run_dir_name(&proj));
    for (i, args) in [vec![], vec!["wandb"], vec![run.as_str()]]
        .into_iter()
        .enumerate()
    {
        let server = WandbServer::start();
        write_private(&proj.join(".env"), &env_for(&server, "team-proj"));
        let home = tmp.path().join(format!("home{i}"));
        std::fs::create_dir_all(&home).unwrap();
        let out = sync_in(&home, &proj, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let on_server = server
            .run(RUN)
            .unwrap_or_else(|| panic!("{args:?}: not sent"));
        assert_eq!(on_server["entity"], "team-proj", "{args:?}");
        assert_eq!(on_server["complete"], true, "{args:?}");
    }

    // The same `.env` readable by everyone is refused, not skipped.
    let server = WandbServer::start();
    write_private(&proj.join(".env"), &env_for(&server, "team-proj"));
    std::fs::set_permissions(proj.join(".env"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let home = tmp.path().join("home-exposed");
    std::fs::create_dir_all(&home).unwrap();
    for args in [vec![], vec!["wandb"], vec![run.as_str()]] {
        let out = sync_in(&home, &proj, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    }
    assert!(server.operation_names().is_empty(), "nothing was sent");
}

#[test]
fn the_no_key_message_names_the_env_beside_wandb_first() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = sync_in(&home, &proj, &[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    let beside = format!("{}/.env", proj.display());
    let user = format!("{}/config/syncd/.env", home.display());
    let (at_beside, at_user) = (shown.find(&beside), shown.find(&user));
    assert!(
        at_beside.is_some() && at_user.is_some() && at_beside < at_user,
        "{shown}"
    );
}

/// A run synced by one path and then another that is the same file:
/// continued (nothing re-sent, not quarantined).
fn assert_second_spelling_continues(
    server: &WandbServer,
    home: &Path,
    first: (&Path, &str),
    second: (&Path, &str),
) {
    let out = sync_in(home, first.0, &["--json", first.1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = counters(server);
    assert_eq!(before["history_lines_received"], 200);
    let out = sync_in(home, second.0, &["--json", second.1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["runs"][0]["phase"], "synced", "{report:#}");
    assert!(report["runs"][0]["error"].is_null(), "{report:#}");
    assert_eq!(counters(server), before, "nothing is sent again");
    let ledgers = std::fs::read_dir(home.join("state/runs")).unwrap().count();
    assert_eq!(ledgers, 1, "one ledger entry for one run");
}

#[test]
fn one_run_by_another_spelling_a_symlink_or_a_moved_project_is_continued() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    let key_env = |server: &WandbServer, proj: &Path| {
        write_private(&proj.join(".env"), &env_for(server, "team"));
    };

    // `./wandb` from the project directory, then its absolute path.
    let spelled = tmp.join("spelled");
    let proj = project(&spelled);
    let server = WandbServer::start();
    key_env(&server, &proj);
    let abs = proj.join("wandb");
    assert_second_spelling_continues(
        &server,
        &spelled.join("home"),
        (&proj, "./wandb"),
        (&tmp, abs.to_str().unwrap()),
    );

    // Through a symlink to the project, then directly.
    let linked = tmp.join("linked");
    let proj = project(&linked);
    let link = linked.join("link");
    std::os::unix::fs::symlink(&proj, &link).unwrap();
    let server = WandbServer::start();
    key_env(&server, &proj);
    let (via_link, direct) = (link.join("wandb"), proj.join("wandb"));
    assert_second_spelling_continues(
        &server,
        &linked.join("home"),
        (&tmp, via_link.to_str().unwrap()),
        (&tmp, direct.to_str().unwrap()),
    );

    // The project directory moved as a whole between two syncs.
    let moved = tmp.join("moved");
    let proj = project(&moved);
    let server = WandbServer::start();
    key_env(&server, &proj);
    let home = moved.join("home");
    let out = sync_in(&home, &proj, &["wandb"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = counters(&server);
    let elsewhere = moved.join("elsewhere/proj2");
    std::fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    std::fs::rename(&proj, &elsewhere).unwrap();
    let out = sync_in(&home, &elsewhere, &["--json", "wandb"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(counters(&server), before, "nothing is sent again");
    // The ledger shows the run where it is now.
    let entry = only_ledger_entry(&home);
    let first = entry["fragments"][0]["path"].as_str().unwrap();
    assert!(first.starts_with(elsewhere.to_str().unwrap()), "{first}");
}

fn only_ledger_entry(home: &Path) -> Value {
    let files: Vec<PathBuf> = std::fs::read_dir(home.join("state/runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap()
}

/// The key a syncd before fragment identities gave a run: its id and a
/// digest of its first fragment's canonical path and target.
fn legacy_key(run_id: &str, first_fragment: &Path, base_url: &str) -> String {
    let canonical = first_fragment.canonicalize().unwrap();
    let mut hasher = Sha256::new();
    for part in [canonical.to_str().unwrap(), base_url, "", ""] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("wandb-{run_id}-{hex}")
}

#[test]
fn an_entry_stored_under_the_old_key_is_continued_and_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let server = WandbServer::start();
    write_private(&proj.join(".env"), &env_for(&server, "team"));
    let home = tmp.path().join("home");
    let out = sync_in(&home, &proj, &["wandb"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = counters(&server);

    // Store the entry as the old syncd did: under the path-derived key.
    let old = store_under_the_old_key(&home, &server);
    let runs = home.join("state/runs");

    let out = sync_in(&home, &proj, &["--json", "wandb"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(counters(&server), before, "nothing is sent again");
    let moved = only_ledger_entry(&home);
    assert_ne!(moved["key"], old.as_str(), "moved to the new key");
    assert_eq!(moved["phase"], "synced");
    assert!(!runs.join(format!("{old}.json")).exists());
}

/// Replaces the one ledger entry by the same entry under the key the
/// syncd before fragment identities gave it; returns that key.
fn store_under_the_old_key(home: &Path, server: &WandbServer) -> String {
    let mut entry = only_ledger_entry(home);
    let fragment = PathBuf::from(entry["fragments"][0]["path"].as_str().unwrap());
    let old = legacy_key(RUN, &fragment, &server.base_url());
    entry["key"] = Value::String(old.clone());
    let runs = home.join("state/runs");
    for file in std::fs::read_dir(&runs).unwrap().flatten() {
        std::fs::remove_file(file.path()).unwrap();
    }
    std::fs::write(
        runs.join(format!("{old}.json")),
        serde_json::to_vec_pretty(&entry).unwrap(),
    )
    .unwrap();
    old
}

#[test]
fn the_daemon_takes_over_an_entry_stored_under_the_old_key_without_sending_again() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let server = WandbServer::start();
    write_private(&proj.join(".env"), &env_for(&server, "team"));
    let home = tmp.path().join("home");
    let out = sync_in(&home, &proj, &["wandb"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let old = store_under_the_old_key(&home, &server);
    let before = counters(&server);

    let daemon = crate::daemon::start_daemon(
        &server,
        &home,
        &[&proj.join("wandb")],
        &["--no-slurm"],
        &[("WANDB_API_KEY", ""), ("WANDB_BASE_URL", "")],
    );
    // Moved when the daemon first looks at the run.
    let runs = home.join("state/runs");
    crate::daemon::wait_until(Duration::from_secs(10), "the entry to move", || {
        !runs.join(format!("{old}.json")).exists()
    });
    // Past a full poll (2 s): the run is known as synced, nothing is sent.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(counters(&server), before, "nothing is sent again");
    let status = crate::daemon::status_json(&home);
    assert_eq!(status["runs"].as_array().unwrap().len(), 1, "{status:#}");
    assert_eq!(status["runs"][0]["state"], "synced", "{status:#}");
    assert!(daemon.stop().success());
}

#[test]
fn a_server_nothing_listens_on_fails_in_seconds_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    write_private(
        &proj.join(".env"),
        &format!("WANDB_BASE_URL=http://127.0.0.1:{port}\nWANDB_API_KEY=k\n"),
    );
    let started = Instant::now();
    // The default schedule (waits from 2 s on): only the first-contact
    // limit makes this short.
    let wandb = proj.join("wandb");
    let out = sync_in(&tmp.path().join("home"), &proj, &[wandb.to_str().unwrap()]);
    let took = started.elapsed();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(took < Duration::from_secs(20), "took {took:?}: {shown}");
    assert!(shown.contains("0 of 1 run(s) synced"), "{shown}");
    assert!(
        shown.contains("attempt 1 of 3") && shown.contains("attempt 2 of 3"),
        "{shown}"
    );
}

/// A server that accepts connections and never answers, until dropped.
struct Silent {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Silent {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_server_that_never_answers_shows_each_retry_and_ends_within_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let silent = Silent::start();
    write_private(
        &proj.join(".env"),
        &format!(
            "WANDB_BASE_URL=http://127.0.0.1:{}\nWANDB_API_KEY=k\n",
            silent.port
        ),
    );
    let started = Instant::now();
    let out = sync_in(
        &tmp.path().join("home"),
        &proj,
        &[
            "--timeout",
            "1s",
            "--attempts",
            "4",
            "--retry-min-ms",
            "100",
            proj.join("wandb").to_str().unwrap(),
        ],
    );
    let took = started.elapsed();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    // 4 attempts of 1 s and waits of 0.1 + 0.2 + 0.4 s (plus jitter).
    assert!(took < Duration::from_secs(15), "took {took:?}: {shown}");
    for n in 1..=3 {
        assert!(shown.contains(&format!("attempt {n} of 4")), "{shown}");
    }
    assert!(shown.contains("timed out"), "{shown}");
    assert!(shown.contains("0 of 1 run(s) synced"), "{shown}");
    drop(silent);
}

#[test]
fn a_dry_run_resolves_like_the_real_sync_and_says_what_it_would_send() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let server = WandbServer::start();
    write_private(&proj.join(".env"), &env_for(&server, "team"));
    let home = tmp.path().join("home");
    // Absolute: what is tested here is the dry run, not the path.
    let wandb = proj.join("wandb");
    let wandb = wandb.to_str().unwrap();

    // Never uploaded: queued, and everything would be sent.
    let out = sync_in(&home, &proj, &["--dry-run", "--json", wandb]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["phase"], "queued", "{report:#}");
    assert!(
        run["would_send"]["lines"].as_u64().unwrap() >= 200,
        "{report:#}"
    );
    assert!(
        run["would_send"]["files"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert!(
        run["would_send"]["bytes"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    let out = sync_in(&home, &proj, &["--dry-run", wandb]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("would send") && text(&out).contains("nothing was sent"),
        "{}",
        text(&out)
    );
    assert_eq!(counters(&server)["requests"], 0);
    let stored = std::fs::read_dir(home.join("state/runs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "a dry run writes no ledger");

    // Once synced, the dry run finds the run's entry: nothing to send.
    let out = sync_in(&home, &proj, &[wandb]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = counters(&server);
    let out = sync_in(&home, &proj, &["--dry-run", "--json", wandb]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["phase"], "synced", "{report:#}");
    assert_eq!(run["would_send"]["lines"], 0, "{report:#}");
    assert_eq!(run["would_send"]["files"], 0, "{report:#}");
    assert_eq!(counters(&server), before);

    // An exposed `.env`: refused by the dry run as by the real sync.
    std::fs::set_permissions(proj.join(".env"), std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [vec!["--dry-run", wandb], vec![wandb]] {
        let out = sync_in(&home, &proj, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    }
}

#[test]
fn help_shows_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "./wandb",
        "[default: 5s",
        "[default: 2m",
        "[default: 4",
        "[default: 30m",
        "[default: text]",
    ] {
        assert!(help.contains(expected), "{expected:?} missing:\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["sync", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "./wandb",
        "[default: 60s]",
        "[default: 12]",
        "[default: 10m]",
    ] {
        assert!(help.contains(expected), "{expected:?} missing:\n{help}");
    }
}

#[test]
fn piped_tables_are_narrow() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = project(tmp.path());
    let home = tmp.path().join("home");
    // A failed run: the longest note there is, a transport error.
    write_private(
        &proj.join(".env"),
        "WANDB_BASE_URL=http://127.0.0.1:9\nWANDB_API_KEY=k\n",
    );
    let wandb = proj.join("wandb");
    let out = sync_in(
        &home,
        &proj,
        &["--retry-min-ms", "1", wandb.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let sync_table = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args([
            "status",
            "--state-dir",
            home.join("state").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let status_table = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status_table.contains(RUN), "{status_table}");
    for table in [sync_table, status_table] {
        for line in table.lines() {
            assert!(
                line.chars().count() <= 120,
                "{} columns: {line}",
                line.len()
            );
        }
    }
}
