//! Where runs go and what they are called: `.env` files choosing servers,
//! keys and entities per directory, their refusal when exposed, keys never
//! shown or stored, and run names from the Slurm job and its manifest.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::daemon::{start_daemon, status_json, wait_until};
use crate::sync::{committed_case, syncd_sync, text};
use crate::wandb_server::WandbServer;

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `syncd sync` with no key or server in the environment: everything comes
/// from `.env` files (or is missing).
fn sync_without_env(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncd"))
        .arg("sync")
        .args(["--state-dir", home.join("state").to_str().unwrap()])
        .args(["--retry-min-ms", "50"])
        .args(args)
        .env_remove("WANDB_API_KEY")
        .env_remove("WANDB_BASE_URL")
        .env_remove("WANDB_ENTITY")
        .env_remove("WANDB_PROJECT")
        .env_remove("NETRC")
        .env_remove("SYNCD_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .output()
        .unwrap()
}

/// Every file under `dir`, as text (lossy), with its path.
fn all_files_text(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

fn assert_key_nowhere(key: &str, texts: &[(&str, &str)], state: &Path) {
    for (what, text) in texts {
        assert!(!text.contains(key), "the key appears in {what}:\n{text}");
    }
    for (path, text) in all_files_text(state) {
        assert!(!text.contains(key), "the key appears in {}", path.display());
    }
}

fn env_text(server: &WandbServer, entity: &str) -> String {
    format!(
        "# project settings\nWANDB_BASE_URL={}\nexport WANDB_API_KEY=\"{}\"\nWANDB_ENTITY={entity} # inline comment\n",
        server.base_url(),
        server.api_key()
    )
}

#[test]
fn each_projects_env_chooses_its_server_key_and_entity() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    let (lab_a, lab_b) = (WandbServer::start(), WandbServer::start());
    // proj-a: its own server, key and entity. proj-b: only an entity; the
    // server and key come from the user's `.env`. proj-c: nothing of its
    // own, all from the user's `.env`. Each `.env` sits in the job's
    // directory (its WANDB_DIR, which holds `wandb/`).
    committed_case("0.31.0", "finished", &root.join("proj-a"));
    committed_case("0.31.0", "exit_code_3", &root.join("proj-b"));
    committed_case("0.31.0", "nan_inf", &root.join("proj-c"));
    write_private(
        &root.join("proj-a/finished/.env"),
        &env_text(&lab_a, "team-a"),
    );
    write_private(
        &root.join("proj-b/exit_code_3/.env"),
        "WANDB_ENTITY=team-b\n",
    );
    std::fs::create_dir_all(tmp.path().join("config/syncd")).unwrap();
    write_private(
        &tmp.path().join("config/syncd/.env"),
        &env_text(&lab_b, "team-c"),
    );

    let paths = ["proj-a/finished", "proj-b/exit_code_3", "proj-c/nan_inf"]
        .map(|p| root.join(p).to_str().unwrap().to_string());
    let mut args = vec!["--json"];
    args.extend(paths.iter().map(String::as_str));
    let out = sync_without_env(tmp.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let on =
        |server: &WandbServer, id: &str| server.run(id).unwrap_or_else(|| panic!("{id} missing"));
    assert_eq!(on(&lab_a, "fxfinish")["entity"], "team-a");
    assert_eq!(on(&lab_b, "fxexit03")["entity"], "team-b");
    assert_eq!(on(&lab_b, "fxnaninf")["entity"], "team-c");
    assert!(lab_a.run("fxexit03").is_none() && lab_a.run("fxnaninf").is_none());
    assert!(lab_b.run("fxfinish").is_none());
    // Each run completed with its history.
    for (server, id) in [
        (&lab_a, "fxfinish"),
        (&lab_b, "fxexit03"),
        (&lab_b, "fxnaninf"),
    ] {
        assert_eq!(on(server, id)["complete"], true, "{id}");
    }
    let state = tmp.path().join("state");
    let status = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["status", "--json", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let shown = format!("{}{}", text(&out), text(&status));
    assert_key_nowhere(lab_a.api_key(), &[("output", &shown)], &state);
    assert_key_nowhere(lab_b.api_key(), &[("output", &shown)], &state);
}

/// Two runs under `root`: `open/finished` (fxfinish) with its own `.env`
/// of `mode` (returned), `private/exit_code_3` (fxexit03) with a private
/// `.env` in `private_env_dir` (relative to `root`), entity `team-private`.
fn open_and_private_runs(
    root: &Path,
    server: &WandbServer,
    mode: u32,
    private_env_dir: &str,
) -> PathBuf {
    committed_case("0.31.0", "finished", &root.join("open"));
    committed_case("0.31.0", "exit_code_3", &root.join("private"));
    let exposed = root.join("open/finished/.env");
    write_private(&exposed, &env_text(server, "team-open"));
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(mode)).unwrap();
    write_private(
        &root.join(private_env_dir).join(".env"),
        &env_text(server, "team-private"),
    );
    exposed
}

/// The daemon's most verbose logs, text and JSON, with a retry in them:
/// neither the key nor the `Authorization` value made from it appears.
#[test]
fn the_daemons_trace_logs_never_show_the_key() {
    use base64::Engine as _;
    for format in ["text", "json"] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("scratch");
        let server = WandbServer::start();
        server.inject(
            crate::wandb_server::Endpoint::FileStream,
            crate::wandb_server::Fault::Status {
                code: 503,
                retry_after: None,
            },
            1,
        );
        committed_case("0.31.0", "finished", &root);
        write_private(&root.join("finished/.env"), &env_text(&server, "team"));
        let daemon = start_daemon(
            &server,
            tmp.path(),
            &[&root.join("finished")],
            &["--no-slurm", "--log-format", format],
            &[
                ("WANDB_API_KEY", ""),
                ("WANDB_BASE_URL", ""),
                ("SYNCD_LOG", "trace"),
            ],
        );
        wait_until(Duration::from_secs(30), "the run", || {
            server
                .run("fxfinish")
                .is_some_and(|r| r["complete"] == true)
        });
        let log = daemon.log_text();
        assert!(daemon.stop().success());
        assert!(
            log.contains("retrying"),
            "{format}: debug logs were on:\n{log}"
        );
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("api:{}", server.api_key()));
        for secret in [server.api_key(), &basic] {
            assert_key_nowhere(
                secret,
                &[(&format!("{format} log"), &log)],
                &tmp.path().join("state"),
            );
        }
    }
}

