//! `syncd service install` and the systemd user unit it writes: the real
//! binary path, idempotence, no clobbering of edited units, the next steps,
//! the fallbacks without a user manager, and `systemd-analyze verify`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A home directory of its own: `HOME` and `XDG_CONFIG_HOME` in a tempdir.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.path().join("config")
    }

    fn unit_path(&self) -> PathBuf {
        self.config().join("systemd/user/syncd.service")
    }

    /// `syncd ARGS` with this home and no user-manager variables; `systemctl`
    /// is the one to ask (a fake, or the machine's when `None`).
    fn syncd(&self, args: &[&str], systemctl: Option<&Path>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncd"));
        cmd.args(args)
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.config())
            .env("USER", "tester")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("WANDB_API_KEY")
            .env_remove("NETRC")
            .env_remove("SYNCD_ROOTS")
            .env_remove("XDG_STATE_HOME");
        if let Some(systemctl) = systemctl {
            cmd.arg("--systemctl").arg(systemctl);
        }
        cmd.output().expect("run syncd")
    }

    fn install_json(&self, extra: &[&str], systemctl: Option<&Path>) -> (i32, Value) {
        let mut args = vec!["service", "install", "--json"];
        args.extend_from_slice(extra);
        let out = self.syncd(&args, systemctl);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "install output is not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), json)
    }

    /// An executable script `name` in `bin/` under this home.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let dir = self.path().join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A `systemctl` that answers like one reaching no user manager.
    fn systemctl_without_manager(&self) -> PathBuf {
        self.script(
            "systemctl-down",
            "echo 'Failed to connect to bus: No medium found' >&2\nexit 1",
        )
    }

    /// A `systemctl` that answers like a running user manager whose `PATH`
    /// is `path`.
    fn systemctl_with_manager(&self, path: &str) -> PathBuf {
        self.script(
            "systemctl-up",
            &format!("echo 'HOME=/home/tester'\necho 'PATH={path}'\nexit 0"),
        )
    }
}

/// What `std::env::current_exe()` says inside the binary: the resolved path.
fn binary() -> PathBuf {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_syncd")).unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_writes_the_unit_running_this_binary() {
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    let (code, report) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["action"], "created");
    assert_eq!(report["written"], true);
    assert_eq!(report["unit_path"], home.unit_path().display().to_string());
    assert_eq!(report["binary"], binary().display().to_string());

    let unit = std::fs::read_to_string(home.unit_path()).unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        [format!(
            "ExecStart={} run --log-format json",
            binary().display()
        )]
    );
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "WatchdogSec=2min",
        "Nice=10",
        "IOSchedulingClass=idle",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=default.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in\n{unit}");
    }
    assert!(!unit.contains("%h/.cargo/bin/syncd run"), "{unit}");

    // `syncd service unit` prints exactly what install writes.
    let printed = home.syncd(&["service", "unit"], None);
    assert!(printed.status.success());
    assert_eq!(text(&printed), unit);
}

#[test]
fn install_is_idempotent() {
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    let (code, _) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 0);
    let first = std::fs::read(home.unit_path()).unwrap();
    let modified = std::fs::metadata(home.unit_path())
        .unwrap()
        .modified()
        .unwrap();

    let (code, report) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["action"], "unchanged");
    assert_eq!(report["written"], false);
    assert_eq!(std::fs::read(home.unit_path()).unwrap(), first);
    assert_eq!(
        std::fs::metadata(home.unit_path())
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    let names: Vec<_> = std::fs::read_dir(home.unit_path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["syncd.service"], "no temporary or backup files");
}

#[test]
fn an_edited_unit_is_not_clobbered_without_force() {
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    home.install_json(&[], Some(&fake));
    let fresh = std::fs::read_to_string(home.unit_path()).unwrap();
    let edited = fresh.replace("Nice=10", "Nice=15");
    std::fs::write(home.unit_path(), &edited).unwrap();

    let (code, report) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["action"], "refused");
    assert_eq!(report["written"], false);
    assert_eq!(std::fs::read_to_string(home.unit_path()).unwrap(), edited);
    let steps = report["next_steps"].to_string();
    assert!(steps.contains("--force"), "{steps}");

    let out = home.syncd(&["service", "install"], Some(&fake));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(home.unit_path()).unwrap(), edited);

    let (code, report) = home.install_json(&["--force", "--dry-run"], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["action"], "replaced");
    assert_eq!(report["written"], false);
    assert_eq!(std::fs::read_to_string(home.unit_path()).unwrap(), edited);

    let (code, report) = home.install_json(&["--force"], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["action"], "replaced");
    assert_eq!(report["written"], true);
    let backup = home.unit_path().with_extension("service.bak");
    assert_eq!(report["backup"], backup.display().to_string());
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), edited);
    assert_eq!(std::fs::read_to_string(home.unit_path()).unwrap(), fresh);
}

