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
use crate::sync::{committed_case, syncd_sync, text};
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
