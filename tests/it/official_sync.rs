//! The official `wandb sync` (pinned venv) against our W&B test server: the
//! client is the oracle, so the server must record what the fixture holds.
//!
//! Needs a venv with wandb (`SYNCD_WANDB_VENV`, default the 0.31.0 venv of
//! `scripts/test.sh`: `~/.cache/syncd-test/venv-wandb-0.31.0`) and fixture sets
//! (`SYNCD_FIXTURES`). Without them the tests skip with a note, unless
//! `SYNCD_REQUIRE_FIXTURES` is set.
//!
//! Observed behaviour of the 0.31.0 client that these tests pin (syncd is
//! compared against it, and deliberately differs where noted):
//! * one `wandb sync` of a whole fixture set takes about 1 s; runs are synced
//!   in parallel, fragments of one run one after another;
//! * per run: `UpsertBucket` (entity null → the server's default entity is
//!   used from then on), FileStream (events), `ServerFeaturesQuery`,
//!   `UpsertBucket` (config), `CreateRunFiles`, PUTs, final FileStream with
//!   history, summary, `uploaded`, `complete` and `exitcode`;
//! * a run without an exit record (killed) is sent `complete: true,
//!   exitcode: 1`, i.e. marked failed; syncd deliberately does not do that;
//! * 0.31 files written with `resume=`: `RunResumeStatus` before each
//!   fragment; the second fragment's `_step`s are renumbered after the
//!   server's last one. Older files have no `RunRecord.resume`: no
//!   `RunResumeStatus`, the second fragment is appended at `historyLineCount`
//!   with its own `_step`s (0..4 twice);
//! * `wandb sync` exits 0 even when a file failed (incomplete record, 401);
//! * artifacts: per version `CreateArtifact` → `CreateArtifactManifest`
//!   (no upload) → `CreateArtifactFiles` → file PUTs → `CreateArtifactManifest`
//!   (with upload) → manifest PUT → `CommitArtifact`; a digest the collection
//!   already has gets `CreateArtifact` only. The legacy saver of 0.17.9 sends
//!   the same mutations (flat variables) after `__type` schema probes. Neither
//!   removes the staging copies when `wandb sync` uploads them.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{generated_roots, oracle, wandb_files_under};
use crate::wandb_server::{DEFAULT_API_KEY, Endpoint, Fault, Options, WandbServer};

const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

fn required() -> bool {
    std::env::var_os("SYNCD_REQUIRE_FIXTURES").is_some()
}

/// The venv's `wandb` executable, or `None` (with a note) when it is missing.
/// `SYNCD_WANDB_VENV`, else the 0.31.0 venv in the cache `scripts/test.sh`
/// uses (`$SYNCD_TEST_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/syncd-test`).
pub fn wandb_cli() -> Option<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let venv = env("SYNCD_WANDB_VENV").unwrap_or_else(|| {
        let cache = env("SYNCD_TEST_CACHE").unwrap_or_else(|| {
            let xdg = env("XDG_CACHE_HOME")
                .unwrap_or_else(|| env("HOME").unwrap_or_default().join(".cache"));
            xdg.join("syncd-test")
        });
        cache.join("venv-wandb-0.31.0")
    });
    let cli = venv.join("bin/wandb");
    if cli.is_file() {
        return Some(cli);
    }
    assert!(
        !required(),
        "SYNCD_REQUIRE_FIXTURES is set but there is no wandb venv at {}",
        venv.display()
    );
    eprintln!(
        "note: no wandb venv at {} (set SYNCD_WANDB_VENV); official-client tests skipped",
        venv.display()
    );
    None
}

/// One fixture case of one generated set.
#[derive(Clone, Debug)]
pub struct Case {
    pub set: String,
    pub name: String,
    pub run_id: String,
    /// The case directory (parent of its wandb dir), copied whole.
    pub dir: PathBuf,
    /// Where the generator wrote the case (artifact records name their
    /// staging files by absolute paths under it).
    pub recorded_dir: PathBuf,
    /// Run dirs relative to `dir`.
    pub run_dirs: Vec<PathBuf>,
    pub expect: Value,
}