#[test]
fn a_unit_syncd_wrote_for_another_binary_is_updated() {
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    home.install_json(&[], Some(&fake));
    let fresh = std::fs::read_to_string(home.unit_path()).unwrap();
    // What an earlier install from /opt/old/syncd left: its own checksum.
    let exec = format!("ExecStart={} run", binary().display());
    let old_body = fresh
        .split_once("# syncd-unit-sha256: ")
        .unwrap()
        .1
        .split_once('\n')
        .unwrap()
        .1
        .replace(&exec, "ExecStart=/opt/old/syncd run");
    let checksum: String = Sha256::digest(old_body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let old = format!("# syncd-unit-sha256: {checksum}\n{old_body}");
    std::fs::write(home.unit_path(), &old).unwrap();

    let (code, report) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["action"], "updated");
    assert_eq!(report["written"], true);
    assert_eq!(report["backup"], Value::Null);
    assert_eq!(std::fs::read_to_string(home.unit_path()).unwrap(), fresh);
    let steps = report["next_steps"].to_string();
    assert!(steps.contains("systemctl --user restart syncd"), "{steps}");
}

#[test]
fn dry_run_changes_nothing() {
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    let (code, report) = home.install_json(&["--dry-run"], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["action"], "created");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["written"], false);
    assert!(
        !home.config().exists(),
        "nothing created under {:?}",
        home.config()
    );
}

#[test]
fn without_a_user_manager_the_next_steps_come_with_fallbacks() {
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    let out = home.syncd(&["service", "install"], Some(&fake));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = text(&out);
    for expected in [
        "No systemd user manager answers here",
        "systemctl --user daemon-reload",
        "systemctl --user enable --now syncd",
        "loginctl enable-linger tester",
        "tmux new-session -d -s syncd",
        "scrontab",
        "#SCRON --time=",
        "sbatch --job-name=syncd",
        &format!("{} run --wait", binary().display()),
    ] {
        assert!(said.contains(expected), "no {expected:?} in\n{said}");
    }

    let (_, report) = home.install_json(&[], Some(&fake));
    assert_eq!(report["user_manager"], false);
    assert!(
        report["user_manager_problem"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{report:#}"
    );
    let names: Vec<&str> = report["fallbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tmux", "scrontab", "sbatch"]);

    // Without any systemctl at all.
    let (_, report) = home.install_json(&[], Some(Path::new("/nonexistent/systemctl")));
    assert_eq!(report["user_manager"], false);
    assert!(
        report["user_manager_problem"]
            .as_str()
            .unwrap()
            .contains("systemctl"),
        "{report:#}"
    );
}

#[test]
fn this_machine_has_no_user_manager() {
    // The machine's own systemctl: where systemd is not the init system (as
    // in the test containers), `syncd service install` must say so.
    if Path::new("/run/systemd/system").exists() {
        eprintln!(
            "note: systemd runs here; the no-user-manager case is covered by a fake systemctl"
        );
        return;
    }
    let home = Home::new();
    let (code, report) = home.install_json(&[], None);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["user_manager"], false, "{report:#}");
    assert_eq!(report["fallbacks"].as_array().unwrap().len(), 3);
}

#[test]
fn with_a_user_manager_there_are_no_fallbacks() {
    let home = Home::new();
    let fake = home.systemctl_with_manager("/usr/local/bin:/usr/bin:/bin");
    // Ready to run: roots, a key, and squeue where the manager's PATH has it.
    std::fs::create_dir_all(home.config().join("syncd")).unwrap();
    std::fs::write(
        home.config().join("syncd/config.toml"),
        "roots = [\"/scratch/tester/wandb\"]\n",
    )
    .unwrap();
    std::fs::write(
        home.config().join("syncd/environment"),
        "WANDB_API_KEY=0123456789abcdef\n",
    )
    .unwrap();
    let (code, report) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["user_manager"], true);
    assert_eq!(report["user_manager_problem"], Value::Null);
    assert_eq!(report["fallbacks"], serde_json::json!([]));
    let steps: Vec<&str> = report["next_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"systemctl --user daemon-reload"),
        "{steps:?}"
    );
    assert!(
        steps.contains(&"systemctl --user enable --now syncd"),
        "{steps:?}"
    );
    if report["linger"] != true {
        assert!(
            steps.contains(&"loginctl enable-linger tester"),
            "{steps:?}"
        );
    }
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        !warnings.iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains("roots") || w.contains("API key")
        }),
        "{warnings:?}"
    );
}