#[test]
fn an_exposed_env_is_refused_with_the_fix_and_never_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    let server = WandbServer::start();
    let exposed = open_and_private_runs(&root, &server, 0o644, "private/exit_code_3");
    let [open, private] = [root.join("open/finished"), root.join("private/exit_code_3")]
        .map(|p| p.to_str().unwrap().to_string());

    let out = sync_without_env(tmp.path(), &[&open, &private]);
    let shown = text(&out);
    // One run refused, the other uploaded: exit 1, not a usage error.
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("chmod 600") && shown.contains(&exposed.display().to_string()),
        "{shown}"
    );
    assert!(
        server.run("fxfinish").is_none(),
        "nothing of the refused run is sent"
    );
    assert_eq!(server.run("fxexit03").unwrap()["entity"], "team-private");
    assert_key_nowhere(
        server.api_key(),
        &[("output", &shown)],
        &tmp.path().join("state"),
    );

    // Only refusals: nothing could be sent at all, a configuration error.
    let out = sync_without_env(tmp.path(), &[&open]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
}

#[test]
fn a_run_without_any_key_says_where_one_would_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb_dir = committed_case("0.31.0", "finished", &tmp.path().join("proj"));
    let server = WandbServer::start();
    write_private(
        &tmp.path().join("proj/finished/.env"),
        &format!("WANDB_BASE_URL={}\n", server.base_url()),
    );
    let out = sync_without_env(tmp.path(), &[wandb_dir.to_str().unwrap()]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("WANDB_API_KEY")
            && shown.contains(&server.addr().to_string())
            && shown.contains(".env"),
        "{shown}"
    );
    assert!(server.operation_names().is_empty(), "nothing was sent");
    // A path that does not exist is an error of that path, not of keys.
    let out = sync_without_env(tmp.path(), &["/definitely/not/here"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/definitely/not/here"),
        "{}",
        text(&out)
    );
}

