//! Bad input in one run never stops the others: run directories named with
//! bytes that are not UTF-8, named pipes where files should be, symlinks
//! leading out of a run, unreadable directories, corrupt headers. Each is
//! either handled like any other run or reported, and the other runs of the
//! same `sync` or daemon are uploaded.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{start_daemon, status_json, wait_until};
use crate::official_sync::copy_tree_rooted;
use crate::support::generated_roots;
use crate::sync::{committed_case, syncd_command, syncd_sync, text};
use crate::wandb_server::WandbServer;

/// `wandb/` holding the committed `finished` run and the `exit_code_3` run,
/// the latter in a directory whose name ends in the byte 0xe9 (Latin-1 `é`,
/// not UTF-8).
fn project_with_a_non_utf8_run(tmp: &Path) -> (PathBuf, PathBuf) {
    let wandb = committed_case("0.31.0", "finished", tmp);
    let other = committed_case("0.31.0", "exit_code_3", &tmp.join("other"));
    let plain = other.join("offline-run-20261123_112323-fxexit03");
    let mut name = b"offline-run-20261123_112323-fxexit03-".to_vec();
    name.push(0xe9);
    let odd = wandb.join(PathBuf::from(OsString::from_vec(name)));
    std::fs::rename(plain, &odd).unwrap();
    (wandb, odd)
}

fn both_runs_complete(server: &WandbServer) -> bool {
    ["fxfinish", "fxexit03"]
        .iter()
        .all(|id| server.run(id).is_some_and(|r| r["complete"] == true))
}

