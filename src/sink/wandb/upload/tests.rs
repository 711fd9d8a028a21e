//! The upload's decisions that need no server: how requests are cut, which
//! files may leave the machine, the parameters digest, and how a run ends.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::batch::{Outbox, take_console, take_lines};
use super::upsert::{params_digest, params_match};
use super::*;
use crate::engine::job::Verdict;
use crate::sink::wandb::filestream::MAX_REQUEST_BYTES;
use crate::sink::wandb::ops::UpsertRun;
use crate::source::wandb::views::{ExitInfo, FileEntry, FileKind, Policy};

/// A run with one fragment per directory in `dirs` (the files need not
/// exist), uploaded by nobody (no client).
fn job_in(dirs: &[PathBuf]) -> RunJob {
    RunJob::new(
        "abc123".into(),
        dirs.iter().map(|d| d.join("run-abc123.wandb")).collect(),
    )
}

fn upload<'a>(ledger: &'a Ledger, options: &'a SyncOptions, job: &'a RunJob) -> RunSync<'a> {
    let mut entry = RunLedger::new("key".into(), job.id.clone(), String::new());
    for path in &job.fragments {
        entry.fragments.push(FragmentProgress::unread(path.clone()));
    }
    RunSync::new(None, ledger, options, job, entry)
}

fn lines(offset: u64, lines: &[String]) -> Lines {
    Lines {
        offset,
        lines: lines.to_vec(),
    }
}

#[test]
fn requests_stay_under_the_cap_and_every_line_goes_once_in_order() {
    // Quotes count twice in a request (escaped): 30 lines of 800 kB each.
    let history: Vec<String> = (0..30)
        .map(|i| format!("{i}{}", "\"".repeat(400_000)))
        .collect();
    let events: Vec<String> = (0..5).map(|i| format!("{{\"e\":{i}}}")).collect();
    // Console lines 10..60, then a gap, then 100..110.
    let console: Vec<(u64, String)> = (10..60)
        .chain(100..110)
        .map(|i| (i, format!("line {i} {}", "x".repeat(200_000))))
        .collect();
    let mut outbox = Outbox {
        uploaded: vec!["config.yaml".into()],
        preempting: true,
        summary: Some("{\"loss\":1}".into()),
        history: lines(7, &history),
        events: lines(0, &events),
        console: console.clone().into_iter().peekable(),
    };
    let mut requests = Vec::new();
    while let Some(request) = outbox.next_request() {
        assert!(
            request.bytes() <= MAX_REQUEST_BYTES,
            "request {} is {} bytes",
            requests.len(),
            request.bytes()
        );
        requests.push(request);
    }
    assert!(requests.len() >= 4, "{} requests", requests.len());
    // The list and flags go in the first request only.
    assert_eq!(requests[0].uploaded, ["config.yaml"]);
    assert!(requests[0].preempting);
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.uploaded.is_empty() && !r.preempting)
    );
    assert_eq!(requests.iter().filter(|r| r.summary.is_some()).count(), 1);
    // History: every line once, at consecutive offsets from 7.
    let mut next = 7;
    let mut sent = Vec::new();
    for part in requests.iter().filter_map(|r| r.history.as_ref()) {
        assert_eq!(part.offset, next);
        next += part.lines.len() as u64;
        sent.extend(part.lines.iter().cloned());
    }
    assert_eq!(sent, history);
    let events_sent: Vec<String> = requests
        .iter()
        .filter_map(|r| r.events.as_ref())
        .flat_map(|l| l.lines.clone())
        .collect();
    assert_eq!(events_sent, events);
    // Console: consecutive ranges only, never across the gap.
    let mut console_sent = Vec::new();
    for part in requests.iter().filter_map(|r| r.output.as_ref()) {
        let last = part.offset + part.lines.len() as u64 - 1;
        assert!(last < 60 || part.offset >= 100, "a range across the gap");
        console_sent.extend((part.offset..).zip(part.lines.iter().cloned()));
    }
    assert_eq!(console_sent, console);
}