#[test]
fn runs_are_named_after_their_job_unless_the_user_named_them() {
    let tmp = tempfile::tempdir().unwrap();
    let server = WandbServer::start();
    // An unnamed run with a job manifest next to its wandb/ directory, as
    // the sbatch templates write it; a run the user named; an array task.
    let unnamed = committed_case("0.31.0", "exit_code_3", tmp.path());
    std::fs::write(
        unnamed.parent().unwrap().join("syncd-job.json"),
        r#"{"job_id": "777", "job_name": "train", "version": "3", "restart_count": "0"}"#,
    )
    .unwrap();
    let named = committed_case("0.31.0", "finished", tmp.path());
    let array = committed_case("0.31.0", "slurm_env", tmp.path());
    let paths = [&unnamed, &named, &array].map(|p| p.to_str().unwrap().to_string());

    // inspect shows the names before anything is sent.
    let inspect = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["inspect", "--json"])
        .args(&paths)
        .env("XDG_CONFIG_HOME", tmp.path().join("config"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let naming_of = |id: &str| {
        report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == id)
            .unwrap()["naming"]
            .clone()
    };
    assert_eq!(naming_of("fxexit03")["display_name"], "v3-train_777");
    assert_eq!(naming_of("fxexit03")["from_template"], true);
    assert_eq!(naming_of("fxfinish")["display_name"], "finished-demo");
    assert_eq!(naming_of("fxfinish")["from_template"], false);
    assert_eq!(naming_of("fxslurm0")["display_name"], "train-demo_4240_2");
    assert_eq!(naming_of("fxslurm0")["group"], "train-demo_4240");

    let path_args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let out = syncd_sync(&server, tmp.path(), &path_args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = |id: &str| server.run(id).unwrap();
    assert_eq!(run("fxexit03")["displayName"], "v3-train_777");
    assert_eq!(run("fxfinish")["displayName"], "finished-demo");
    assert_eq!(
        run("fxfinish")["groupName"],
        "fixtures",
        "the run's own group stays"
    );
    assert_eq!(run("fxslurm0")["displayName"], "train-demo_4240_2");
    assert_eq!(run("fxslurm0")["groupName"], "train-demo_4240");

    // status shows the names the server was given.
    let status = status_json(tmp.path());
    let names: Vec<&str> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for name in ["v3-train_777", "finished-demo", "train-demo_4240_2"] {
        assert!(names.contains(&name), "{names:?}");
    }

    // A template from the config file, and one that overrides user names.
    std::fs::create_dir_all(tmp.path().join("config/syncd")).unwrap();
    std::fs::write(
        tmp.path().join("config/syncd/config.toml"),
        "[naming]\ntemplate = \"{experiment}-r{restart}-{job}\"\noverride_user_names = true\n",
    )
    .unwrap();
    let inspect = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["inspect", "--json", &paths[0], &paths[1]])
        .env("XDG_CONFIG_HOME", tmp.path().join("config"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let name_of = |id: &str| {
        report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == id)
            .unwrap()["naming"]["display_name"]
            .clone()
    };
    assert_eq!(name_of("fxexit03"), "train-r0-777", "{report}");
    // The named run has no Slurm facts: the template renders its own name
    // (the experiment) alone, so it stays as it is.
    assert_eq!(name_of("fxfinish"), "finished-demo");
    // A bad template is a usage error that names the field.
    let bad = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["inspect", "--name-template", "{experimnt}", &paths[0]])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("experimnt"));
}

#[test]
fn the_daemon_reports_a_refused_env_and_uploads_once_it_is_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    let server = WandbServer::start();
    let exposed = open_and_private_runs(&root, &server, 0o640, "private");
    // The daemon's own environment has no key: every key is in a `.env`.
    let daemon = start_daemon(
        &server,
        tmp.path(),
        // `.env` files are found from each run up to the watched root:
        // `scratch`, the base of the glob.
        &[&root.join("*/*")],
        &[],
        &[("WANDB_API_KEY", ""), ("WANDB_BASE_URL", "")],
    );
    wait_until(Duration::from_secs(20), "the private run", || {
        server
            .run("fxexit03")
            .is_some_and(|r| r["complete"] == true)
    });
    assert_eq!(server.run("fxexit03").unwrap()["entity"], "team-private");
    let refused = || {
        status_json(tmp.path())["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == "fxfinish")
            .cloned()
    };
    wait_until(
        Duration::from_secs(10),
        "status to show the refusal",
        || refused().is_some_and(|r| r["state"] == "failed"),
    );
    let reason = refused().unwrap()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("chmod 600"), "{reason}");
    // It says what happens next.
    assert!(reason.contains("tries it again when"), "{reason}");
    assert!(server.run("fxfinish").is_none());

    // Fixed: the daemon sees the `.env` change on its idle poll (2 s here)
    // and uploads the run, without a SIGHUP or restart.
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o600)).unwrap();
    wait_until(Duration::from_secs(20), "the fixed run", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    assert_eq!(server.run("fxfinish").unwrap()["entity"], "team-open");
    let log = daemon.log_text();
    assert!(log.contains("chmod 600"), "{log}");
    assert!(log.contains("its settings changed"), "{log}");
    let status = serde_json::to_string(&status_json(tmp.path())).unwrap();
    assert_key_nowhere(
        server.api_key(),
        &[("daemon log", &log), ("status", &status)],
        &tmp.path().join("state"),
    );
    assert!(daemon.stop().success());
}
