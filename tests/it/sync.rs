//! `syncd sync` against the W&B-protocol test server: exactly-once while a
//! real wandb process writes, crashes of syncd itself, injected faults, keys.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::official_sync::{copy_tree_rooted, wandb_cli, wandb_sync};
use crate::support::{committed_root, generated_roots};
use crate::wandb_server::{Endpoint, Fault, WandbServer};

/// The wandb 0.31.0 venv the test script installs, from its `wandb` CLI.
pub fn venv() -> Option<PathBuf> {
    Some(wandb_cli()?.parent()?.parent()?.to_path_buf())
}

/// `syncd sync` with the server's URL and key; `HOME` points at `home` so no
/// real netrc or state is used.
pub fn syncd_sync(server: &WandbServer, home: &Path, args: &[&str]) -> Output {
    syncd_sync_with_key(server, home, server.api_key(), args)
}

pub fn syncd_command(server: &WandbServer, home: &Path, key: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncd"));
    cmd.arg("sync")
        .args([
            "--state-dir",
            home.join("state").to_str().unwrap(),
            "--retry-min-ms",
            "50",
        ])
        .args(args)
        .env("WANDB_API_KEY", key)
        .env("WANDB_BASE_URL", server.base_url())
        .env("HOME", home)
        .env_remove("WANDB_DIR")
        .env_remove("NETRC")
        .env_remove("SYNCD_STATE_DIR")
        .env_remove("XDG_STATE_HOME");
    cmd
}

fn syncd_sync_with_key(server: &WandbServer, home: &Path, key: &str, args: &[&str]) -> Output {
    syncd_command(server, home, key, args)
        .output()
        .expect("run syncd sync")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn committed_case(version: &str, case: &str, into: &Path) -> PathBuf {
    let dst = into.join(case);
    copy_tree_rooted(&committed_root().join(version).join(case), &dst);
    dst.join("wandb")
}

/// `_step` of every stored history line, in line order.
fn steps(run: &Value) -> Vec<i64> {
    run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["_step"].as_i64().unwrap_or(-1))
        .collect()
}

#[test]
fn finished_run_uploads_once_and_a_second_sync_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = server.run("fxfinish").expect("run on the server");
    assert_eq!(run["complete"], true);
    assert_eq!(run["exitcode"], 0);
    assert_eq!(steps(&run), (0..200).collect::<Vec<_>>());
    assert_eq!(run["history_lines_received"], 200);
    assert_eq!(run["config"]["lr"]["value"], 0.001, "{:#}", run["config"]);
    assert_eq!(run["displayName"], "finished-demo");
    assert!(
        run["storage"]["requirements.txt"].is_object() || run["storage"]["output.log"].is_object()
    );
    let before = server.snapshot()["counters"].clone();

    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = server.snapshot()["counters"].clone();
    assert_eq!(before, after, "a second sync of a synced run sends nothing");
    // Run dirs are read-only to syncd: no markers were written.
    let names: Vec<_> = walk(&wandb_dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".synced") || n.ends_with(".syncstate")),
        "{names:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn truncated_run_stays_open_unless_finalized() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "sigkill", tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(
        &server,
        tmp.path(),
        &["--json", wandb_dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["runs"][0]["phase"], "live");
    let run = server.run("fxsigkil").unwrap();
    assert_ne!(
        run["complete"], true,
        "a run without exit record is not completed"
    );
    let rows = steps(&run).len();
    assert!(rows > 100);

    // Its file was just copied: the writer might be alive, so no finalizing yet.
    let out = syncd_sync(
        &server,
        tmp.path(),
        &["--finalize", wandb_dir.to_str().unwrap()],
    );
    assert!(text(&out).contains("not finalized"), "{}", text(&out));
    assert_ne!(server.run("fxsigkil").unwrap()["complete"], true);

    let out = syncd_sync(
        &server,
        tmp.path(),
        &[
            "--finalize",
            "--stale-after",
            "0s",
            "--json",
            wandb_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["runs"][0]["phase"], "finalized");
    let run = server.run("fxsigkil").unwrap();
    assert_eq!(run["complete"], true);
    assert_eq!(run["exitcode"], 1);
    assert_eq!(steps(&run).len(), rows, "finalizing sends no history again");
    assert_eq!(
        run["history_lines_received"].as_u64().unwrap() as usize,
        rows
    );
}