fn status_text(home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args([
            "status",
            "--state-dir",
            home.join("state").to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

/// The ledger and `status --json` carry the odd path losslessly.
fn assert_status_carries_the_odd_path(home: &Path, odd: &Path) {
    let status = status_json(home);
    let runs = status["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{status:#}");
    let odd_row = runs
        .iter()
        .find(|r| r["run_id"] == "fxexit03")
        .unwrap_or_else(|| panic!("{status:#}"));
    let hex: String = std::os::unix::ffi::OsStrExt::as_bytes(odd.as_os_str())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(odd_row["path"]["bytes_hex"], hex, "{odd_row:#}");
    assert!(
        odd_row["path"]["display"]
            .as_str()
            .unwrap()
            .ends_with("fxexit03-\\xe9"),
        "{odd_row:#}"
    );
    let out = status_text(home);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_run_directory_named_with_bytes_that_are_not_utf8_is_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let (wandb, odd) = project_with_a_non_utf8_run(tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(&server, tmp.path(), &["--json", wandb.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["runs"].as_array().unwrap().len(), 2, "{report:#}");
    assert!(both_runs_complete(&server), "{:#}", server.snapshot());
    assert_eq!(server.run("fxexit03").unwrap()["exitcode"], 3);
    assert_status_carries_the_odd_path(tmp.path(), &odd);

    // Synced already: a second sync loads the ledger entry and sends nothing.
    let before = server.snapshot()["counters"].clone();
    let out = syncd_sync(&server, tmp.path(), &[wandb.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(server.snapshot()["counters"], before);
}

#[test]
fn the_daemon_uploads_beside_a_run_directory_named_with_bytes_that_are_not_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let (wandb, odd) = project_with_a_non_utf8_run(tmp.path());
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(&server, &home, &[&wandb], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(30), "both runs to complete", || {
        both_runs_complete(&server)
    });
    // The heartbeat is written (status trusts a running daemon only by it).
    wait_until(Duration::from_secs(10), "a heartbeat", || {
        status_json(&home)["daemon"]["running"] == true
    });
    assert_status_carries_the_odd_path(&home, &odd);
    assert!(daemon.stop().success());
}

/// `syncd sync` that must return within `limit`: killed (by its PID) and
/// failed if it does not.
fn sync_within(server: &WandbServer, home: &Path, args: &[&str], limit: Duration) -> Output {
    let out_path = home.join(format!("sync-{}.out", std::process::id()));
    let err_path = home.join(format!("sync-{}.err", std::process::id()));
    let mut child = syncd_command(server, home, server.api_key(), args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "syncd sync still running after {limit:?}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncd"))
        .arg("inspect")
        .args(args)
        .env_remove("WANDB_DIR")
        .output()
        .unwrap()
}

#[test]
fn a_named_pipe_for_env_refuses_its_run_at_once_and_the_others_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let piped = committed_case("0.31.0", "finished", tmp.path());
    let env = piped.parent().unwrap().join(".env");
    mkfifo(&env);
    let other = committed_case("0.31.0", "exit_code_3", tmp.path());
    let server = WandbServer::start();
    let out = sync_within(
        &server,
        tmp.path(),
        &["--json", piped.to_str().unwrap(), other.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == "fxfinish")
        .unwrap_or_else(|| panic!("{report:#}"));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(env.to_str().unwrap()) && error.contains("not a regular file"),
        "{report:#}"
    );
    assert!(server.run("fxfinish").is_none());
    assert_eq!(server.run("fxexit03").unwrap()["complete"], true);
}

#[test]
fn a_named_pipe_among_a_runs_files_is_skipped_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb = committed_case("0.31.0", "finished", tmp.path());
    let files = wandb.join("offline-run-20261123_112321-fxfinish/files");
    // `requirements.txt` is listed by the run (uploaded as it appears);
    // `output.log` is never read (it is made from the console records), so
    // a pipe in its place neither blocks nor replaces it.
    mkfifo(&files.join("requirements.txt"));
    mkfifo(&files.join("output.log"));
    let server = WandbServer::start();
    let out = sync_within(
        &server,
        tmp.path(),
        &["--json", wandb.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["runs"][0]["warnings"].to_string();
    assert!(
        warnings.contains("files/requirements.txt is not a regular file (a named pipe)"),
        "{warnings}"
    );
    assert!(!warnings.contains("output.log"), "{warnings}");
    let run = server.run("fxfinish").unwrap();
    assert_eq!(run["complete"], true);
    assert!(run["storage"].get("requirements.txt").is_none(), "{run:#}");
    let output = server.stored_file("fxfinish", "output.log").unwrap();
    assert!(
        String::from_utf8_lossy(&output).starts_with("starting training\n"),
        "{}",
        String::from_utf8_lossy(&output)
    );

    let out = inspect(&["--json", wandb.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = &report["runs"][0]["files"][0];
    assert_eq!(file["on_disk"], "not-a-file", "{file:#}");
    assert!(file["refused"].as_str().unwrap().contains("named pipe"));
}

const SECRET: &str = "SECRET-not-for-upload-4711";

/// Every stored byte of run `name` on the server, as text.
fn stored_text(server: &WandbServer, name: &str) -> String {
    let run = server.run(name).unwrap();
    let mut all = run.to_string();
    for path in run["storage"].as_object().unwrap().keys() {
        let bytes = server.stored_file(name, path).unwrap_or_default();
        all.push_str(&String::from_utf8_lossy(&bytes));
    }
    all
}

#[test]
fn a_files_directory_linked_out_of_the_run_is_not_uploaded_and_inspect_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    for name in ["requirements.txt", "output.log"] {
        std::fs::write(secret.join(name), SECRET).unwrap();
    }
    let wandb = committed_case("0.31.0", "finished", tmp.path());
    let run_dir = wandb.join("offline-run-20261123_112321-fxfinish");
    std::fs::remove_dir_all(run_dir.join("files")).unwrap();
    std::os::unix::fs::symlink(&secret, run_dir.join("files")).unwrap();

    let server = WandbServer::start();
    let out = syncd_sync(&server, tmp.path(), &["--json", wandb.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = server.run("fxfinish").unwrap();
    assert_eq!(run["complete"], true, "the run still completes");
    assert!(!stored_text(&server, "fxfinish").contains(SECRET));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["runs"][0]["warnings"].to_string();
    assert!(
        warnings.contains("files/requirements.txt leads outside the run directory"),
        "{warnings}"
    );

    let out = inspect(&["--json", wandb.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = &report["runs"][0]["files"][0];
    assert_eq!(file["on_disk"], "outside-link", "{file:#}");
    assert!(
        file["refused"]
            .as_str()
            .unwrap()
            .contains(secret.join("requirements.txt").to_str().unwrap()),
        "{file:#}"
    );
    let out = inspect(&[wandb.to_str().unwrap()]);
    assert!(
        text(&out).contains("files/requirements.txt leads outside the run directory"),
        "{}",
        text(&out)
    );
}

/// A directory symlink in the middle of the path (`files/media -> ...`),
/// which a check of the last component alone lets through.
#[test]
fn a_directory_inside_files_linked_out_of_the_run_is_not_uploaded() {
    let sets: Vec<PathBuf> = generated_roots()
        .into_iter()
        .filter(|s| s.join("media_save/wandb").is_dir())
        .collect();
    assert!(!sets.is_empty(), "no generated media_save fixture");
    for set in sets {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("media_save");
        copy_tree_rooted(&set.join("media_save"), &copy);
        let run_dir = std::fs::read_dir(copy.join("wandb"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("files/media").is_dir())
            .unwrap();
        let media = run_dir.join("files/media");
        let secret = tmp.path().join("secret");
        copy_tree_rooted(&media, &secret);
        let mut planted = 0;
        for image in crate::support::walk_files(&secret) {
            std::fs::write(&image, SECRET).unwrap();
            planted += 1;
        }
        assert!(planted > 0);
        std::fs::remove_dir_all(&media).unwrap();
        std::os::unix::fs::symlink(&secret, &media).unwrap();

        let server = WandbServer::start();
        let out = syncd_sync(
            &server,
            tmp.path(),
            &["--json", copy.join("wandb").to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let run = server.run("fxmedia0").unwrap();
        assert_eq!(run["complete"], true);
        assert!(!stored_text(&server, "fxmedia0").contains(SECRET));
        let stored_media = run["storage"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("media/"))
            .count();
        assert_eq!(stored_media, 0, "{:#}", run["storage"]);
        assert!(
            run["storage"].get("inside.txt").is_some(),
            "the run's own files still go: {:#}",
            run["storage"]
        );

        let out = inspect(&["--json", copy.join("wandb").to_str().unwrap()]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let refused: Vec<&Value> = report["runs"][0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["path"].as_str().unwrap().starts_with("media/"))
            .collect();
        assert_eq!(refused.len(), planted, "{report:#}");
        for f in refused {
            assert_eq!(f["on_disk"], "outside-link", "{f:#}");
        }
    }
}

/// `syncd sync` as a user who cannot read one run directory. Mode 000 stops
/// everyone but root, so under root the whole tree is given to `nobody` and
/// syncd runs as `nobody` (through `setpriv`): never skipped.
#[test]
fn an_unreadable_run_directory_is_reported_and_fails_the_sync() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let wandb = committed_case("0.31.0", "finished", tmp.path());
    let other = committed_case("0.31.0", "exit_code_3", &tmp.path().join("other"));
    let locked = wandb.join("offline-run-20261123_112323-fxexit03");
    std::fs::rename(other.join("offline-run-20261123_112323-fxexit03"), &locked).unwrap();
    let as_root = std::fs::metadata(tmp.path()).unwrap().uid() == 0;
    let binary = tmp.path().join("syncd");
    std::fs::copy(env!("CARGO_BIN_EXE_syncd"), &binary).unwrap();
    if as_root {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(chown.success());
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();

    let server = WandbServer::start();
    let mut cmd = if as_root {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary);
        cmd
    } else {
        Command::new(&binary)
    };
    let out = cmd
        .args(["sync", "--json", "--retry-min-ms", "50", "--state-dir"])
        .arg(tmp.path().join("state"))
        .arg(&wandb)
        .env("WANDB_API_KEY", server.api_key())
        .env("WANDB_BASE_URL", server.base_url())
        .env("HOME", tmp.path())
        .env_remove("WANDB_DIR")
        .env_remove("NETRC")
        .env_remove("SYNCD_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report:#}");
    assert_eq!(errors[0]["path"], locked.to_str().unwrap());
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{report:#}"
    );
    // The readable run beside it is synced.
    assert_eq!(server.run("fxfinish").unwrap()["complete"], true);
    assert!(server.run("fxexit03").is_none());
}

#[test]
fn the_daemon_reports_a_run_file_with_a_damaged_header_once_and_uploads_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb = committed_case("0.31.0", "finished", tmp.path());
    let other = committed_case("0.31.0", "exit_code_3", &tmp.path().join("other"));
    let damaged_dir = wandb.join("offline-run-20261123_112323-fxexit03");
    std::fs::rename(
        other.join("offline-run-20261123_112323-fxexit03"),
        &damaged_dir,
    )
    .unwrap();
    let damaged = damaged_dir.join("run-fxexit03.wandb");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[..4].copy_from_slice(b"JUNK");
    std::fs::write(&damaged, bytes).unwrap();

    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(&server, &home, &[&wandb], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(30), "the readable run", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    // Several polls (300 ms apart) and a full one (2 s) later.
    std::thread::sleep(Duration::from_secs(3));
    let log = daemon.log_text();
    let name = damaged.to_str().unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(name) && l.contains("file header"))
            .count(),
        1,
        "{log}"
    );
    // And status lists it among the daemon's problems.
    let status = crate::daemon::status_json(&home);
    let problems = status["daemon"]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| {
            let p = p.as_str().unwrap();
            p.contains(name) && p.contains("file header")
        }),
        "{status:#}"
    );
    assert!(server.run("fxexit03").is_none());
    assert!(daemon.stop().success());
}

#[test]
fn the_daemon_refuses_a_named_pipe_for_env_and_goes_on_with_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let piped = committed_case("0.31.0", "finished", tmp.path());
    let env = piped.parent().unwrap().join(".env");
    mkfifo(&env);
    let other = committed_case("0.31.0", "exit_code_3", tmp.path());
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(&server, &home, &[&piped, &other], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(30), "the other run", || {
        server
            .run("fxexit03")
            .is_some_and(|r| r["complete"] == true)
    });
    wait_until(Duration::from_secs(10), "the refusal in status", || {
        let status = status_json(&home);
        status["daemon"]["running"] == true
            && status["runs"].as_array().unwrap().iter().any(|r| {
                r["run_id"] == "fxfinish"
                    && r.to_string().contains(env.to_str().unwrap())
                    && r.to_string().contains("not a regular file")
            })
    });
    assert!(server.run("fxfinish").is_none());
    assert!(daemon.stop().success());
}
