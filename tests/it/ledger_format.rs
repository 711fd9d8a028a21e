//! Ledger format v1 is frozen: the golden entries under
//! `tests/fixtures/ledger/` were written by syncd syncing the committed
//! fixture runs, and every later syncd must continue each of them, with the
//! run it belongs to, without sending again anything the entry says the
//! server acknowledged. (That each golden loads and saves back byte for byte
//! is a unit test of `ledger::format`.) An entry this syncd cannot read,
//! damaged or written by a newer syncd, stops its run and is kept.
//!
//! The goldens are written once, by the syncd of the format's time, and
//! never rewritten:
//!
//! ```sh
//! cargo test --test it ledger_format::write_goldens -- --ignored
//! ```
//!
//! writes every golden of [`GOLDENS`] that does not exist yet. A new format
//! version adds its own `v<N>-*.json` files (the older ones stay, and keep
//! loading through the migration).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use syncd::ledger::{Ledger, Phase, RunLedger};

use crate::official_sync::copy_tree_rooted;
use crate::support::{committed_root, wandb_files_under};
use crate::sync::{syncd_command, text};
use crate::wandb_server::{Endpoint, Fault, WandbServer};

/// Where a golden's run lived when it was written (the tests put the run
/// elsewhere: the same run directory names make it the same run).
const WRITTEN_UNDER: &str = "/scratch/alice";
/// The server a golden was written for (the test server's port changes).
const WRITTEN_FOR: &str = "http://127.0.0.1:8080";

/// One golden entry and how it was made.
struct Golden {
    /// `tests/fixtures/ledger/<name>.json` (and `.live`, when the run was
    /// still open: the newest checkpoint of a live run).
    name: &'static str,
    /// The committed fixture run: wandb version and case.
    version: &'static str,
    case: &'static str,
    /// The directory the case was copied into (bytes: one is not UTF-8).
    parent: &'static [u8],
    /// The run's `.wandb` file was cut to this many bytes (a run still
    /// being written); the continuation gets the whole file.
    cut_at: Option<u64>,
    /// History requests failed after the first few, so the sync stopped
    /// part way with the run `failed`.
    failing: bool,
}

const GOLDENS: &[Golden] = &[
    // Written before paths were carried as bytes (no `bytes_hex` form yet).
    Golden {
        name: "v1-finished",
        version: "0.31.0",
        case: "finished",
        parent: b"",
        cut_at: None,
        failing: false,
    },
    Golden {
        name: "v1-live",
        version: "0.31.0",
        case: "finished",
        parent: b"",
        cut_at: Some(40_000),
        failing: false,
    },
    Golden {
        name: "v1-failed",
        version: "0.31.0",
        case: "sigkill",
        parent: b"",
        cut_at: None,
        failing: true,
    },
    Golden {
        name: "v1-non-utf8-path",
        version: "0.31.0",
        case: "nan_inf",
        parent: b"caf\xe9",
        cut_at: None,
        failing: false,
    },
    Golden {
        name: "v1-resumed",
        version: "0.31.0",
        case: "resumed",
        parent: b"",
        cut_at: None,
        failing: false,
    },
    Golden {
        name: "v1-slurm",
        version: "0.31.0",
        case: "slurm_env",
        parent: b"",
        cut_at: None,
        failing: false,
    },
    Golden {
        name: "v1-wandb-0.17.9",
        version: "0.17.9",
        case: "finished",
        parent: b"",
        cut_at: None,
        failing: false,
    },
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger")
}

/// Copies the golden's fixture case under `root`/`parent`; gives its
/// `wandb` directory and `.wandb` files.
fn place_case(golden: &Golden, root: &Path) -> (PathBuf, Vec<PathBuf>) {
    let parent = root.join(std::ffi::OsStr::from_bytes(golden.parent));
    let case_dir = parent.join(golden.case);
    copy_tree_rooted(
        &committed_root().join(golden.version).join(golden.case),
        &case_dir,
    );
    let wandb_dir = case_dir.join("wandb");
    let files = wandb_files_under(&wandb_dir);
    assert!(!files.is_empty(), "{}: no .wandb files", golden.name);
    (wandb_dir, files)
}

/// The golden's entry as this syncd loads it.
fn load_golden(golden: &Golden) -> RunLedger {
    let scratch = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(scratch.path()).unwrap();
    let durable = std::fs::read(golden_dir().join(format!("{}.json", golden.name)))
        .unwrap_or_else(|e| panic!("golden {}: {e}", golden.name));
    let key: Value = serde_json::from_slice(&durable).unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    std::fs::write(ledger.dir().join(format!("{key}.json")), &durable).unwrap();
    let live = golden_dir().join(format!("{}.live", golden.name));
    if live.exists() {
        std::fs::copy(&live, ledger.dir().join(format!("{key}.live"))).unwrap();
    }
    ledger
        .load(&key)
        .unwrap_or_else(|e| panic!("golden {}: {e}", golden.name))
        .unwrap()
}