#[test]
fn resumed_fragments_become_one_run_with_continued_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "resumed", tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runs = server.snapshot()["runs"].as_array().unwrap().len();
    assert_eq!(runs, 1);
    let run = server.run("fxresume").unwrap();
    assert_eq!(steps(&run), (0..10).collect::<Vec<_>>());
    assert_eq!(run["complete"], true);
}

#[test]
fn wrong_key_fails_fast_and_no_key_is_ever_shown_or_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", tmp.path());
    let server = WandbServer::start();
    let wrong = "wrongkey0123456789abcdef0123456789abcdef";
    let started = Instant::now();
    let out = syncd_sync_with_key(&server, tmp.path(), wrong, &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "401 is not retried"
    );
    let shown = text(&out);
    assert!(shown.contains("401"), "{shown}");
    assert!(!shown.contains(wrong), "the key must never be printed");

    let out = syncd_sync(
        &server,
        tmp.path(),
        &["--json", wandb_dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let right = server.api_key().to_string();
    for output in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(output).contains(&right));
    }
    for file in walk(&tmp.path().join("state")) {
        let bytes = std::fs::read(&file).unwrap();
        let content = String::from_utf8_lossy(&bytes);
        assert!(
            !content.contains(&right) && !content.contains(wrong),
            "key found in {}",
            file.display()
        );
    }
}

#[test]
fn dry_run_sends_nothing_and_keeps_no_state() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "exit_code_3", tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(
        &server,
        tmp.path(),
        &["--dry-run", "--json", wandb_dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["runs"][0]["history_lines"], 5);
    assert_eq!(report["runs"][0]["exit_code"], 3);
    assert_eq!(server.snapshot()["counters"]["requests"], 0);
    assert!(walk(&tmp.path().join("state")).is_empty());
}