#[test]
fn a_line_that_does_not_fit_goes_only_into_an_empty_request() {
    let long = "y".repeat(1000);
    let mut source = lines(3, &[long.clone(), "short".into()]);
    let mut slot = None;
    let mut room = 100;
    take_lines(&mut source, &mut slot, &mut room, false);
    assert_eq!(
        slot, None,
        "a request with something in it takes no line it has no room for"
    );
    assert_eq!(source.offset, 3);
    take_lines(&mut source, &mut slot, &mut room, true);
    assert_eq!(slot, Some(lines(3, std::slice::from_ref(&long))));
    assert_eq!(room, 0);
    assert_eq!(source.offset, 4, "the rest starts after the line taken");
    assert_eq!(source.lines, ["short"]);
}

#[test]
fn lines_are_taken_while_they_fit_counting_escapes() {
    // Each line is 4 characters, 8 bytes as a JSON string (quotes escaped,
    // and its own), plus a separator: 9.
    let quoted: Vec<String> = (0..5).map(|_| "a\"b\"".into()).collect();
    let mut source = lines(0, &quoted);
    let mut slot = None;
    let mut room = 9 * 3 + 6;
    take_lines(&mut source, &mut slot, &mut room, false);
    assert_eq!(slot.map(|l| l.lines.len()), Some(3));
    assert_eq!(room, 6);
    assert_eq!(source.offset, 3);
}

#[test]
fn console_lines_are_taken_as_one_consecutive_range() {
    let mut console = vec![(4, "a".to_string()), (5, "b".into()), (9, "c".into())]
        .into_iter()
        .peekable();
    let mut room = 1000;
    let first = take_console(&mut console, &mut room, true).unwrap();
    assert_eq!(
        (first.offset, first.lines),
        (4, vec!["a".into(), "b".into()])
    );
    let second = take_console(&mut console, &mut room, false).unwrap();
    assert_eq!((second.offset, second.lines), (9, vec!["c".into()]));
    assert!(take_console(&mut console, &mut room, true).is_none());
}

#[test]
fn run_files_are_found_in_the_newest_fragment_that_has_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("run-1"), tmp.path().join("run-2"));
    for dir in [&old, &new] {
        std::fs::create_dir_all(dir.join("files")).unwrap();
    }
    std::fs::write(old.join("files/a.txt"), "old").unwrap();
    std::fs::write(new.join("files/a.txt"), "newer").unwrap();
    std::fs::write(old.join("files/only-old.txt"), "kept").unwrap();
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    let options = SyncOptions::default();
    let job = job_in(&[old, new]);
    let mut run = upload(&ledger, &options, &job);
    assert_eq!(run.read_run_file("a.txt").as_deref(), Some(&b"newer"[..]));
    assert_eq!(
        run.read_run_file("only-old.txt").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(run.read_run_file("missing.txt"), None);
    assert!(run.entry.warnings.is_empty(), "{:?}", run.entry.warnings);
}

#[test]
fn paths_out_of_the_run_directory_are_refused_and_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(run_dir.join("files/sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "not the run's").unwrap();
    std::fs::write(run_dir.join("files/sub/ok.txt"), "the run's").unwrap();
    // A symlinked file and a symlinked directory, both leading out.
    std::os::unix::fs::symlink(outside.join("secret"), run_dir.join("files/link")).unwrap();
    std::os::unix::fs::symlink(&outside, run_dir.join("files/dir")).unwrap();
    // A symlink that stays inside is fine.
    std::os::unix::fs::symlink("sub/ok.txt", run_dir.join("files/inside")).unwrap();
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    let options = SyncOptions::default();
    let job = job_in(&[run_dir]);
    let mut run = upload(&ledger, &options, &job);
    for refused in ["../outside/secret", "/etc/hostname", "link", "dir/secret"] {
        assert_eq!(run.read_run_file(refused), None, "{refused} was read");
    }
    assert_eq!(
        run.read_run_file("inside").as_deref(),
        Some(&b"the run's"[..])
    );
    let warnings = &run.entry.warnings;
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings.iter().all(|w| w.contains("not uploaded")),
        "{warnings:?}"
    );
    assert!(
        warnings[2].contains("copy the file into the run"),
        "a symlink out says how to upload it: {warnings:?}"
    );
    // Said once, however often the file is looked at.
    run.read_run_file("link");
    assert_eq!(run.entry.warnings.len(), 4);
}