#[test]
fn a_key_in_the_users_syncd_env_counts_and_an_exposed_one_is_flagged() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let fake = home.systemctl_with_manager("/usr/local/bin:/usr/bin:/bin");
    let syncd_dir = home.config().join("syncd");
    std::fs::create_dir_all(&syncd_dir).unwrap();
    std::fs::write(
        syncd_dir.join("config.toml"),
        "roots = [\"/scratch/tester/wandb\"]\n",
    )
    .unwrap();
    // Where the daemon reads a key for runs without a `.env` of their own.
    let dotenv = syncd_dir.join(".env");
    std::fs::write(&dotenv, "WANDB_API_KEY=0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&dotenv, std::fs::Permissions::from_mode(0o600)).unwrap();
    let warnings = |report: &Value| report["warnings"].to_string();
    let (code, report) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert!(!warnings(&report).contains("API key"), "{report:#}");
    assert!(!warnings(&report).contains("0123456789abcdef"));

    // Readable by others: the daemon refuses it, and so does the check.
    std::fs::set_permissions(&dotenv, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, report) = home.install_json(&["--force"], Some(&fake));
    assert_eq!(code, 0, "{report:#}");
    assert!(
        warnings(&report).contains("runs will not be uploaded"),
        "{report:#}"
    );
    assert!(warnings(&report).contains("chmod 600"), "{report:#}");
    assert!(!warnings(&report).contains("0123456789abcdef"));
}

#[test]
fn missing_roots_key_and_squeue_path_are_warned_about() {
    let home = Home::new();
    // A Slurm install the manager's PATH lacks.
    let manager_path = home.path().join("empty");
    let fake = home.systemctl_with_manager(&manager_path.display().to_string());
    let squeue = home.script("squeue", "exit 0");
    let path = format!(
        "{}:{}",
        squeue.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["service", "install", "--json", "--systemctl"])
        .arg(&fake)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.config())
        .env("PATH", path)
        .env("WANDB_API_KEY", "in-the-shell-only")
        .env_remove("NETRC")
        .env_remove("SYNCD_ROOTS")
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("no roots to watch"), "{warnings}");
    assert!(warnings.contains("WANDB_API_KEY"), "{warnings}");
    assert!(
        warnings.contains("your shell's WANDB_API_KEY"),
        "{warnings}"
    );
    assert!(
        warnings.contains(&format!(
            "squeue is in {}",
            squeue.parent().unwrap().display()
        )),
        "{warnings}"
    );
}

/// `systemd-analyze`, or `None` (with a note) when it is missing and the
/// test script does not require it.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("systemd-analyze"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("SYNCD_REQUIRE_FIXTURES").is_none(),
            "SYNCD_REQUIRE_FIXTURES is set but systemd-analyze is missing \
             (apt-get install -y systemd)"
        );
        eprintln!(
            "note: systemd-analyze not found; the unit is not verified \
             (apt-get install -y systemd, or run scripts/test.sh)"
        );
    }
    found
}

/// `systemd-analyze --user verify UNIT` with `home` as the user's home: the
/// exit status and the lines it wrote about syncd.service.
fn verify(analyze: &Path, home: &Home, unit: &Path) -> (bool, Vec<String>) {
    let runtime = home.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(analyze)
        .args(["--user", "verify"])
        .arg(unit)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.config())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_syncd = stderr
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.contains("syncd.service"))
        .map(str::to_string)
        .collect();
    eprintln!(
        "systemd-analyze --user verify {}:\n{stderr}",
        unit.display()
    );
    (out.status.success(), about_syncd)
}

#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    let (code, _) = home.install_json(&[], Some(&fake));
    assert_eq!(code, 0);
    let (ok, complaints) = verify(&analyze, &home, &home.unit_path());
    assert!(ok && complaints.is_empty(), "{complaints:#?}");

    // The check is real: a unit naming a missing binary fails it.
    let unit = std::fs::read_to_string(home.unit_path()).unwrap();
    let broken = unit.replace(
        &format!("ExecStart={}", binary().display()),
        &format!("ExecStart={}", home.path().join("gone/syncd").display()),
    );
    std::fs::write(home.unit_path(), broken).unwrap();
    let (ok, _) = verify(&analyze, &home, &home.unit_path());
    assert!(!ok, "verify accepted a unit whose binary does not exist");
}

#[test]
fn the_committed_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    // As committed it runs %h/.cargo/bin/syncd.
    let home = Home::new();
    let bin = home.path().join(".cargo/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(binary(), bin.join("syncd")).unwrap();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/syncd.service");
    let (ok, complaints) = verify(&analyze, &home, &committed);
    assert!(ok && complaints.is_empty(), "{complaints:#?}");
}

#[test]
fn a_binary_in_cargo_build_directory_is_warned_about_and_an_installed_one_is_not() {
    let home = Home::new();
    let fake = home.systemctl_without_manager();
    // This test's syncd is cargo's own build output.
    let (code, report) = home.install_json(&["--dry-run"], Some(&fake));
    assert_eq!(code, 0);
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("cargo's build directory")
            && warnings.contains("cargo install --path . --locked"),
        "{warnings}"
    );
    // A copy installed elsewhere (as `cargo install` puts it) is not.
    let installed = home.path().join(".cargo/bin/syncd");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(binary(), &installed).unwrap();
    let out = Command::new(&installed)
        .args(["service", "install", "--dry-run", "--json", "--systemctl"])
        .arg(&fake)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.config())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["binary"], installed.display().to_string());
    assert!(
        !report["warnings"].to_string().contains("build directory"),
        "{report:#}"
    );
}
