//! The daemon's log as journald gets it: `--log-format json` writes one
//! object per line with levels and fields, a retry inside the HTTP client
//! carries the run it belongs to, a server's 429 pause is a warning, and a
//! filter that does not parse stops the command with a message instead of
//! logging nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::daemon::{start_daemon, wait_until};
use crate::support::scratch_with_committed;
use crate::wandb_server::{Endpoint, Fault, WandbServer};

/// A lease left by a daemon on another node that stopped renewing it an
/// hour ago: the next daemon takes it over.
fn write_expired_lease(state: &Path) {
    std::fs::create_dir_all(state).unwrap();
    let at = |ago: u64| {
        humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(ago)).to_string()
    };
    let claim = json!({
        "format": 1,
        "host": "login-gone",
        "pid": 4242,
        "token": "0123456789abcdef",
        "acquired_at": at(7200),
        "heartbeat_at": at(3630),
        "expires_at": at(3600),
    });
    std::fs::write(state.join("lease.json"), claim.to_string()).unwrap();
}

/// Every line of a JSON log, parsed; a line that is not an object fails.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n--- log:\n{log}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

fn find<'a>(lines: &'a [Value], what: &str, test: impl Fn(&Value) -> bool) -> &'a Value {
    lines.iter().find(|l| test(l)).unwrap_or_else(|| {
        let all: Vec<String> = lines.iter().map(Value::to_string).collect();
        panic!("no {what} in the log:\n{}", all.join("\n"))
    })
}

#[test]
fn the_json_log_has_levels_fields_and_the_run_a_retry_belongs_to() {
    let tmp = tempfile::tempdir().unwrap();
    let root = scratch_with_committed(tmp.path(), "0.31.0", "finished");
    let server = WandbServer::start();
    // One FileStream request fails and is retried by the client.
    server.inject(
        Endpoint::FileStream,
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        1,
    );
    // And the server asks for a pause once: every upload to it waits.
    server.inject(
        Endpoint::Operation("UpsertBucket".into()),
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        1,
    );
    let home = tmp.path().join("home");
    write_expired_lease(&home.join("state"));
    let daemon = start_daemon(
        &server,
        &home,
        &[&root],
        &["--no-slurm", "--log-format", "json"],
        &[("SYNCD_LOG", "debug"), ("RUST_LOG", "error")],
    );
    let pid = daemon.pid();
    wait_until(Duration::from_secs(30), "the run completes", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    assert!(daemon.stop().success());
    let log = std::fs::read_to_string(
        std::fs::read_dir(&home)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("the daemon's log"),
    )
    .unwrap();
    let lines = json_lines(&log);

    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
    let started = find(&lines, "start-up event", |l| {
        l["message"] == "syncd run: starting"
    });
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["pid"], pid);
    assert_eq!(started["state_dir"], home.join("state").to_str().unwrap());

    let takeover = find(&lines, "lease takeover", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("took over the lease"))
    });
    assert_eq!(takeover["level"], "WARN");
    assert_eq!(takeover["holder_host"], "login-gone");
    assert_eq!(takeover["holder_pid"], 4242);
    assert_eq!(
        takeover["path"],
        home.join("state/lease.json").to_str().unwrap()
    );

    let retry = find(&lines, "retry", |l| {
        l["message"] == "retrying" && l["request"] == "file_stream"
    });
    assert_eq!(retry["level"], "DEBUG");
    assert_eq!(retry["server"], server.base_url());
    assert_eq!(retry["request"], "file_stream");
    assert_eq!(retry["attempt"], 1);
    assert_eq!(retry["status"], 503);
    assert!(
        retry["error"].as_str().is_some_and(|e| e.contains("503")),
        "{retry}"
    );
    // Under the span of the run whose upload sent it.
    assert_eq!(retry["span"]["name"], "upload", "{retry}");
    assert_eq!(retry["span"]["run"], "fxfinish", "{retry}");

    let pause = find(&lines, "429 pause", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("because of HTTP 429 Retry-After 1 s"))
    });
    assert_eq!(pause["level"], "WARN");
    assert_eq!(pause["server"], server.base_url());
    assert_eq!(pause["span"]["run"], "fxfinish", "{pause}");
}

#[test]
fn a_filter_that_does_not_parse_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["status", "--state-dir", tmp.path().to_str().unwrap()])
        .env("SYNCD_LOG", "syncd=loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("$SYNCD_LOG=\"syncd=loud\" is not a log filter"),
        "{said}"
    );
    assert!(out.stdout.is_empty(), "the command did not run");
}

#[test]
fn quiet_and_verbose_flags_go_with_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    // Before or after the subcommand; a `-q` takes back a `-v`.
    for flags in [
        &["-q"][..],
        &["-vv"],
        &["--quiet", "--quiet"],
        &["-v", "-q"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(&flags[..1])
            .args(["status", "--state-dir", tmp.path().to_str().unwrap()])
            .args(&flags[1..])
            .env_remove("SYNCD_LOG")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flags:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A job manifest that does not parse used to be dropped without a word:
/// the names `inspect` shows then lack the job, and now it says why.
#[test]
fn inspect_warns_about_a_job_manifest_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = crate::sync::committed_case("0.31.0", "exit_code_3", tmp.path());
    let manifest = wandb_dir.parent().unwrap().join("syncd-job.json");
    std::fs::write(&manifest, "{\"job_id\": ").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["inspect", "--json"])
        .arg(&wandb_dir)
        .env("XDG_CONFIG_HOME", tmp.path().join("config"))
        .env_remove("SYNCD_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    let warning = said
        .lines()
        .find(|l| l.contains("the job manifest was not read"))
        .unwrap_or_else(|| panic!("no warning:\n{said}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&manifest.display().to_string()),
        "{warning}"
    );
    // The report itself is still a JSON document on stdout.
    serde_json::from_slice::<Value>(&out.stdout).expect("inspect's JSON");
}