pub fn cases_of(set: &Path) -> (String, Vec<Case>) {
    let text = std::fs::read_to_string(set.join("manifest.json")).expect("manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
    let version = manifest["wandb_version"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let mut cases = Vec::new();
    for (name, info) in manifest["cases"].as_object().expect("cases") {
        let recorded_wandb = PathBuf::from(info["wandb_dir"].as_str().expect("wandb_dir"));
        let recorded_case = recorded_wandb
            .parent()
            .expect("wandb dir has a parent")
            .to_path_buf();
        let dir = if recorded_case.is_dir() {
            recorded_case.clone()
        } else {
            set.join(name)
        };
        let run_dirs = info["run_dirs"]
            .as_array()
            .expect("run_dirs")
            .iter()
            .map(|d| {
                Path::new(d.as_str().unwrap())
                    .strip_prefix(&recorded_case)
                    .expect("run dir inside case")
                    .to_path_buf()
            })
            .collect();
        cases.push(Case {
            set: version.clone(),
            name: name.clone(),
            run_id: info["run_id"].as_str().expect("run_id").to_string(),
            dir,
            recorded_dir: recorded_case.clone(),
            run_dirs,
            expect: info["expect"].clone(),
        });
    }
    (version, cases)
}

/// A case copied so the client can write its markers; returns the run dirs.
///
/// Artifact records name their staging copies by absolute `local_path`
/// under the case (`_home/wandb-data/artifacts/staging/…`). In the copy
/// they are rewritten to the copy's own staging files, so a copy is
/// self-contained: a test may delete or change a staging file, and a client
/// that cleans staging up after uploading touches only the copy.
pub fn copy_case(case: &Case, into: &Path) -> Vec<PathBuf> {
    let dst = into.join(&case.name);
    copy_tree_rooted(&case.dir, &dst);
    let dirs: Vec<PathBuf> = case.run_dirs.iter().map(|d| dst.join(d)).collect();
    for file in dirs.iter().flat_map(|d| wandb_files_under(d)) {
        relocate_staging(&file, &[&case.recorded_dir, &case.dir], &dst);
    }
    dirs
}

/// Rewrites, in the `.wandb` file `file`, every artifact manifest entry's
/// `local_path` that starts with one of `from` to start with `to` instead.
/// A file without such entries is left untouched (byte for byte).
pub fn relocate_staging(file: &Path, from: &[&Path], to: &Path) {
    use syncd::source::wandb::framing::{LogReader, LogWriter};
    // Record.artifact (8) → ArtifactRecord.manifest (12) →
    // ArtifactManifest.contents (4) → ArtifactManifestEntry.local_path (6).
    const LOCAL_PATH: [u64; 4] = [8, 12, 4, 6];
    let mut edit = |old: &[u8]| -> Option<Vec<u8>> {
        let old = Path::new(std::str::from_utf8(old).ok()?);
        let rest = from.iter().find_map(|f| old.strip_prefix(f).ok())?;
        Some(to.join(rest).into_os_string().into_encoded_bytes())
    };
    let mut reader = LogReader::open(std::fs::File::open(file).unwrap(), 0).unwrap();
    let mut writer = LogWriter::new(Vec::new()).unwrap();
    let mut changed = false;
    while let Some(record) = reader.next_record().unwrap() {
        match rewrite_field(record.payload, &LOCAL_PATH, &mut edit) {
            Some(new) => {
                changed = true;
                writer.append(&new).unwrap();
            }
            None => writer.append(record.payload).unwrap(),
        }
    }
    if changed {
        assert!(
            reader.tail().is_none_or(|t| t.is_clean()),
            "{}: relocating staging paths would drop an incomplete tail",
            file.display()
        );
        std::fs::write(file, writer.into_inner()).unwrap();
    }
}

/// Protobuf wire format: the message `msg` with the length-delimited
/// fields along `path` (field numbers, outermost first; every occurrence of
/// a repeated field) replaced by `edit` of their bytes; `None` if nothing
/// changed or the message cannot be walked.
fn rewrite_field(
    msg: &[u8],
    path: &[u64],
    edit: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::with_capacity(msg.len() + 64);
    let mut changed = false;
    let mut at = 0;
    while at < msg.len() {
        let field_start = at;
        let key = varint(msg, &mut at)?;
        match key & 7 {
            0 => {
                varint(msg, &mut at)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(msg, &mut at)? as usize;
                let body = msg.get(at..at + len)?;
                at += len;
                if key >> 3 == path[0] {
                    let new = if path.len() == 1 {
                        edit(body)
                    } else {
                        rewrite_field(body, &path[1..], edit)
                    };
                    if let Some(new) = new {
                        put_varint(&mut out, key);
                        put_varint(&mut out, new.len() as u64);
                        out.extend_from_slice(&new);
                        changed = true;
                        continue;
                    }
                }
            }
            _ => return None,
        }
        out.extend_from_slice(msg.get(field_start..at)?);
    }
    changed.then_some(out)
}

/// Copies a tree, keeping symlinks; links pointing into `from` are re-pointed
/// into `to`, so nothing the client touches leads back into the fixture.
pub fn copy_tree_rooted(from: &Path, to: &Path) {
    fn walk(root_from: &Path, root_to: &Path, from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let src = entry.path();
            let dst = to.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&src).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&src).unwrap();
                let target = match target.strip_prefix(root_from) {
                    Ok(rest) => root_to.join(rest),
                    Err(_) => target,
                };
                std::os::unix::fs::symlink(target, &dst).unwrap();
            } else if meta.is_dir() {
                walk(root_from, root_to, &src, &dst);
            } else {
                std::fs::copy(&src, &dst).unwrap();
            }
        }
    }
    walk(from, to, from, to);
}