#[test]
fn a_live_run_sends_end_files_only_when_it_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(run_dir.join("files")).unwrap();
    std::fs::write(run_dir.join("files/now.txt"), "now").unwrap();
    std::fs::write(run_dir.join("files/end.txt"), "end").unwrap();
    std::fs::write(run_dir.join("files/model.bin"), "artifact").unwrap();
    // A writer's own output.log (stale if it was killed) is never sent: the
    // one made from the console records is.
    std::fs::write(run_dir.join("files/output.log"), "REA").unwrap();
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    let options = SyncOptions::default();
    let job = job_in(&[run_dir]);
    let mut run = upload(&ledger, &options, &job);
    let files = &mut run.entry.state.files;
    for (name, policy, kind) in [
        ("now.txt", Policy::Now, FileKind::Other),
        ("end.txt", Policy::End, FileKind::Other),
        ("model.bin", Policy::Now, FileKind::Artifact),
        ("output.log", Policy::Now, FileKind::Other),
    ] {
        files.insert(name.into(), FileEntry { policy, kind });
    }
    let (live, _) = run.files_to_send(false);
    assert_eq!(live.keys().collect::<Vec<_>>(), ["now.txt"]);
    run.count_files(false, None);
    // Sent (counted) once: not again while unchanged.
    assert!(run.files_to_send(false).0.is_empty());
    let (end, _) = run.files_to_send(true);
    let output = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(run.output_log_to_send(true));
    let names: Vec<&String> = end.keys().collect();
    assert_eq!(
        names,
        ["config.yaml", "end.txt", "wandb-summary.json"],
        "at the end: end-policy files and the generated ones, never artifacts"
    );
    assert!(output.is_none(), "no console records, no output.log");
}

fn params() -> UpsertRun {
    UpsertRun {
        name: "abc123".into(),
        group: Some("sweep-7".into()),
        display_name: Some("lr=0.1".into()),
        host: Some("node042".into()),
        program: Some("train.py".into()),
        tags: Some(vec!["a".into(), "b \"q\"".into()]),
        ..Default::default()
    }
}

#[test]
fn the_params_digest_hashes_a_defined_encoding() {
    // The JSON array of the fields, in order: fixed whatever the compiler.
    let expected = sha256_hex(
        br#"["sweep-7","lr=0.1",null,null,null,"node042","train.py",null,["a","b \"q\""]]"#,
    );
    assert_eq!(params_digest(&params()), expected);
    assert_eq!(params_digest(&params()), PARAMS_DIGEST);
    // What is not a parameter (the name, the config) does not count.
    let other = UpsertRun {
        name: "other".into(),
        config: Some("{}".into()),
        ..params()
    };
    assert_eq!(params_digest(&other), PARAMS_DIGEST);
    let retagged = UpsertRun {
        tags: Some(vec!["a".into()]),
        ..params()
    };
    assert_ne!(params_digest(&retagged), PARAMS_DIGEST);
}

/// `params_digest(&params())`.
const PARAMS_DIGEST: &str = "fa7067107cf624c8616b5f9d84d975a9f76307beb753a0146b05358bc4ceb05f";

/// What syncd before the defined encoding stored for `params()`: the hash
/// of the fields' `Debug` text.
const LEGACY_PARAMS_DIGEST: &str =
    "56cc28a981a3892db02c8673ef0d17d0ff0d903ee7ee0a8e770cee9b66b34299";