/// Each endpoint fails twice in each way; the sync converges to the same
/// state as a clean one.
#[test]
fn faults_on_every_endpoint_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", tmp.path());
    let clean = WandbServer::start();
    let out = syncd_sync(
        &clean,
        &tmp.path().join("clean"),
        &[wandb_dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let reference = comparable(&clean.run("fxfinish").unwrap());

    let endpoints = [
        Endpoint::Operation("UpsertBucket".into()),
        Endpoint::Operation("CreateRunFiles".into()),
        Endpoint::FileStream,
        Endpoint::Storage,
    ];
    let faults = [
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        Fault::Status {
            code: 500,
            retry_after: None,
        },
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        Fault::Drop,
        Fault::DropAfterProcessing,
    ];
    std::thread::scope(|scope| {
        for (e, endpoint) in endpoints.iter().enumerate() {
            let wandb_dir = &wandb_dir;
            let reference = &reference;
            let faults = &faults;
            let home = tmp.path().join(format!("faults-{e}"));
            scope.spawn(move || {
                for (f, fault) in faults.iter().enumerate() {
                    let server = WandbServer::start();
                    server.inject(endpoint.clone(), fault.clone(), 2);
                    let home = home.join(f.to_string());
                    let out = syncd_sync(&server, &home, &[wandb_dir.to_str().unwrap()]);
                    let ctx = format!("{endpoint:?} {fault:?}");
                    assert_eq!(out.status.code(), Some(0), "{ctx}: {}", text(&out));
                    let run = server.run("fxfinish").unwrap();
                    assert_eq!(&comparable(&run), reference, "{ctx}");
                    assert_eq!(run["gaps"], 0, "{ctx}");
                }
            });
        }
    });
}

/// What must be equal between two uploads of the same run: everything but
/// console timestamps (the time of the upload) and counters.
pub fn comparable(run: &Value) -> Value {
    let console: Vec<Value> = run["output"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .map(|l| {
                    let l = l.as_str().unwrap_or_default();
                    let (err, rest) = match l.strip_prefix("ERROR ") {
                        Some(rest) => (true, rest),
                        None => (false, l),
                    };
                    let text = rest.split_once(' ').map_or("", |(_, t)| t);
                    Value::String(format!("{}{text}", if err { "ERROR " } else { "" }))
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "entity": run["entity"], "project": run["project"], "name": run["name"],
        "config": run["config"], "summary": run["summary"], "history": run["history_raw"],
        "events": run["events"], "console": console, "storage": run["storage"],
        "complete": run["complete"], "exitcode": run["exitcode"], "preempting": run["preempting"],
        "alerts": run["alerts"].as_array().map_or(0, Vec::len),
        "tags": run["tags"], "notes": run["notes"], "displayName": run["displayName"],
    })
}

/// SIGKILL `syncd sync` at random moments of a large upload, again and
/// again; then let it finish. The server must hold exactly what one clean
/// sync leaves: no line lost, none duplicated.
#[test]
fn killed_syncs_lose_and_duplicate_nothing() {
    let Some(large) = large_run() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let clean = WandbServer::start();
    let out = syncd_sync(
        &clean,
        &tmp.path().join("clean"),
        &[large.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let reference = comparable(&clean.run("fxlarge0").unwrap());
    let rows = reference["history"].as_array().unwrap().len();

    let server = WandbServer::start();
    let home = tmp.path().join("crashy");
    let iterations: usize = std::env::var("SYNCD_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut killed = 0;
    for i in 0..iterations {
        let mut child: Child = syncd_command(
            &server,
            &home,
            server.api_key(),
            &["--batch-bytes", "32768", large.to_str().unwrap()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let wait = Duration::from_millis(20 + fastrand_u64(i as u64) % 400);
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    let out = syncd_sync(&server, &home, &[large.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = server.run("fxlarge0").unwrap();
    assert_eq!(run["gaps"], 0);
    assert_eq!(
        comparable(&run),
        reference,
        "state after {killed} kills equals a clean sync"
    );
    let received = run["history_lines_received"].as_u64().unwrap() as usize;
    eprintln!(
        "crash test: {killed} kills of {iterations}; {received} history lines received for {rows} rows"
    );
    assert!(killed > 0, "at least one sync was killed mid-way");
}

/// Deterministic pseudo-random numbers (no extra test dependency).
fn fastrand_u64(seed: u64) -> u64 {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x2545_F491_4F6C_DD1D);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// A real run of 20,000 steps written by wandb 0.31.0 (cached next to the
/// venv), for tests that need a sync that takes a while.
pub fn large_run() -> Option<PathBuf> {
    let venv = venv()?;
    let dir = venv.parent().unwrap().join("large-run-v1");
    let done = dir.join(".complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(venv.join("bin/python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb/live_writer.py"))
            .args([
                "--dir",
                dir.to_str().unwrap(),
                "--id",
                "fxlarge0",
                "--steps",
                "20000",
                "--metrics",
                "10",
            ])
            .env("HOME", &dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(&done, b"").unwrap();
    }
    Some(dir.join("wandb"))
}

/// A real wandb process logs while `syncd sync` runs again and again; then
/// once after it ends. Every history line is sent exactly once, the run is
/// never completed while live, and completed once at the end. The official
/// client in the same situation duplicates rows and marks the live run failed.
#[test]
fn growing_run_is_sent_exactly_once_while_the_official_client_duplicates() {
    let Some(venv) = venv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let steps_total = 3000;
    let writer_dir = tmp.path().join("live");
    std::fs::create_dir_all(&writer_dir).unwrap();
    let mut writer = Command::new(venv.join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb/live_writer.py"))
        .args(["--dir", writer_dir.to_str().unwrap(), "--id", "fxlive00"])
        .args(["--steps", &steps_total.to_string(), "--sleep", "0.002"])
        .env("HOME", &writer_dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let wandb_dir = writer_dir.join("wandb");
    let server = WandbServer::start();
    let official = WandbServer::start();
    let mut syncs = 0;
    let mut official_syncs = 0;
    let mut seen_partial = false;
    while writer.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(300));
        if crate::support::wandb_files_under(&wandb_dir).is_empty() {
            continue;
        }
        let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        syncs += 1;
        if let Some(run) = server.run("fxlive00") {
            let n = steps(&run).len();
            // Completed only once the writer's exit record is there, which
            // it writes after its last step (the process may still be exiting).
            if run["complete"] == true {
                assert_eq!(n, steps_total, "a live run is never completed");
            }
            seen_partial |= n > 0 && n < steps_total;
        }
        if official_syncs < 3 {
            // The official client on a snapshot of the same moment.
            let copy = tmp.path().join(format!("official-{official_syncs}"));
            copy_tree_rooted(&wandb_dir, &copy);
            official_wandb_sync(&venv, &official, &copy);
            official_syncs += 1;
        }
    }
    assert!(writer.wait().unwrap().success());
    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = server.run("fxlive00").unwrap();
    assert_eq!(
        steps(&run),
        (0..steps_total as i64).collect::<Vec<_>>(),
        "each step once, in order"
    );
    assert_eq!(
        run["history_lines_received"], steps_total,
        "every history line sent exactly once over {syncs} syncs"
    );
    assert_eq!(run["complete"], true);
    assert_eq!(run["exitcode"], 0);
    assert!(
        seen_partial,
        "the run was seen partially uploaded while live ({syncs} syncs)"
    );

    // The official client on the finished run, after its partial syncs.
    let copy = tmp.path().join("official-final");
    copy_tree_rooted(&wandb_dir, &copy);
    official_wandb_sync(&venv, &official, &copy);
    let theirs = official.run("fxlive00").unwrap();
    let their_rows = steps(&theirs).len();
    eprintln!(
        "growing run: syncd {syncs} syncs -> {} rows, {} lines received; official {} syncs -> {their_rows} rows",
        steps_total,
        run["history_lines_received"],
        official_syncs + 1
    );
    if official_syncs > 0 {
        assert!(
            their_rows > steps_total,
            "the official client duplicates rows when re-syncing ({their_rows})"
        );
    }
}

/// The official client on every run of `wandb_dir` (its exit status is
/// not checked: syncing a live run makes it fail, which is the point).
fn official_wandb_sync(venv: &Path, server: &WandbServer, wandb_dir: &Path) {
    let runs: Vec<PathBuf> = std::fs::read_dir(wandb_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("offline-run-")
        })
        .collect();
    let runs: Vec<&Path> = runs.iter().map(PathBuf::as_path).collect();
    let scratch = wandb_dir.parent().unwrap().join(format!(
        "{}-scratch",
        wandb_dir.file_name().unwrap().to_string_lossy()
    ));
    wandb_sync(
        &venv.join("bin/wandb"),
        server,
        server.api_key(),
        &scratch,
        &runs,
    );
}

/// The generated sets hold the media case with a `run.save` symlink that
/// points outside the run directory.
#[test]
fn symlinks_out_of_the_run_are_not_uploaded() {
    for set in generated_roots() {
        let media = set.join("media_save/wandb");
        if !media.exists() {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("media_save");
        copy_tree_rooted(&set.join("media_save"), &copy);
        let server = WandbServer::start();
        let out = syncd_sync(
            &server,
            tmp.path(),
            &["--json", copy.join("wandb").to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let run = server.run("fxmedia0").unwrap();
        assert!(
            run["storage"].get("notes.txt").is_none(),
            "{:#}",
            run["storage"]
        );
        let warnings = report["runs"][0]["warnings"].to_string();
        assert!(
            warnings.contains("notes.txt") && warnings.contains("outside"),
            "{warnings}"
        );
        let media: Vec<&String> = run["storage"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("media/"))
            .collect();
        assert_eq!(media.len(), 3, "{:#}", run["storage"]);
    }
}

#[test]
fn entity_and_project_can_be_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "exit_code_3", tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(
        &server,
        tmp.path(),
        &[
            "-e",
            "team-x",
            "-p",
            "elsewhere",
            wandb_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = server.run("fxexit03").unwrap();
    assert_eq!(
        (run["entity"].as_str(), run["project"].as_str()),
        (Some("team-x"), Some("elsewhere"))
    );
    assert_eq!(run["exitcode"], 3);
    // The same run to its own project is tracked separately.
    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(server.snapshot()["runs"].as_array().unwrap().len(), 2);
}

/// A ledger entry that does not load is reported and kept, and its run is
/// not uploaded again behind the user's back (every file and alert would
/// go again); moved away, as the message says, the run is uploaded again
/// from the start, to the same lines.
#[test]
fn a_damaged_ledger_entry_stops_its_run_until_it_is_moved_away() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = server.run("fxfinish").unwrap();
    let counters = server.snapshot()["counters"].clone();
    // Cut in half: not something a power loss leaves (durable copies are
    // replaced atomically), but what damage looks like.
    let runs = tmp.path().join("state/runs");
    let mut damaged = Vec::new();
    for entry in std::fs::read_dir(&runs).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        std::fs::write(entry.path(), &bytes[..bytes.len() / 2]).unwrap();
        damaged.push((entry.path(), bytes[..bytes.len() / 2].to_vec()));
    }
    let out = syncd_sync(
        &server,
        tmp.path(),
        &["--json", wandb_dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["runs"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("is damaged") && error.contains("move it away"),
        "{error}"
    );
    assert_eq!(
        server.snapshot()["counters"],
        counters,
        "nothing is sent for the run"
    );
    for (path, bytes) in &damaged {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{}", path.display());
    }
    let status = crate::support::syncd(
        &[
            "status",
            "--json",
            "--state-dir",
            tmp.path().join("state").to_str().unwrap(),
        ],
        None,
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        status["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("is damaged")),
        "{status:#}"
    );

    let aside = tmp.path().join("damaged");
    std::fs::rename(&runs, &aside).unwrap();
    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = server.run("fxfinish").unwrap();
    assert_eq!(
        steps(&after),
        steps(&before),
        "the same lines, none duplicated"
    );
    assert_eq!(after["complete"], true);
    assert_eq!(comparable(&after), comparable(&before));
}

/// A run written record by record with syncd's own writer.
pub struct WrittenRun {
    writer: syncd::source::wandb::framing::LogWriter<std::fs::File>,
    pub dir: PathBuf,
    num: i64,
}

impl WrittenRun {
    pub fn create(wandb: &Path, id: &str) -> WrittenRun {
        use syncd::source::wandb::proto::{RecordType, RunRecord, Timestamp};
        let dir = wandb.join(format!("offline-run-20261123_120000-{id}"));
        std::fs::create_dir_all(dir.join("files")).unwrap();
        let file = std::fs::File::create(dir.join(format!("run-{id}.wandb"))).unwrap();
        let writer = syncd::source::wandb::framing::LogWriter::new(file).unwrap();
        let mut run = WrittenRun {
            writer,
            dir,
            num: 0,
        };
        run.append(RecordType::Run(RunRecord {
            run_id: id.into(),
            project: "files".into(),
            start_time: Some(Timestamp {
                seconds: 1_795_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }));
        run
    }

    pub fn append(&mut self, record_type: syncd::source::wandb::proto::RecordType) {
        use prost::Message;
        self.num += 1;
        let record = syncd::source::wandb::proto::Record {
            num: self.num,
            record_type: Some(record_type),
            info: None,
        };
        self.writer.append(&record.encode_to_vec()).unwrap();
    }

    pub fn history(&mut self, step: i64) {
        use syncd::source::wandb::proto::{HistoryItem, HistoryRecord, HistoryStep, RecordType};
        let item = |key: &str, value: i64| HistoryItem {
            key: String::new(),
            nested_key: vec![key.into()],
            typed: None,
            value_json: value.to_string(),
        };
        self.append(RecordType::History(HistoryRecord {
            item: vec![item("_step", step), item("loss", step)],
            step: Some(HistoryStep { num: step }),
        }));
    }
}

#[test]
fn a_live_file_unchanged_in_size_and_mtime_is_not_read_again_until_the_end() {
    use syncd::source::wandb::proto::{FilesItem, FilesRecord, RecordType, RunExitRecord};
    let tmp = tempfile::tempdir().unwrap();
    let wandb = tmp.path().join("wandb");
    let mut run = WrittenRun::create(&wandb, "fxlivefile");
    let ckpt = run.dir.join("files/ckpt.bin");
    std::fs::write(&ckpt, b"AAAA").unwrap();
    run.append(RecordType::Files(FilesRecord {
        files: vec![FilesItem {
            path: "ckpt.bin".into(),
            policy: 2, // LIVE
            kind: 0,
        }],
    }));
    run.history(0);
    let server = WandbServer::start();
    let sync = || {
        let out = syncd_sync(&server, tmp.path(), &[wandb.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    let stored = || server.stored_file("fxlivefile", "ckpt.bin").unwrap();
    sync();
    assert_eq!(stored(), b"AAAA");

    // Rewritten in place with the same size and mtime: a live upload trusts
    // size and mtime and does not read it.
    let mtime = std::fs::metadata(&ckpt).unwrap().modified().unwrap();
    let rewrite = |bytes: &[u8], mtime| {
        std::fs::write(&ckpt, bytes).unwrap();
        let file = std::fs::File::options().write(true).open(&ckpt).unwrap();
        file.set_modified(mtime).unwrap();
    };
    rewrite(b"BBBB", mtime);
    run.history(1);
    sync();
    assert_eq!(stored(), b"AAAA");

    // A new mtime: read, and the new bytes go.
    rewrite(b"CCCC", mtime + Duration::from_secs(5));
    run.history(2);
    sync();
    assert_eq!(stored(), b"CCCC");

    // The final upload compares contents whatever the mtime says.
    rewrite(b"DDDD", mtime + Duration::from_secs(5));
    run.append(RecordType::Exit(RunExitRecord {
        exit_code: 0,
        runtime: 3,
        not_complete: false,
    }));
    sync();
    let server_run = server.run("fxlivefile").unwrap();
    assert_eq!(server_run["complete"], true);
    assert_eq!(stored(), b"DDDD");
    assert_eq!(steps(&server_run), [0, 1, 2]);
}

/// One code path names a run: for every fixture case of every wandb
/// version, the display name and group `syncd sync` sets on the server are
/// the ones `syncd inspect` shows (writers before 0.21 keep the Slurm
/// variables only in `wandb-metadata.json`, and 0.19's do have them there).
#[test]
fn sync_names_every_run_as_inspect_shows_it() {
    let sets = generated_roots();
    let mut problems = Vec::new();
    let mut checked = 0;
    for set in &sets {
        let (version, cases) = crate::official_sync::cases_of(set);
        let tmp = tempfile::tempdir().unwrap();
        let server = WandbServer::start();
        for case in &cases {
            let dirs = crate::official_sync::copy_case(case, &tmp.path().join("cases"));
            let paths: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
            let (_, shown) = crate::support::inspect_json(&paths, &[]);
            let mut args: Vec<&str> = vec!["--finalize"];
            args.extend(dirs.iter().map(|d| d.to_str().unwrap()));
            syncd_sync(&server, &tmp.path().join("home"), &args);
            let ctx = format!("wandb {version} case {}", case.name);
            let Some(run) = server.run(&case.run_id) else {
                problems.push(format!("{ctx}: not on the server"));
                continue;
            };
            let naming = &shown["runs"][0]["naming"];
            let (name, group) = (&naming["display_name"], &naming["group"]);
            if run["displayName"] != *name || run["groupName"] != *group {
                problems.push(format!(
                    "{ctx}: inspect shows {name} / {group}, sync set {} / {}",
                    run["displayName"], run["groupName"]
                ));
            }
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        checked > 0 || sets.is_empty(),
        "no fixture case was checked"
    );
}
