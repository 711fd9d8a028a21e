use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Small fixture runs committed with the generator that wrote them.
pub fn committed_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb/committed")
}

/// `<tmp>/scratch`, a project directory whose `wandb/` holds a copy of the
/// committed fixture `version/case` (as a job on a shared filesystem leaves
/// it): the root a test's daemon watches.
pub fn scratch_with_committed(tmp: &Path, version: &str, case: &str) -> PathBuf {
    let root = tmp.join("scratch");
    crate::official_sync::copy_tree_rooted(
        &committed_root().join(version).join(case).join("wandb"),
        &root.join("wandb"),
    );
    root
}

/// A committed fixture's `.wandb` file: `version` is the wandb version that
/// wrote it, `case` the generator's case name.
pub fn committed_log(version: &str, case: &str) -> PathBuf {
    let dir = committed_root().join(version).join(case);
    let files = wandb_files_under(&dir);
    assert!(
        !files.is_empty(),
        "no committed fixture {version}/{case} under {}",
        dir.display()
    );
    files.into_iter().next().unwrap()
}

/// Fixture sets written by `scripts/test.sh` (one per wandb version), from
/// `SYNCD_FIXTURES`. Under the test script they are required; a plain
/// `cargo test` without them runs the committed fixtures only.
pub fn generated_roots() -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = std::env::var("SYNCD_FIXTURES")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    if roots.is_empty() {
        assert!(
            std::env::var_os("SYNCD_REQUIRE_FIXTURES").is_none(),
            "SYNCD_REQUIRE_FIXTURES is set but SYNCD_FIXTURES names no fixture directory"
        );
        eprintln!(
            "note: SYNCD_FIXTURES not set; only committed fixtures are used (run scripts/test.sh for all)"
        );
    }
    for root in &roots {
        assert!(
            root.join("manifest.json").is_file(),
            "{} has no manifest.json",
            root.display()
        );
    }
    roots
}

/// Every directory holding fixture cases: the committed sets and the generated ones.
pub fn all_fixture_sets() -> Vec<PathBuf> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(committed_root())
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    sets.extend(generated_roots());
    sets
}

/// All `*.wandb` files below `dir` (test code may walk; syncd does not).
pub fn wandb_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && path.extension().is_some_and(|e| e == "wandb") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every regular file below `dir`, symlinks not followed.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

pub fn syncd(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncd"));
    cmd.args(args).env_remove("WANDB_DIR");
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.output().expect("run syncd")
}

pub fn inspect_json(paths: &[&Path], extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["inspect", "--json", "--stale-after", "0s"];
    args.extend_from_slice(extra);
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let out = syncd(&args, None);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect output is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// Facts computed by `tests/oracle/wandb_facts.py`, keyed by path.
pub fn oracle(files: &[PathBuf]) -> serde_json::Value {
    let python = std::env::var("SYNCD_ORACLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/wandb_facts.py");
    let out = Command::new(python)
        .arg(script)
        .args(files)
        .output()
        .expect("run the Python oracle");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle output is JSON")
}