#[test]
fn a_ledger_entry_with_the_old_digest_does_not_send_the_params_again() {
    assert!(params_match(
        Some(LEGACY_PARAMS_DIGEST),
        &params_digest(&params()),
        &params()
    ));
    assert!(params_match(
        Some(PARAMS_DIGEST),
        &params_digest(&params()),
        &params()
    ));
    assert!(!params_match(None, &params_digest(&params()), &params()));
    let renamed = UpsertRun {
        display_name: Some("lr=0.2".into()),
        ..params()
    };
    assert!(!params_match(
        Some(LEGACY_PARAMS_DIGEST),
        &params_digest(&renamed),
        &renamed
    ));
    assert!(!params_match(
        Some(PARAMS_DIGEST),
        &params_digest(&renamed),
        &renamed
    ));
}

/// A fragment file whose last change was `age` ago.
fn fragment_aged(dir: &Path, age: Duration) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("run-abc123.wandb");
    let file = std::fs::File::create(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
    path
}

#[test]
fn a_verdict_finalizes_with_the_slurm_state_in_summary_and_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fragment_aged(&tmp.path().join("run"), Duration::ZERO);
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    let options = SyncOptions {
        verdict: Some(Verdict {
            reason: "Slurm job 42 ended (TIMEOUT)".into(),
            slurm_state: Some("TIMEOUT".into()),
        }),
        ..SyncOptions::default()
    };
    let job = job_in(&[tmp.path().join("run")]);
    let mut run = upload(&ledger, &options, &job);
    assert_eq!(run.finalize_code(Tail::Clean, &path), Some(1));
    assert_eq!(
        run.entry.finalized_reason.as_deref(),
        Some("Slurm job 42 ended (TIMEOUT)")
    );
    let state = &run.entry.state;
    assert_eq!(
        state.summary.get("slurm_state"),
        Some(&Value::String("TIMEOUT".into()))
    );
    assert_eq!(state.identity.tags, ["slurm:TIMEOUT"]);
    // Decided twice (a retried upload), tagged once.
    run.finalize_code(Tail::Clean, &path);
    assert_eq!(run.entry.state.identity.tags, ["slurm:TIMEOUT"]);
}

#[test]
fn finalize_waits_until_the_newest_file_is_quiet_long_enough() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    let fresh = fragment_aged(&tmp.path().join("fresh"), Duration::from_secs(5));
    let stale = fragment_aged(&tmp.path().join("stale"), Duration::from_secs(3600));
    let job = job_in(&[tmp.path().join("fresh")]);

    // Not asked to finalize: a run without exit record stays open.
    let open = SyncOptions::default();
    let mut run = upload(&ledger, &open, &job);
    assert_eq!(run.finalize_code(Tail::Clean, &stale), None);
    assert!(run.entry.finalized_reason.is_none());

    let finalize = SyncOptions {
        finalize: true,
        stale_after: Duration::from_secs(600),
        ..SyncOptions::default()
    };
    let mut run = upload(&ledger, &finalize, &job);
    assert_eq!(run.finalize_code(Tail::Clean, &fresh), None);
    assert!(
        run.entry.warnings[0].contains("not finalized"),
        "{:?}",
        run.entry.warnings
    );
    assert_eq!(run.finalize_code(Tail::Clean, &stale), Some(1));
    assert!(
        run.entry
            .finalized_reason
            .as_ref()
            .unwrap()
            .contains("cut off")
    );
    let torn = Tail::Torn { at: 100, bytes: 17 };
    let mut run = upload(&ledger, &finalize, &job);
    assert_eq!(run.finalize_code(torn, &stale), Some(1));
    assert!(
        run.entry
            .finalized_reason
            .as_ref()
            .unwrap()
            .contains("17 bytes of an unfinished record")
    );
}