/// A live checkpoint's bytes: a header with the body's length and CRC-32,
/// then the body.
fn in_place(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "syncd-in-place {} {:08x}\n",
        body.len(),
        crc32fast::hash(body)
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Each golden entry, with its run placed anew and the test server in
/// place of the one it was written for, continues with `syncd sync`: the
/// server receives no line at an offset the entry has as acknowledged, no
/// file again with the content acknowledged, and nothing at all for a run
/// the entry has as settled; the lines it does receive continue the run.
#[test]
fn every_golden_entry_continues_without_sending_anything_again() {
    for golden in GOLDENS {
        let ctx = golden.name;
        let tmp = tempfile::tempdir().unwrap();
        let (wandb_dir, files) = place_case(golden, tmp.path());
        let server = WandbServer::start();
        let mut entry = load_golden(golden);
        let acked = entry.acked.clone();
        let settled = matches!(entry.phase, Phase::Synced | Phase::Finalized);
        let server_run = entry
            .server
            .clone()
            .expect("golden entries know their server run");
        entry.key =
            syncd::ledger::run_key(&entry.run_id, &files[0], &server.base_url(), None, None);
        entry.base_url = server.base_url();
        Ledger::open(&tmp.path().join("state"))
            .unwrap()
            .save(&entry)
            .unwrap();

        let out = syncd_command(&server, tmp.path(), server.api_key(), &["--json"])
            .arg(&wandb_dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{ctx}: {}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["runs"].as_array().unwrap().len(),
            1,
            "{ctx}: {report:#}"
        );
        assert_eq!(
            report["runs"][0]["key"],
            entry.key.as_str(),
            "{ctx}: {report:#}"
        );
        if settled {
            assert_eq!(
                server.snapshot()["counters"]["requests"],
                0,
                "{ctx}: a settled run sends nothing: {}",
                server.snapshot()["requests"]
            );
            continue;
        }
        let run = server.run(&server_run.name).expect("the run continued");
        // The killed run has no exit record: it stays open.
        let ends = golden.case != "sigkill";
        assert_eq!(run["complete"] == true, ends, "{ctx}");
        for (file, from) in [
            ("history_raw", acked.history_base + acked.history_lines),
            ("events", acked.events_base + acked.events_lines),
            ("output", acked.console_base + acked.console_lines),
        ] {
            let lines = run[file].as_array().unwrap();
            for (i, line) in lines.iter().enumerate() {
                assert_eq!(
                    line.is_null(),
                    (i as u64) < from,
                    "{ctx}: {file} line {i}: only lines from {from} on are sent"
                );
            }
        }
        let total = run["history_raw"].as_array().unwrap().len() as u64;
        assert_eq!(
            run["history_lines_received"].as_u64().unwrap(),
            total - acked.history_lines,
            "{ctx}: each history line once"
        );
        // The state saved with the cursors continues where it stopped.
        for (i, line) in run["history"].as_array().unwrap().iter().enumerate() {
            if i as u64 >= acked.history_lines {
                assert_eq!(line["_step"], i, "{ctx}: history line {i}");
            }
        }
        for (path, ack) in &acked.files {
            if let Some(stored) = run["storage"].get(path) {
                assert_ne!(
                    stored["sha256"], ack.sha256,
                    "{ctx}: {path} was uploaded again unchanged"
                );
            }
        }
    }
}

/// Writes the goldens of [`GOLDENS`] that do not exist yet, by syncing
/// their fixture runs with this syncd (see the module doc). Never run by
/// the suite: goldens are what an older syncd wrote.
#[test]
#[ignore = "writes tests/fixtures/ledger; run by hand when a format version is added"]
fn write_goldens() {
    for golden in GOLDENS {
        let durable = golden_dir().join(format!("{}.json", golden.name));
        if durable.exists() {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (wandb_dir, files) = place_case(golden, &root);
        if let Some(len) = golden.cut_at {
            assert_eq!(files.len(), 1, "{}", golden.name);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&files[0])
                .unwrap()
                .set_len(len)
                .unwrap();
        }
        let server = WandbServer::start();
        let mut args = vec!["--json"];
        if golden.failing {
            server.inject_after(
                Endpoint::FileStreamWith("wandb-history.jsonl".into()),
                Fault::Status {
                    code: 500,
                    retry_after: None,
                },
                2,
                1000,
            );
            args.extend(["--attempts", "1", "--batch-bytes", "8192"]);
        }
        let out = syncd_command(&server, &root, server.api_key(), &args)
            .arg(&wandb_dir)
            .output()
            .unwrap();
        eprintln!("{}: {}", golden.name, text(&out));

        let runs = root.join("state/runs");
        let mut written: Vec<PathBuf> = std::fs::read_dir(&runs)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        written.sort();
        let first = written[0].clone();
        let old_key = first.file_stem().unwrap().to_str().unwrap().to_string();
        let run_id: Value =
            serde_json::from_slice(&std::fs::read(runs.join(format!("{old_key}.json"))).unwrap())
                .unwrap();
        let run_id = run_id["run_id"].as_str().unwrap().to_string();
        assert!(
            written.iter().all(|p| p.file_stem() == first.file_stem()),
            "{}: one run: {written:?}",
            golden.name
        );
        // The same run under the neutral names every golden uses.
        let moved = Path::new(WRITTEN_UNDER).join(files[0].strip_prefix(&root).unwrap());
        let new_key = syncd::ledger::run_key(&run_id, &moved, WRITTEN_FOR, None, None);
        let root_text = root.to_str().unwrap();
        let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        let root_hex = hex(root.as_os_str().as_bytes());
        let neutral_hex = hex(WRITTEN_UNDER.as_bytes());
        for path in &written {
            let bytes = std::fs::read(path).unwrap();
            // A live checkpoint: its header gives the body's length (old
            // bytes past it are ignored).
            let (header, body) = match bytes.strip_prefix(b"syncd-in-place ") {
                Some(rest) => {
                    let end = rest.iter().position(|&b| b == b'\n').unwrap();
                    let header = std::str::from_utf8(&rest[..end]).unwrap();
                    let len: usize = header.split(' ').next().unwrap().parse().unwrap();
                    (true, &rest[end + 1..end + 1 + len])
                }
                None => (false, &bytes[..]),
            };
            let body = String::from_utf8(body.to_vec())
                .unwrap()
                .replace(&server.base_url(), WRITTEN_FOR)
                .replace(root_text, WRITTEN_UNDER)
                .replace(&root_hex, &neutral_hex)
                .replace(&old_key, &new_key);
            let out = if header {
                in_place(body.as_bytes())
            } else {
                body.into_bytes()
            };
            let ext = path.extension().unwrap().to_str().unwrap();
            std::fs::write(golden_dir().join(format!("{}.{ext}", golden.name)), out).unwrap();
        }
    }
}

/// An entry a newer syncd wrote (here its live checkpoint, over a durable
/// copy this syncd can read) is reported and left as it is: the run is not
/// uploaded from the older copy, which would replace the newer one.
#[test]
fn an_entry_of_a_newer_format_is_left_alone_and_its_run_not_uploaded() {
    let golden = GOLDENS.iter().find(|g| g.name == "v1-live").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (wandb_dir, files) = place_case(golden, tmp.path());
    let server = WandbServer::start();
    let mut entry = load_golden(golden);
    entry.key = syncd::ledger::run_key(&entry.run_id, &files[0], &server.base_url(), None, None);
    entry.base_url = server.base_url();
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    ledger.save(&entry).unwrap();
    let durable = ledger.dir().join(format!("{}.json", entry.key));
    let live = ledger.dir().join(format!("{}.live", entry.key));
    let newer = format!(
        r#"{{"format": {}, "key": "{}", "progress": {{}}}}"#,
        syncd::ledger::FORMAT_VERSION + 1,
        entry.key
    );
    std::fs::write(&live, in_place(newer.as_bytes())).unwrap();
    let before = [
        std::fs::read(&durable).unwrap(),
        std::fs::read(&live).unwrap(),
    ];

    let out = syncd_command(&server, tmp.path(), server.api_key(), &["--json"])
        .arg(&wandb_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["runs"][0]["error"].as_str().unwrap();
    assert!(error.contains("newer than this syncd knows"), "{error}");
    assert_eq!(server.snapshot()["counters"]["requests"], 0);
    let after = [
        std::fs::read(&durable).unwrap(),
        std::fs::read(&live).unwrap(),
    ];
    assert!(after == before, "the entry is left as it was");
}

/// Under the daemon, a run whose entry is damaged is stopped with the
/// reason, which `status` shows; nothing is sent and the entry is kept.
#[test]
fn the_daemon_stops_a_run_whose_entry_is_damaged_and_says_why() {
    let golden = GOLDENS.iter().find(|g| g.name == "v1-live").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (wandb_dir, files) = place_case(golden, tmp.path());
    let server = WandbServer::start();
    let key = syncd::ledger::run_key("fxfinish", &files[0], &server.base_url(), None, None);
    let runs = tmp.path().join("state/runs");
    std::fs::create_dir_all(&runs).unwrap();
    let durable = runs.join(format!("{key}.json"));
    let golden_bytes = std::fs::read(golden_dir().join("v1-live.json")).unwrap();
    let damaged = &golden_bytes[..golden_bytes.len() / 2];
    std::fs::write(&durable, damaged).unwrap();

    let daemon = crate::daemon::start_daemon(&server, tmp.path(), &[&wandb_dir], &[], &[]);
    let mut status = Value::Null;
    crate::daemon::wait_until(
        std::time::Duration::from_secs(30),
        "the run stopped with its reason",
        || {
            status = crate::daemon::status_json(tmp.path());
            status["runs"].as_array().unwrap().iter().any(|r| {
                r["reason"]
                    .as_str()
                    .is_some_and(|e| e.contains("is damaged") && e.contains("move it away"))
            })
        },
    );
    assert!(
        status["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("is damaged")),
        "{status:#}"
    );
    daemon.stop();
    assert_eq!(server.snapshot()["counters"]["requests"], 0);
    assert_eq!(std::fs::read(&durable).unwrap(), damaged);
}