pub struct SyncRun {
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl SyncRun {
    pub fn describe(&self) -> String {
        format!(
            "wandb sync: {:?} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `wandb sync` against `server` with a private HOME under `scratch`.
pub fn wandb_sync(
    cli: &Path,
    server: &WandbServer,
    api_key: &str,
    scratch: &Path,
    args: &[&Path],
) -> SyncRun {
    wandb_sync_with(
        cli,
        server,
        api_key,
        scratch,
        &["--include-synced", "-n", "16"],
        args,
    )
}

/// [`wandb_sync`] with other flags (the legacy client of wandb < 0.28 has
/// no `-n`).
pub fn wandb_sync_with(
    cli: &Path,
    server: &WandbServer,
    api_key: &str,
    scratch: &Path,
    flags: &[&str],
    args: &[&Path],
) -> SyncRun {
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let stdout_path = scratch.join("sync.stdout");
    let stderr_path = scratch.join("sync.stderr");
    let mut cmd = Command::new(cli);
    cmd.arg("sync").args(flags).args(args).current_dir(&home);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WANDB_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env_remove("NETRC")
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("WANDB_CONFIG_DIR", home.join("wandb-config"))
        .env("WANDB_CACHE_DIR", home.join("wandb-cache"))
        .env("WANDB_DATA_DIR", home.join("wandb-data"))
        .env("TMPDIR", &home)
        .env("WANDB_DIR", &home)
        .env("WANDB_BASE_URL", server.base_url())
        .env("WANDB_API_KEY", api_key)
        .env("WANDB_ERROR_REPORTING", "false")
        .env("WANDB_SILENT", "false")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start wandb sync");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for wandb sync") {
            break Some(status);
        }
        if started.elapsed() > SYNC_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    SyncRun {
        status,
        elapsed: started.elapsed(),
        stdout: std::fs::read_to_string(stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(stderr_path).unwrap_or_default(),
    }
}

/// `"0.31.0"` → `(0, 31, 0)`.
pub fn version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// A case's `.wandb` files (original fixture paths), in the manifest's order.
fn fixture_files(case: &Case) -> Vec<PathBuf> {
    case.run_dirs
        .iter()
        .flat_map(|d| wandb_files_under(&case.dir.join(d)))
        .collect()
}

/// All fixture sets, or `None` (with a note) when there is nothing to run.
fn fixture_sets() -> Option<(PathBuf, Vec<PathBuf>)> {
    let cli = wandb_cli()?;
    let sets = generated_roots();
    if sets.is_empty() {
        eprintln!(
            "note: no generated fixture sets (SYNCD_FIXTURES); official-client tests skipped"
        );
        return None;
    }
    Some((cli, sets))
}

/// One small finished run to exercise the client with: `finished` of the first set.
fn small_case() -> Option<(PathBuf, Case)> {
    let (cli, sets) = fixture_sets()?;
    let (_, cases) = cases_of(&sets[0]);
    let case = cases
        .into_iter()
        .find(|c| c.name == "finished")
        .expect("a `finished` fixture case");
    Some((cli, case))
}

/// Syncs every case of one fixture set in ONE `wandb sync` invocation (it
/// syncs different runs in parallel itself) and checks each case.
fn sync_and_check_set(cli: &Path, set: &Path) -> Vec<String> {
    let (version, cases) = cases_of(set);
    let options = Options {
        upload_headers: vec!["X-Syncd-Upload:fixture".into()],
        ..Options::default()
    };
    let server = WandbServer::with_options(options);
    let scratch = tempfile::tempdir().unwrap();
    let copies: Vec<Vec<PathBuf>> = cases
        .iter()
        .map(|case| copy_case(case, &scratch.path().join("cases")))
        .collect();
    let args: Vec<&Path> = copies.iter().flatten().map(PathBuf::as_path).collect();
    let sync = wandb_sync(cli, &server, server.api_key(), scratch.path(), &args);
    eprintln!(
        "wandb {version} fixtures: {} runs synced by the official client in {:.1}s",
        cases.len(),
        sync.elapsed.as_secs_f64()
    );
    // Even with a failed file (the killed run's incomplete record) the
    // official client exits 0.
    if sync.status.is_none_or(|s| !s.success()) {
        return vec![format!("wandb {version}: {}", sync.describe())];
    }

    let all_files: Vec<PathBuf> = cases.iter().flat_map(fixture_files).collect();
    let facts = oracle(&all_files);
    let snapshot = server.snapshot();
    let mut problems = Vec::new();
    let counters = &snapshot["counters"];
    for counter in [
        "storage_auth_violations",
        "missing_upload_headers",
        "unauthorized",
        "bad_requests",
        "gaps",
        "artifact_md5_mismatches",
    ] {
        if counters[counter] != 0 {
            problems.push(format!(
                "wandb {version}: counter {counter} = {}",
                counters[counter]
            ));
        }
    }
    for (case, copied) in cases.iter().zip(&copies) {
        let files: Vec<&Value> = fixture_files(case)
            .iter()
            .map(|f| &facts[f.display().to_string()])
            .collect();
        for problem in check_case(case, &files, &server, &snapshot) {
            problems.push(format!("wandb {version} case {}: {problem}", case.name));
        }
        // `.wandb.synced` is written unless the file ends in an incomplete
        // record (then the client reports an error, yet still exits 0).
        for (dir, fact) in copied.iter().zip(&files) {
            let expected = fact["tail_incomplete"] != true;
            if synced_marker(dir) != expected {
                problems.push(format!(
                    "wandb {version} case {}: .synced marker present = {}",
                    case.name, !expected
                ));
            }
        }
    }
    if !problems.is_empty() {
        problems.push(sync.describe());
    }
    problems
}

/// What the server must hold after the official client synced `case`.
fn check_case(
    case: &Case,
    facts: &[&Value],
    server: &WandbServer,
    snapshot: &Value,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let Some(run) = snapshot["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == case.run_id.as_str())
    else {
        return vec![format!("no run {} on the server", case.run_id)];
    };
    let expect = &case.expect;
    let rows: Vec<u64> = facts
        .iter()
        .map(|f| f["history_rows"].as_u64().unwrap())
        .collect();
    let total: u64 = rows.iter().sum();
    let history = run["history"].as_array().unwrap();
    let steps: Vec<Value> = history.iter().map(|h| h["_step"].clone()).collect();

    // History: every row once, in order, no gaps, nothing sent twice.
    check(
        history.len() as u64 == total,
        format!("{} history lines, fixture has {total} rows", history.len()),
    );
    if let Some(n) = expect["history_rows"].as_u64() {
        check(
            total == n,
            format!("oracle counts {total} rows, manifest says {n}"),
        );
    }
    check(
        run["history_lines_received"] == total,
        format!(
            "{} history lines received for {total} rows",
            run["history_lines_received"]
        ),
    );
    check(
        history.iter().all(Value::is_object),
        "a history line is missing or unparsable".into(),
    );
    // Steps: 0.31 offline runs written with `resume=` are renumbered by the
    // client's resume reconciliation (RunResumeStatus → starting_step);
    // older files have no `RunRecord.resume`, so each fragment keeps its own
    // `_step`s and the second fragment is appended after the first.
    let renumbered = rows.len() > 1 && version(&case.set) >= (0, 31, 0);
    let expected_steps: Vec<Value> = if renumbered {
        (0..total).map(|s| json!(s)).collect()
    } else {
        rows.iter()
            .flat_map(|&n| (0..n).map(|s| json!(s)))
            .collect()
    };
    check(
        steps == expected_steps,
        format!("_steps {steps:?}, expected {expected_steps:?}"),
    );
    let last_step = facts.last().unwrap()["last_step"].clone();
    if !renumbered {
        check(
            steps.last() == Some(&last_step),
            format!("last _step {:?}, fixture's is {last_step}", steps.last()),
        );
    }
    if let Some(n) = expect["last_step"].as_u64() {
        check(
            steps.last() == Some(&json!(n)),
            format!("last _step {:?}, manifest says {n}", steps.last()),
        );
    }
    if let Some(parts) = expect["x_values"].as_array() {
        let xs: Vec<Value> = history.iter().map(|h| h["x"].clone()).collect();
        let expected: Vec<Value> = parts
            .iter()
            .flat_map(|p| p.as_array().unwrap().clone())
            .collect();
        check(
            xs == expected,
            format!("x values {xs:?}, expected {expected:?}"),
        );
    }

    // Exit: complete, with the fixture's exit code. A run without an exit
    // record (killed) is sent as complete with exitcode 1 by the official
    // client — marked failed; syncd deliberately differs here.
    let exit_code = facts.last().unwrap()["exit_code"].clone();
    let expected_exit = if exit_code.is_null() {
        json!(1)
    } else {
        exit_code
    };
    check(
        run["complete"] == true,
        format!("complete = {}", run["complete"]),
    );
    check(
        run["exitcode"] == expected_exit,
        format!("exitcode {}, expected {expected_exit}", run["exitcode"]),
    );
    if let Some(code) = expect["exit_code"].as_i64() {
        check(
            run["exitcode"] == code,
            format!("exitcode {}, manifest says {code}", run["exitcode"]),
        );
    }

    // Config, summary, files.
    let config = &run["config"];
    check(
        config["_wandb"]["value"].is_object(),
        "config has no _wandb".into(),
    );
    if let Some(expected) = expect["config"].as_object() {
        for (key, value) in expected {
            check(
                &config[key]["value"] == value,
                format!("config {key} = {}, expected {value}", config[key]),
            );
        }
    }
    for key in expect["config_keys"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap();
        check(
            config[key]["value"].is_object(),
            format!("config has no {key}"),
        );
    }
    let summary = &run["summary"];
    check(
        summary.is_object() && summary["_step"] == steps.last().cloned().unwrap_or_default(),
        format!("summary {summary}"),
    );
    let stored: Vec<&str> = run["storage"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for file in ["wandb-metadata.json", "config.yaml", "wandb-summary.json"] {
        check(
            stored.contains(&file),
            format!("{file} not uploaded (got {stored:?})"),
        );
    }
    let mut uploaded: Vec<&str> = run["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    uploaded.sort();
    check(
        uploaded == stored,
        format!("FileStream `uploaded` {uploaded:?} differs from the PUTs {stored:?}"),
    );
    let config_yaml = server
        .stored_file(&case.run_id, "config.yaml")
        .unwrap_or_default();
    check(
        String::from_utf8_lossy(&config_yaml).contains("_wandb:"),
        "config.yaml lacks _wandb".into(),
    );

    // Artifact cases: every version the run logged is committed, with the
    // name and type the generator gave it.
    if let Some((name, kind)) = expect["artifact"].as_str().and_then(|a| a.split_once(':')) {
        let versions: Vec<Value> = server
            .artifacts()
            .into_iter()
            .filter(|a| a["created_by"] == case.run_id.as_str())
            .collect();
        check(
            !versions.is_empty()
                && versions
                    .iter()
                    .all(|a| a["name"] == name && a["type"] == kind && a["state"] == "COMMITTED"),
            format!("artifacts {versions:#?}"),
        );
    }

    // Case-specific facts from the generator's manifest.
    match case.name.as_str() {
        "finished" => {
            check(
                run["displayName"] == expect["name"],
                format!("displayName {}", run["displayName"]),
            );
            check(
                run["groupName"] == expect["group"],
                format!("groupName {}", run["groupName"]),
            );
            check(
                run["jobType"] == expect["job_type"],
                format!("jobType {}", run["jobType"]),
            );
            check(
                run["tags"] == expect["tags"],
                format!("tags {}", run["tags"]),
            );
            check(
                run["repo"] == expect["git_remote"],
                format!("repo {}", run["repo"]),
            );
            check(
                !run["output"].as_array().unwrap().is_empty(),
                "no output.log lines".into(),
            );
        }
        "nan_inf" => {
            let raw: String = run["history_raw"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for token in [":NaN", ":Infinity", ":-Infinity"] {
                check(
                    raw.contains(token),
                    format!("no bare {token} in the history lines"),
                );
            }
            let first = &history[0];
            check(
                first["nan"] == "NaN" && first["inf"] == "Infinity" && first["ninf"] == "-Infinity",
                format!("parsed {first}"),
            );
            // 2**70 as a float64, as Go prints it (serde_json's own float
            // parsing may be off by one ulp, so compare the text).
            check(
                raw.contains(":1.1805916207174113e+21"),
                "2**70 not sent as 1.1805916207174113e+21".into(),
            );
        }
        "metrics_alert_preempt" => {
            check(run["preempting"] == true, "preempting not recorded".into());
            let titles: Vec<&Value> = run["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| &a["title"])
                .collect();
            check(titles == [&expect["alert"]], format!("alerts {titles:?}"));
            // Files of the legacy writer (0.16, 0.17) carry no per-step
            // summary records, and the official client does not rebuild the
            // define_metric aggregates from history: only wandb-core's
            // files (0.18 on) have it.
            if version(&case.set) >= (0, 18, 0) {
                let metric = expect["summary_max_metric"].as_str().unwrap();
                check(
                    summary[metric]["max"].is_number(),
                    format!("summary {metric} = {}", summary[metric]),
                );
            }
        }
        "media_save" => {
            for step in expect["images_at_steps"].as_array().unwrap() {
                let prefix = format!("media/images/img_{step}_");
                check(
                    stored.iter().any(|f| f.starts_with(&prefix)),
                    format!("no {prefix}*.png uploaded"),
                );
            }
            check(
                stored.contains(&"notes.txt") && stored.contains(&"inside.txt"),
                format!("saved files {stored:?}"),
            );
            check(
                !stored.contains(&"unregistered.txt"),
                "unregistered.txt uploaded".into(),
            );
        }
        "slurm_env" if expect["slurm_job_id"].is_string() => {
            let metadata = server
                .stored_file(&case.run_id, "wandb-metadata.json")
                .unwrap_or_default();
            let metadata: Value = serde_json::from_slice(&metadata).unwrap_or_default();
            check(
                metadata["slurm"] == expect["slurm"],
                format!("wandb-metadata.json slurm = {}", metadata["slurm"]),
            );
        }
        "big_record" => {
            let big = expect["big_history_value_bytes"].as_u64().unwrap() as usize;
            let longest = run["history_raw"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .map(str::len)
                .max();
            check(
                longest.unwrap_or(0) > big,
                format!("longest history line {longest:?} bytes"),
            );
            let big = expect["big_config_value_bytes"].as_u64().unwrap() as usize;
            let value = config["big_config"]["value"].to_string();
            check(
                value.len() >= big,
                format!("big_config value is {} bytes", value.len()),
            );
        }
        "resumed" => {
            let ops: Vec<&Value> = snapshot["operations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["variables"]["name"] == case.run_id.as_str())
                .collect();
            let resume_checks = ops
                .iter()
                .filter(|o| o["name"] == "RunResumeStatus")
                .count();
            let expected = if renumbered { rows.len() } else { 0 };
            check(
                resume_checks == expected,
                format!("{resume_checks} RunResumeStatus calls, expected {expected}"),
            );
            let with_id = ops
                .iter()
                .any(|o| o["name"] == "UpsertBucket" && o["variables"]["id"] == run["id"]);
            check(
                with_id == renumbered,
                format!("UpsertBucket carried the server's run id: {with_id}"),
            );
        }
        _ => {}
    }
    problems
}

#[test]
fn official_sync_of_every_fixture_case_is_recorded_faithfully() {
    let Some((cli, sets)) = fixture_sets() else {
        return;
    };
    let started = Instant::now();
    let problems: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = sets
            .iter()
            .map(|set| scope.spawn(|| sync_and_check_set(&cli, set)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("set checker panicked"))
            .collect()
    });
    eprintln!(
        "{} fixture sets synced and checked in {:.1}s",
        sets.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Syncs the small `finished` case against `server` with `api_key`.
fn sync_small(
    cli: &Path,
    case: &Case,
    server: &WandbServer,
    api_key: &str,
) -> (SyncRun, tempfile::TempDir, Vec<PathBuf>) {
    let scratch = tempfile::tempdir().unwrap();
    let dirs = copy_case(case, &scratch.path().join("cases"));
    let args: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let sync = wandb_sync(cli, server, api_key, scratch.path(), &args);
    (sync, scratch, dirs)
}

fn synced_marker(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".wandb.synced"))
}

/// A wrong key: the server answers 401 and the client gives up at once (no
/// retry, no `.synced` marker, the server's message shown). Observed with
/// 0.31.0: `wandb sync` still exits 0, so callers cannot rely on its status.
#[test]
fn official_client_gives_up_on_a_wrong_api_key() {
    let Some((cli, case)) = small_case() else {
        return;
    };
    let server = WandbServer::start();
    let wrong = "wrongkey0123456789abcdef0123456789abcdef";
    assert_ne!(wrong, server.api_key());
    let (sync, _scratch, dirs) = sync_small(&cli, &case, &server, wrong);
    eprintln!(
        "wrong API key: wandb sync exited {:?} after {:.1}s",
        sync.status,
        sync.elapsed.as_secs_f64()
    );
    let snapshot = server.snapshot();
    let requests: Vec<(&Value, &Value)> = snapshot["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (&r["op"], &r["status"]))
        .collect();
    assert_eq!(
        requests,
        [(&json!("UpsertBucket"), &json!(401))],
        "one refused UpsertBucket, no retry\n{}",
        sync.describe()
    );
    assert_eq!(snapshot["counters"]["unauthorized"], 1);
    assert!(
        server.run(&case.run_id).is_none(),
        "a run was recorded without a valid key"
    );
    assert!(
        !dirs.iter().any(|d| synced_marker(d)),
        "the client marked the run synced"
    );
    assert!(
        sync.stderr.contains("invalid or missing API key"),
        "the server's message is not shown\n{}",
        sync.describe()
    );
}

/// Checks the run of the `finished` case after a sync that had faults.
fn assert_converged(server: &WandbServer, case: &Case, sync: &SyncRun) {
    let run = server
        .run(&case.run_id)
        .unwrap_or_else(|| panic!("no run\n{}", sync.describe()));
    let rows = case.expect["history_rows"].as_u64().unwrap();
    assert_eq!(run["complete"], true, "{}", sync.describe());
    assert_eq!(run["exitcode"], 0);
    assert_eq!(run["history"].as_array().unwrap().len() as u64, rows);
    assert_eq!(run["history"][rows as usize - 1]["_step"], rows - 1);
    assert_eq!(run["gaps"], 0);
    assert!(run["storage"]["config.yaml"].is_object());
}

fn statuses_of(server: &WandbServer, filter: impl Fn(&Value) -> bool) -> Vec<u64> {
    let snapshot = server.snapshot();
    snapshot["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| filter(r))
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

#[test]
fn official_client_honours_retry_after_on_file_stream_429s() {
    let Some((cli, case)) = small_case() else {
        return;
    };
    let server = WandbServer::start();
    server.inject(
        Endpoint::FileStream,
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        2,
    );
    let (sync, _scratch, dirs) = sync_small(&cli, &case, &server, DEFAULT_API_KEY);
    assert!(
        sync.status.is_some_and(|s| s.success()),
        "{}",
        sync.describe()
    );
    assert_converged(&server, &case, &sync);
    let stream = statuses_of(&server, |r| {
        r["path"].as_str().unwrap().ends_with("/file_stream")
    });
    assert_eq!(
        &stream[..3],
        [429, 429, 200],
        "file_stream statuses {stream:?}"
    );
    assert!(
        sync.elapsed >= Duration::from_secs(2),
        "Retry-After: 1 twice, done in {:?}",
        sync.elapsed
    );
    let run = server.run(&case.run_id).unwrap();
    assert_eq!(
        run["history_lines_received"],
        run["history"].as_array().unwrap().len(),
        "refused requests are not stored"
    );
    assert!(dirs.iter().all(|d| synced_marker(d)));
    eprintln!(
        "2x 429 + Retry-After: 1 on file_stream: synced in {:.1}s",
        sync.elapsed.as_secs_f64()
    );
}

#[test]
fn official_client_retries_a_500_and_resends_after_a_lost_answer() {
    let Some((cli, case)) = small_case() else {
        return;
    };
    let server = WandbServer::start();
    server.inject(
        Endpoint::Operation("UpsertBucket".into()),
        Fault::Status {
            code: 500,
            retry_after: None,
        },
        1,
    );
    // The first FileStream request with history lines is stored, but its
    // answer never arrives: the client must send it again.
    server.inject(
        Endpoint::FileStreamWith("wandb-history.jsonl".into()),
        Fault::DropAfterProcessing,
        1,
    );
    let (sync, _scratch, _dirs) = sync_small(&cli, &case, &server, DEFAULT_API_KEY);
    assert!(
        sync.status.is_some_and(|s| s.success()),
        "{}",
        sync.describe()
    );
    assert_converged(&server, &case, &sync);
    let upserts = statuses_of(&server, |r| r["op"] == "UpsertBucket");
    assert_eq!(
        &upserts[..2],
        [500, 200],
        "UpsertBucket statuses {upserts:?}"
    );
    let stream = statuses_of(&server, |r| {
        r["path"].as_str().unwrap().ends_with("/file_stream")
    });
    assert!(
        stream.windows(2).any(|w| w == [0, 200]),
        "file_stream statuses {stream:?}"
    );
    // Resent at the same offsets: stored once, the lost request's lines
    // received twice.
    let run = server.run(&case.run_id).unwrap();
    let rows = case.expect["history_rows"].as_u64().unwrap();
    let received = run["history_lines_received"].as_u64().unwrap();
    assert!(
        received > rows && received <= 2 * rows,
        "{received} history lines received for {rows} rows"
    );
    assert_eq!(run["history"].as_array().unwrap().len() as u64, rows);
    eprintln!(
        "500 on UpsertBucket + lost file_stream answer: synced in {:.1}s",
        sync.elapsed.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Artifacts with the official clients.
// ---------------------------------------------------------------------------

/// The `wandb` executable of the venv next to the oracle's named `wandb-<version>`.
fn venv_cli(version: &str) -> Option<std::path::PathBuf> {
    let oracle = wandb_cli()?;
    let venvs = oracle.parent()?.parent()?.parent()?;
    let cli = venvs.join(format!("venv-wandb-{version}/bin/wandb"));
    cli.is_file().then_some(cli)
}

/// The fixture cases named `names` of every set (copied into `into`),
/// with the set's wandb version.
fn artifact_cases(names: &[&str]) -> Vec<(String, Case)> {
    let mut out = Vec::new();
    for set in crate::support::generated_roots() {
        let (version, cases) = cases_of(&set);
        for case in cases {
            if names.contains(&case.name.as_str()) {
                out.push((version.clone(), case));
            }
        }
    }
    out
}

/// Syncs copies of `cases` with `cli` in one invocation; returns the sync.
fn sync_cases(
    cli: &std::path::Path,
    server: &WandbServer,
    cases: &[&Case],
    scratch: &std::path::Path,
) -> SyncRun {
    let copies: Vec<std::path::PathBuf> = cases
        .iter()
        .flat_map(|c| copy_case(c, &scratch.join("cases")))
        .collect();
    let args: Vec<&std::path::Path> = copies.iter().map(std::path::PathBuf::as_path).collect();
    // The legacy CLI (wandb < 0.28) has no `-n`.
    let legacy = cli.to_string_lossy().contains("venv-wandb-0.17.");
    let flags: &[&str] = if legacy {
        &["--include-synced"]
    } else {
        &["--include-synced", "-n", "16"]
    };
    wandb_sync_with(cli, server, server.api_key(), scratch, flags, &args)
}

/// What every artifact upload by an official client leaves on the server.
fn check_uploaded_artifact(server: &WandbServer, run_id: &str, ctx: &str) -> Value {
    let snapshot = server.snapshot();
    let mine: Vec<&Value> = snapshot["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["created_by"] == run_id)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "{ctx}: artifacts {:#}",
        snapshot["artifacts"]
    );
    let a = mine[0];
    assert_eq!(a["state"], "COMMITTED", "{ctx}: {a:#}");
    assert_eq!(a["version"], "v0", "{ctx}");
    assert_eq!(a["aliases"], json!(["latest"]), "{ctx}");
    assert_eq!(
        (a["creates"].clone(), a["commits"].clone()),
        (json!(1), json!(1)),
        "{ctx}"
    );
    assert_eq!(a["manifest_puts"], 1, "{ctx}");
    assert_eq!(
        a["manifest"]["storagePolicyConfig"]["storageLayout"], "V2",
        "{ctx}"
    );
    let entries = a["entries"].as_object().unwrap();
    assert!(!entries.is_empty(), "{ctx}: an empty manifest");
    for (path, entry) in entries {
        if entry.get("ref").is_some_and(|r| !r.is_null()) {
            continue;
        }
        let file = &a["files"][path];
        assert_eq!(file["md5"], entry["digest"], "{ctx}: {path}");
        assert_eq!(file["puts"], 1, "{ctx}: {path} stored once");
        assert_eq!(file["size"], entry["size"], "{ctx}: {path}");
        assert_eq!(entry["birthArtifactID"], a["id"], "{ctx}: {path}");
    }
    let counters = &snapshot["counters"];
    for counter in [
        "artifact_md5_mismatches",
        "artifact_puts_without_md5",
        "not_implemented",
        "missing_upload_headers",
        "storage_auth_violations",
    ] {
        assert_eq!(counters[counter], 0, "{ctx}: counter {counter}");
    }
    a.clone()
}

/// The oracle client (0.31.0) uploads the `artifact` case of every fixture
/// set in the order wandb-core uses, and the server keeps what it sent.
#[test]
fn official_client_uploads_an_artifact() {
    let Some(cli) = wandb_cli() else {
        return;
    };
    let cases = artifact_cases(&["artifact"]);
    assert!(!cases.is_empty() || std::env::var_os("SYNCD_REQUIRE_FIXTURES").is_none());
    for (version, case) in &cases {
        let ctx = format!("wandb {version} fixture, 0.31.0 client");
        let options = Options {
            upload_headers: vec!["X-Syncd-Upload:artifact".into()],
            ..Options::default()
        };
        let server = WandbServer::with_options(options);
        let scratch = tempfile::tempdir().unwrap();
        let sync = sync_cases(&cli, &server, &[case], scratch.path());
        assert!(
            sync.status.is_some_and(|s| s.success()),
            "{}",
            sync.describe()
        );
        let a = check_uploaded_artifact(&server, &case.run_id, &ctx);
        assert_eq!(a["name"], "fixture-dataset", "{ctx}");
        assert_eq!(a["type"], "dataset", "{ctx}");
        assert_eq!(a["description"], "tiny csv", "{ctx}");
        assert_eq!(a["metadata"], json!({"rows": 2}), "{ctx}");
        assert_eq!(a["project"], "syncd-fixtures", "{ctx}");
        assert_eq!(
            a["entity"], "default-entity",
            "{ctx}: empty entity = the default one"
        );
        let id = a["id"].as_str().unwrap();
        assert_eq!(
            server.artifact_file(id, "data.csv").unwrap(),
            b"a,b\n1,2\n3,4\n",
            "{ctx}"
        );
        let ops: Vec<String> = server
            .operation_names()
            .into_iter()
            .filter(|o| o.contains("Artifact"))
            .collect();
        assert_eq!(
            ops,
            [
                "CreateArtifact",
                "CreateArtifactManifest",
                "CreateArtifactFiles",
                "CreateArtifactManifest",
                "CommitArtifact"
            ],
            "{ctx}\n{}",
            sync.describe()
        );
        let operations = server.snapshot()["operations"].clone();
        let manifests: Vec<&Value> = operations
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["name"] == "CreateArtifactManifest")
            .collect();
        assert_eq!(manifests[0]["variables"]["includeUpload"], false, "{ctx}");
        assert_eq!(manifests[1]["variables"]["includeUpload"], true, "{ctx}");
        let puts: Vec<String> = server.snapshot()["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"].as_str().unwrap().starts_with("/artifacts/"))
            .map(|r| format!("{} {}", r["path"].as_str().unwrap(), r["status"]))
            .collect();
        assert_eq!(
            puts,
            [
                format!("/artifacts/{id}/files/data.csv 200"),
                format!("/artifacts/{id}/manifest 200")
            ],
            "{ctx}"
        );
    }
}

/// The artifact versions run `run_id` created, oldest first.
fn created_by(server: &WandbServer, run_id: &str) -> Vec<Value> {
    server
        .artifacts()
        .into_iter()
        .filter(|a| a["created_by"] == run_id)
        .collect()
}

/// Per case: what the official client must leave on the server.
fn check_artifact_case(server: &WandbServer, case: &Case, copy: &std::path::Path, ctx: &str) {
    let versions = created_by(server, &case.run_id);
    let committed: Vec<&Value> = versions
        .iter()
        .filter(|a| a["state"] == "COMMITTED")
        .collect();
    assert_eq!(committed.len(), versions.len(), "{ctx}: {versions:#?}");
    // Every file entry's bytes are on the server, equal to the source file.
    for a in &versions {
        for (path, entry) in a["entries"].as_object().unwrap() {
            let src = ["artifact_src", "artifact_src_v0", "artifact_src_v1"]
                .iter()
                .map(|d| copy.join(d).join(path))
                .find(|p| p.is_file());
            match entry.get("ref").and_then(Value::as_str) {
                Some(reference) => {
                    assert!(
                        a["files"].get(path).is_none(),
                        "{ctx}: reference {reference} uploaded"
                    );
                }
                None => {
                    let stored = server.artifact_file(a["id"].as_str().unwrap(), path);
                    let src = src.unwrap_or_else(|| panic!("{ctx}: no source for {path}"));
                    assert_eq!(stored, Some(std::fs::read(src).unwrap()), "{ctx}: {path}");
                }
            }
        }
    }
    let expect = &case.expect;
    match case.name.as_str() {
        "artifact_tree" => {
            assert_eq!(versions.len(), 1, "{ctx}");
            let a = &versions[0];
            assert_eq!(a["aliases"], expect["aliases"], "{ctx}");
            let paths: Vec<&String> = a["entries"].as_object().unwrap().keys().collect();
            assert_eq!(json!(paths), expect["files"], "{ctx}");
            assert_eq!(a["metadata"]["nested"]["layers"], json!([64, 32]), "{ctx}");
            assert_eq!(a["type"], "model", "{ctx}");
        }
        "artifact_refs" => {
            assert_eq!(versions.len(), 1, "{ctx}");
            let entries = versions[0]["entries"].as_object().unwrap();
            let refs: Vec<&str> = entries.values().filter_map(|e| e["ref"].as_str()).collect();
            assert_eq!(refs.len(), 3, "{ctx}: {entries:#?}");
            assert!(
                refs.iter().any(|r| r.starts_with("s3://"))
                    && refs.iter().any(|r| r.starts_with("gs://"))
                    && refs.iter().any(|r| r.starts_with("file://")),
                "{ctx}: {refs:?}"
            );
            let uploaded: Vec<&String> = versions[0]["files"].as_object().unwrap().keys().collect();
            assert_eq!(uploaded, ["local.txt"], "{ctx}");
        }
        "artifact_versions" => {
            assert_eq!(
                versions.len(),
                2,
                "{ctx}: no third version for the same digest"
            );
            let (v0, v1) = (&versions[0], &versions[1]);
            assert_eq!(
                (v0["version"].clone(), v1["version"].clone()),
                (json!("v0"), json!("v1")),
                "{ctx}"
            );
            assert_eq!(v0["aliases"], json!([]), "{ctx}");
            assert_eq!(v1["aliases"], json!(["again", "latest"]), "{ctx}");
            assert_eq!(
                (v0["creates"].clone(), v1["creates"].clone()),
                (json!(1), json!(2)),
                "{ctx}"
            );
            assert_eq!(v1["commits"], 1, "{ctx}");
            // The shared file is stored once, with v0; v1 names v0 as its birth artifact.
            let shared = &v1["files"]["shared.txt"];
            assert_eq!(shared["upload_requested"], false, "{ctx}: {shared}");
            assert_eq!(shared["birthArtifactID"], v0["id"], "{ctx}");
            assert_eq!(
                v1["entries"]["shared.txt"]["birthArtifact"], "fixture-versions:v0",
                "{ctx}"
            );
            assert_eq!(v0["files"]["shared.txt"]["puts"], 1, "{ctx}");
        }
        _ => {
            assert_eq!(versions.len(), 1, "{ctx}");
            assert_eq!(versions[0]["aliases"], json!(["latest"]), "{ctx}");
        }
    }
    // No file PUT twice.
    let snapshot = server.snapshot();
    let mut puts: Vec<&str> = snapshot["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "PUT" && r["path"].as_str().unwrap().starts_with("/artifacts/"))
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    let all = puts.len();
    puts.sort();
    puts.dedup();
    assert_eq!(puts.len(), all, "{ctx}: a PUT repeated");
}

/// The oracle client (0.31.0) on every artifact case of every set, and the
/// legacy saver of 0.17.9 (its own `wandb sync`) on the 0.17.9 set: each
/// version is created, its files and manifest uploaded and committed.
#[test]
fn official_clients_upload_every_artifact_case() {
    let Some(oracle) = wandb_cli() else {
        return;
    };
    let names = [
        "artifact",
        "artifact_tree",
        "artifact_refs",
        "artifact_versions",
        "artifact_staging_gone",
    ];
    let cases = artifact_cases(&names);
    let mut clients = vec![("0.31.0".to_string(), oracle)];
    if let Some(legacy) = venv_cli("0.17.9") {
        clients.push(("0.17.9".into(), legacy));
    }
    let mut checked = 0;
    for (client, cli) in &clients {
        for (version, case) in &cases {
            if client == "0.17.9" && version != "0.17.9" {
                continue;
            }
            let ctx = format!("wandb {version} case {}, client {client}", case.name);
            let server = WandbServer::start();
            let scratch = tempfile::tempdir().unwrap();
            let sync = sync_cases(cli, &server, &[case], scratch.path());
            assert!(
                sync.status.is_some_and(|s| s.success()),
                "{ctx}\n{}",
                sync.describe()
            );
            let counters = server.snapshot()["counters"].clone();
            for counter in ["artifact_md5_mismatches", "not_implemented", "bad_requests"] {
                assert_eq!(
                    counters[counter],
                    0,
                    "{ctx}: {counter}\n{}\n{:#}",
                    sync.describe(),
                    server.snapshot()["operations"]
                );
            }
            let copy = scratch.path().join("cases").join(&case.name);
            check_artifact_case(&server, case, &copy, &ctx);
            // Neither client removes the staging copies after uploading
            // (wandb-core's saver would for a staging dir it was given;
            // `wandb sync` gives none).
            let staged = |dir: &std::path::Path| {
                std::fs::read_dir(dir.join("_home/wandb-data/artifacts/staging"))
                    .map_or(0, |d| d.count())
            };
            assert_eq!(
                staged(&copy),
                staged(&case.dir),
                "{ctx}: staging files removed"
            );
            // The order wandb-core and the legacy saver share, per version.
            let ops: Vec<String> = server
                .operation_names()
                .into_iter()
                .filter(|o| o.contains("Artifact") && !o.starts_with("Probe"))
                .collect();
            assert_eq!(
                ops.first().map(String::as_str),
                Some("CreateArtifact"),
                "{ctx}: {ops:?}"
            );
            let commits = ops.iter().filter(|o| *o == "CommitArtifact").count();
            assert_eq!(
                commits,
                created_by(&server, &case.run_id).len(),
                "{ctx}: one commit per version: {ops:?}"
            );
            eprintln!("{ctx}: {ops:?}");
            checked += 1;
        }
    }
    assert!(checked > 0 || std::env::var_os("SYNCD_REQUIRE_FIXTURES").is_none());
}