#[tokio::test]
async fn how_a_run_ends_follows_its_exit_record() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fragment_aged(&tmp.path().join("run"), Duration::ZERO);
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    let options = SyncOptions::default();
    let job = job_in(&[tmp.path().join("run")]);
    let exit = |code, not_complete| ExitInfo {
        code,
        runtime_secs: 3,
        not_complete,
    };

    // No exit record, not finalized: live.
    let mut run = upload(&ledger, &options, &job);
    run.finish(0, 10, Tail::Clean, &path).await.unwrap();
    assert_eq!(
        (run.entry.phase, run.entry.acked.complete),
        (Phase::Live, None)
    );

    // An exit record that says "not complete": done here, but the run is
    // left open on the server (not marked complete).
    let mut run = upload(&ledger, &options, &job);
    run.entry.fragments[0].exit = Some(exit(0, true));
    run.finish(0, 10, Tail::Clean, &path).await.unwrap();
    assert_eq!(
        (run.entry.phase, run.entry.acked.complete),
        (Phase::Synced, None)
    );

    // An exit record: synced with its code.
    let mut run = upload(&ledger, &options, &job);
    run.entry.fragments[0].exit = Some(exit(3, false));
    run.finish(0, 10, Tail::Clean, &path).await.unwrap();
    assert_eq!(
        (run.entry.phase, run.entry.acked.complete),
        (Phase::Synced, Some(3))
    );

    // A writer gone without exit record: finalized as failed.
    let gone = SyncOptions {
        verdict: Some(Verdict {
            reason: "gone".into(),
            slurm_state: None,
        }),
        ..SyncOptions::default()
    };
    let mut run = upload(&ledger, &gone, &job);
    run.finish(0, 10, Tail::Clean, &path).await.unwrap();
    assert_eq!(
        (run.entry.phase, run.entry.acked.complete),
        (Phase::Finalized, Some(1))
    );
}

#[tokio::test]
async fn a_batch_holds_a_growing_share_of_the_send_window_and_ends_when_others_hold_the_rest() {
    use crate::sink::retry::RetryPolicy;
    use crate::sink::wandb::client::SEND_WINDOW_BYTES;

    let tmp = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&tmp.path().join("state")).unwrap();
    let options = SyncOptions::default();
    let job = job_in(&[tmp.path().join("run")]);
    // Never contacted: the window is the client's own.
    let client = Client::new("http://127.0.0.1:9", "key", RetryPolicy::default()).unwrap();
    let held = |run: &RunSync<'_>| run.reserved.as_ref().map_or(0, |r| r.num_permits());

    let mut run = upload(&ledger, &options, &job);
    run.client = Some(&client);
    assert!(run.reserve(1000).await);
    assert_eq!(held(&run), WINDOW_STEP);
    assert!(run.reserve(WINDOW_STEP + 1).await);
    assert_eq!(held(&run), 2 * WINDOW_STEP);

    // Another run takes the rest: this batch ends instead of waiting.
    let rest = client
        .try_reserve(SEND_WINDOW_BYTES - 2 * WINDOW_STEP)
        .unwrap();
    assert!(!run.reserve(2 * WINDOW_STEP + 1).await);
    assert_eq!(held(&run), 2 * WINDOW_STEP);

    // A run holding nothing waits for a share, and gets it once given back.
    let mut other = upload(&ledger, &options, &job);
    other.client = Some(&client);
    let waiting = tokio::time::timeout(Duration::from_millis(50), other.reserve(10)).await;
    assert!(waiting.is_err(), "no share is free");
    drop(rest);
    assert!(other.reserve(10).await);
    assert_eq!(held(&other), WINDOW_STEP);

    // A dry run holds nothing.
    let dry = SyncOptions {
        dry_run: true,
        ..SyncOptions::default()
    };
    let mut run = upload(&ledger, &dry, &job);
    run.client = Some(&client);
    assert!(run.reserve(SEND_WINDOW_BYTES * 2).await);
    assert_eq!(held(&run), 0);
}
