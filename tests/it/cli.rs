use std::path::Path;

use crate::support::{committed_log, committed_root, inspect_json, syncd};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn readable_runs_exit_0_with_a_table_per_run() {
    let log = committed_log("0.31.0", "exit_code_3");
    let out = syncd(
        &["inspect", "--stale-after", "0s", log.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text(&out);
    for expected in [
        "(finished)",
        "exit code",
        "3",
        "history",
        "1 run(s), 0 corrupt",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}

#[test]
fn missing_path_and_empty_directory_exit_1_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-run");
    let out = syncd(&["inspect", missing.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no such file or directory"),
        "{}",
        text(&out)
    );

    let out = syncd(&["inspect", tmp.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("holds no W&B run"), "{}", text(&out));

    let (code, json) = inspect_json(&[&missing, &committed_log("0.31.0", "finished")], &[]);
    assert_eq!(code, 1, "one bad path among good ones still exits 1");
    assert_eq!(json["runs"].as_array().unwrap().len(), 1);
    assert_eq!(json["errors"][0]["path"], missing.to_str().unwrap());
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        syncd(&["inspect", "--no-such-flag"], None).status.code(),
        Some(2)
    );
    assert_eq!(
        syncd(&["inspect", "--stale-after", "soon"], None)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(syncd(&["frobnicate"], None).status.code(), Some(2));
    assert_eq!(syncd(&["--help"], None).status.code(), Some(0));
}

#[test]
fn corrupt_file_exits_1_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(committed_log("0.31.0", "finished")).unwrap();
    bytes[1000] ^= 0x40;
    let run_dir = tmp.path().join("offline-run-20260101_000000-fxfinish");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::write(run_dir.join("run-fxfinish.wandb"), &bytes).unwrap();
    let (code, json) = inspect_json(&[&run_dir], &[]);
    assert_eq!(code, 1);
    let run = &json["runs"][0];
    assert_eq!(run["class"], "corrupt");
    let corruption = &run["fragments"][0]["corruption"][0];
    assert!(corruption["offset"].as_u64().unwrap() <= 1000);
    assert!(corruption["good_records_before"].as_u64().unwrap() > 0);
    assert!(
        run["problems"][0]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{run:#}"
    );
}

#[test]
fn default_path_is_the_wandb_dir_of_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let source = committed_log("0.31.0", "finished");
    let run_dir = tmp
        .path()
        .join("wandb")
        .join(source.parent().unwrap().file_name().unwrap());
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::copy(&source, run_dir.join(source.file_name().unwrap())).unwrap();
    let out = syncd(&["inspect", "--json"], Some(tmp.path()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["runs"][0]["run_id"], "fxfinish");
}

#[test]
fn live_run_is_growing_until_stale() {
    let log = committed_log("0.31.0", "sigkill");
    let out = syncd(
        &[
            "inspect",
            "--json",
            "--stale-after",
            "100000d",
            log.to_str().unwrap(),
        ],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["runs"][0]["class"], "growing");
    let (_, json) = inspect_json(&[&log], &[]);
    assert_eq!(json["runs"][0]["class"], "truncated");
}

#[test]
fn json_schema_has_the_documented_fields() {
    let (_, json) = inspect_json(&[&committed_root().join("0.31.0/slurm_env")], &[]);
    assert_eq!(json["schema"], 1);
    let run = &json["runs"][0];
    for key in [
        "run_id",
        "name",
        "entity",
        "project",
        "group",
        "job_type",
        "tags",
        "notes",
        "start_time",
        "resumed",
        "host",
        "program",
        "git",
        "slurm_job_id",
        "slurm",
        "producer",
        "class",
        "records",
        "history_rows",
        "last_step",
        "events_rows",
        "console_lines",
        "exit_code",
        "files",
        "artifacts",
        "alerts",
        "preempting",
        "metrics",
        "summary",
        "config",
        "fragments",
        "problems",
    ] {
        assert!(run.get(key).is_some(), "run report lacks {key}");
    }
    assert_eq!(run["slurm"]["job_name"], "train-demo");
    assert!(Path::new(run["fragments"][0]["path"].as_str().unwrap()).is_file());
}

/// Where `syncd notify` puts its trigger, run in `cwd` with `vars` set and
/// `HOME`, `XDG_STATE_HOME` and `SYNCD_STATE_DIR` otherwise removed.
fn notify_in(cwd: &Path, vars: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_syncd"));
    cmd.args(["notify", "/scratch/u/wandb/offline-run-1"])
        .current_dir(cwd)
        .env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("SYNCD_STATE_DIR");
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd.output().expect("run syncd")
}

/// The files under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found
}

#[test]
fn the_state_directory_is_never_relative_to_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (cwd, home) = (tmp.path().join("cwd"), tmp.path().join("home"));
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&home).unwrap();

    // No HOME: a clear error, and nothing written where syncd was started.
    let out = notify_in(&cwd, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("HOME is not set"), "{}", text(&out));
    assert!(files_under(&cwd).is_empty(), "{:?}", files_under(&cwd));

    // A relative XDG_STATE_HOME does not count: the default under HOME.
    let out = notify_in(
        &cwd,
        &[("HOME", &home), ("XDG_STATE_HOME", Path::new("state"))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(files_under(&cwd).is_empty(), "{:?}", files_under(&cwd));
    let written = files_under(&home);
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(
        written[0].starts_with(".local/state/syncd/notify/"),
        "{written:?}"
    );

    // An absolute one does.
    let state = tmp.path().join("state");
    let out = notify_in(&cwd, &[("HOME", &home), ("XDG_STATE_HOME", &state)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(files_under(&state).len(), 1);
    assert!(files_under(&state)[0].starts_with("syncd/notify/"));
}
