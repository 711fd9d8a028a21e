//! A run's steps overlap: the next batch is read while a step's requests are
//! under way, and a step's files go up in parallel with each other and with
//! its lines. The server still sees the steps in order, and a checkpoint
//! never claims more than the server acknowledged.

use std::time::{Duration, Instant};

use crate::daemon::status_json;
use crate::sync::{committed_case, comparable, large_run, syncd_command, syncd_sync, text};
use crate::wandb_server::{Endpoint, Fault, WandbServer};

const HISTORY: &str = "wandb-history.jsonl";

/// A finished run read in one batch goes in one step: its lines, all its
/// files (asked for once) and its end, which comes last.
#[test]
fn a_finished_run_read_in_one_batch_is_sent_in_one_step() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", tmp.path());
    let server = WandbServer::start();
    let out = syncd_sync(&server, tmp.path(), &[wandb_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let operations = server.operation_names();
    assert_eq!(
        operations,
        ["UpsertBucket", "CreateRunFiles"],
        "one upsert, and the files asked for once"
    );
    let run = server.run("fxfinish").unwrap();
    assert_eq!(run["complete"], true);
    assert_eq!(run["history"].as_array().unwrap().len(), 200);
    let requests = server.snapshot()["requests"].clone();
    let requests = requests.as_array().unwrap();
    let last = requests.last().unwrap();
    assert!(
        last["path"].as_str().unwrap().ends_with("/file_stream"),
        "the end is the last request: {last}"
    );
    let stored = run["storage"].as_object().unwrap();
    let uploaded: Vec<&str> = run["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(!stored.is_empty());
    for name in stored.keys() {
        assert!(uploaded.contains(&name.as_str()), "{name} in {uploaded:?}");
    }
}

/// With every PUT and the history request each taking a second at the
/// server, the step takes about a second, not one per request.
#[test]
fn files_go_up_in_parallel_with_each_other_and_with_the_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", tmp.path());
    let clean = WandbServer::start();
    let started = Instant::now();
    let out = syncd_sync(
        &clean,
        &tmp.path().join("clean"),
        &[wandb_dir.to_str().unwrap()],
    );
    let undelayed = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let reference = comparable(&clean.run("fxfinish").unwrap());
    let files = reference["storage"].as_object().unwrap().len();
    assert!(files >= 3, "{files} files");

    let delay = Duration::from_secs(1);
    let server = WandbServer::start();
    server.inject(Endpoint::Storage, Fault::Delay(delay), 100);
    server.inject(
        Endpoint::FileStreamWith(HISTORY.into()),
        Fault::Delay(delay),
        100,
    );
    let started = Instant::now();
    let out = syncd_sync(
        &server,
        &tmp.path().join("delayed"),
        &[wandb_dir.to_str().unwrap()],
    );
    let delayed = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(comparable(&server.run("fxfinish").unwrap()), reference);
    // One after the other, the PUTs and the history request would take
    // `files + 1` seconds.
    assert!(
        delayed < undelayed + delay * 2,
        "{delayed:?} with {files} PUTs and the history request delayed {delay:?} each \
         ({undelayed:?} undelayed)"
    );
}

/// Many small steps, one slowed, some refused and one answer lost while
/// later batches are read: the server ends with what a clean sync leaves,
/// and no history request ever arrived ahead of the ones before it (a line
/// placed past the end counts as a gap, even when filled later).
#[test]
fn steps_stay_in_order_when_one_is_slowed_or_fails_mid_pipeline() {
    let Some(large) = large_run() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--batch-bytes", "32768", large.to_str().unwrap()];
    let clean = WandbServer::start();
    let out = syncd_sync(&clean, &tmp.path().join("clean"), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let reference = comparable(&clean.run("fxlarge0").unwrap());

    let server = WandbServer::start();
    let history = || Endpoint::FileStreamWith(HISTORY.into());
    server.inject_after(history(), Fault::Delay(Duration::from_millis(700)), 3, 1);
    server.inject_after(
        history(),
        Fault::Status {
            code: 500,
            retry_after: None,
        },
        6,
        2,
    );
    server.inject_after(history(), Fault::DropAfterProcessing, 9, 1);
    server.inject_after(history(), Fault::Delay(Duration::from_millis(500)), 12, 3);
    let out = syncd_sync(&server, &tmp.path().join("faulty"), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = server.run("fxlarge0").unwrap();
    assert_eq!(run["gaps"], 0, "history requests arrived out of order");
    assert_eq!(comparable(&run), reference);
}

/// A step refused while the next batch was already read and sent on: the
/// sync fails, and the ledger claims no line the server does not hold. The
/// next sync sends the rest, and the server ends as after a clean sync.
#[test]
fn a_checkpoint_never_runs_ahead_of_the_server() {
    let Some(large) = large_run() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--batch-bytes", "32768", large.to_str().unwrap()];
    let clean = WandbServer::start();
    let out = syncd_sync(&clean, &tmp.path().join("clean"), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let reference = comparable(&clean.run("fxlarge0").unwrap());
    let rows = reference["history"].as_array().unwrap().len() as u64;

    let server = WandbServer::start();
    let home = tmp.path().join("refused");
    for skip in [8, 30] {
        server.inject_after(
            Endpoint::FileStreamWith(HISTORY.into()),
            Fault::Status {
                code: 400,
                retry_after: None,
            },
            skip,
            1,
        );
        let out = syncd_sync(&server, &home, &args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stored = server.run("fxlarge0").unwrap()["history"]
            .as_array()
            .unwrap()
            .len() as u64;
        let status = status_json(&home);
        let acked = status["runs"][0]["history_lines_sent"].as_u64().unwrap();
        assert!(acked > 0, "{status:#}");
        assert!(
            acked <= stored && stored < rows,
            "the ledger acknowledges {acked} lines, the server holds {stored} of {rows}"
        );
        server.clear_faults();
    }
    let out = syncd_command(&server, &home, server.api_key(), &args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = server.run("fxlarge0").unwrap();
    assert_eq!(run["gaps"], 0);
    assert_eq!(comparable(&run), reference);
}

/// `output.log`, rebuilt from the console records in a spool, goes up with
/// the finishing step's other files and is acknowledged with that step: a
/// refused PUT fails the sync and leaves it unacknowledged, so the next
/// sync makes it again and stores it; once stored, its spool is gone.
#[test]
fn the_rebuilt_output_log_is_acknowledged_only_once_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", tmp.path());
    let args = [wandb_dir.to_str().unwrap()];
    let clean = WandbServer::start();
    let out = syncd_sync(&clean, &tmp.path().join("clean"), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let expected = clean
        .stored_file("fxfinish", "output.log")
        .expect("a clean sync stores output.log");

    let server = WandbServer::start();
    let home = tmp.path().join("refused");
    server.inject(
        Endpoint::Storage,
        Fault::Status {
            code: 400,
            retry_after: None,
        },
        1000,
    );
    let out = syncd_sync(&server, &home, &args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(server.stored_file("fxfinish", "output.log"), None);
    server.clear_faults();
    let out = syncd_sync(&server, &home, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        server.stored_file("fxfinish", "output.log").as_deref(),
        Some(&expected[..]),
        "output.log was not sent again after its PUT was refused"
    );
    assert_eq!(server.run("fxfinish").unwrap()["complete"], true);
    let spools: Vec<_> = std::fs::read_dir(home.join("state/output-log"))
        .map(|dir| dir.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(spools.is_empty(), "spools left: {spools:?}");
}
