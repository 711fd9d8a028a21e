//! The official `wandb sync` is the oracle: for every fixture case of every
//! wandb version, the server's state after `syncd sync` equals its state
//! after `wandb sync`, except the deliberate differences listed in the
//! README: the run's own `program` instead of the sync tool's path, a run
//! without exit record left open instead of failed, the console of every
//! fragment of a resumed run kept, console timestamps (the upload time in
//! both) left out of the comparison, OSC sequences (window titles) not shown
//! in the console. Artifacts are part of the state ([`artifacts_observable`]).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::official_sync::{Case, cases_of, copy_case, wandb_cli, wandb_sync};
use crate::support::generated_roots;
use crate::sync::syncd_sync;
use crate::wandb_server::WandbServer;

/// The parts of a run's server state that must agree. Console lines lose
/// their upload-time stamp; lines are compared parsed (key order and float
/// spelling are the writer's business); generated files are compared by
/// content; user files by bytes.
fn observable(server: &WandbServer, run: &Value) -> Value {
    let parse = |v: &Value| -> Value {
        v.as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        l.as_str()
                            .and_then(crate::wandb_server::parse_lenient)
                            .unwrap_or(Value::Null)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let console: Vec<Value> = crate::sync::comparable(run)["console"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let name = run["name"].as_str().unwrap_or_default();
    let mut files = serde_json::Map::new();
    for (path, info) in run["storage"].as_object().cloned().unwrap_or_default() {
        let value = match path.as_str() {
            "wandb-summary.json" | "wandb-metadata.json" => server
                .stored_file(name, &path)
                .and_then(|b| crate::wandb_server::parse_lenient(&String::from_utf8_lossy(&b)))
                .unwrap_or(Value::Null),
            // Both write YAML of the same config; the official one is
            // compared through the config the server stored.
            "config.yaml" => json!("generated"),
            // Made from the console records by both: its lines must be
            // the console's text, line for line.
            "output.log" => server
                .stored_file(name, &path)
                .map(|b| {
                    json!(
                        String::from_utf8_lossy(&b)
                            .lines()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    )
                })
                .unwrap_or(Value::Null),
            _ => info["sha256"].clone(),
        };
        files.insert(path, value);
    }
    json!({
        "entity": run["entity"], "project": run["project"], "name": run["name"],
        "config": run["config"], "summary": run["summary"],
        "history": parse(&run["history_raw"]), "events": parse(&run["events"]),
        "console": console, "files": files,
        "complete": run["complete"], "exitcode": run["exitcode"], "preempting": run["preempting"],
        "alerts": run["alerts"],
        "displayName": run["displayName"], "notes": run["notes"], "tags": run["tags"],
        "groupName": run["groupName"], "jobType": run["jobType"], "host": run["host"],
        "commit": run["commit"], "repo": run["repo"],
        "artifacts": artifacts_observable(server, name),
    })
}

/// The artifact versions run `run_name` created or used on `server`, in a
/// form two servers can be compared by: type, name, version, digest,
/// aliases, state, description, metadata, the manifest's entries (path →
/// digest, size, ref, extra, and the birth artifact as `name:version`), the
/// sha256 of the bytes the server holds for each file entry, and whether
/// the run created or used it. Left out: server ids, the manifest's own
/// digest and each entry's `local_path` / `skip_cache` (the uploading
/// machine's staging file; wandb-core writes it into the manifest it uploads).
pub fn artifacts_observable(server: &WandbServer, run_name: &str) -> Value {
    let mut versions: Vec<Value> = server
        .artifacts()
        .into_iter()
        .filter(|a| {
            a["created_by"] == run_name
                || a["used_by"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|r| r == run_name))
        })
        .map(|a| {
            let id = a["id"].as_str().unwrap_or_default();
            let entries: serde_json::Map<String, Value> = a["entries"]
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(path, e)| {
                    let bytes = e["ref"]
                        .is_null()
                        .then(|| server.artifact_file(id, &path))
                        .flatten();
                    let sha = bytes.as_deref().map(crate::wandb_server::sha256_hex);
                    let entry = json!({
                        "digest": e["digest"], "size": e["size"], "ref": e["ref"],
                        "extra": e["extra"], "birthArtifact": e["birthArtifact"],
                        "sha256": sha,
                    });
                    (path, entry)
                })
                .collect();
            json!({
                "entity": a["entity"], "project": a["project"],
                "type": a["type"], "name": a["name"], "version": a["version"],
                "digest": a["digest"], "aliases": a["aliases"], "state": a["state"],
                "description": a["description"], "metadata": a["metadata"],
                "created": a["created_by"] == run_name,
                "used": a["used_by"].as_array().is_some_and(|u| u.iter().any(|r| r == run_name)),
                "entries": entries,
            })
        })
        .collect();
    versions.sort_by_key(|v| format!("{}:{}", v["name"], v["version"]));
    Value::Array(versions)
}

/// Differences between the artifacts of run `run_name` on the official
/// client's server and on syncd's (empty when they agree).
pub fn artifact_differences(
    official: &WandbServer,
    ours: &WandbServer,
    run_name: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    differences(
        &artifacts_observable(official, run_name),
        &artifacts_observable(ours, run_name),
        ".artifacts",
        &mut out,
    );
    out
}

/// Paths where two JSON values differ (for readable failures). Numbers
/// are compared as numbers (`2` and `2.0`, or two spellings of one double,
/// are equal).
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            if (x - y).abs() > 1e-12 * x.abs().max(y.abs()) {
                out.push(format!("{at}: official {x} / syncd {y}"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                differences(
                    &x.get(key).cloned().unwrap_or(Value::Null),
                    &y.get(key).cloned().unwrap_or(Value::Null),
                    &format!("{at}.{key}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{at}[{i}]"), out);
            }
        }
        _ if a != b => {
            let show = |v: &Value| v.to_string().chars().take(160).collect::<String>();
            out.push(format!("{at}: official {} / syncd {}", show(a), show(b)));
        }
        _ => {}
    }
}

fn run_has_exit(case: &Case) -> bool {
    case.expect.get("exit_code").is_some_and(|c| !c.is_null())
}

#[test]
fn syncd_leaves_the_same_state_as_the_official_client_on_every_fixture() {
    let Some(cli) = wandb_cli() else { return };
    let sets = generated_roots();
    let mut checked = 0;
    let mut problems = Vec::new();
    for set in &sets {
        let (version, cases) = cases_of(set);
        let tmp = tempfile::tempdir().unwrap();
        let official = WandbServer::start();
        let ours = WandbServer::start();
        // The official client on copies of every case: the runs of one
        // fragment in one invocation (it syncs them in parallel), then each
        // fragment of a resumed run in one of its own, oldest first. In one
        // invocation a run's fragments race each other, and which one's
        // rows land first differs from one sync to the next; a user
        // resuming a run syncs it in order.
        let official_copies = tmp.path().join("official");
        let copies: Vec<Vec<PathBuf>> = cases
            .iter()
            .map(|c| copy_case(c, &official_copies))
            .collect();
        let mut invocations: Vec<Vec<&Path>> = vec![
            copies
                .iter()
                .filter(|dirs| dirs.len() == 1)
                .flatten()
                .map(PathBuf::as_path)
                .collect(),
        ];
        for dirs in copies.iter().filter(|dirs| dirs.len() > 1) {
            invocations.extend(dirs.iter().map(|dir| vec![dir.as_path()]));
        }
        for (i, args) in invocations.iter().enumerate() {
            let sync = wandb_sync(
                &cli,
                &official,
                official.api_key(),
                &tmp.path().join(format!("official-scratch-{i}")),
                args,
            );
            assert!(sync.status.is_some(), "{}", sync.describe());
        }
        // syncd on its own copies (it writes nothing into them, but the
        // comparison must not depend on the official client's markers).
        let our_copies = tmp.path().join("ours");
        let our_dirs: Vec<PathBuf> = cases
            .iter()
            .flat_map(|c| copy_case(c, &our_copies))
            .collect();
        let mut args: Vec<&str> = vec!["-j", "4"];
        args.extend(our_dirs.iter().map(|p| p.to_str().unwrap()));
        let out = syncd_sync(&ours, &tmp.path().join("syncd-home"), &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for case in &cases {
            let ctx = format!("wandb {version} case {}", case.name);
            let (Some(theirs), Some(mine)) = (official.run(&case.run_id), ours.run(&case.run_id))
            else {
                problems.push(format!("{ctx}: run missing on a server"));
                continue;
            };
            let mut expected = observable(&official, &theirs);
            let mut got = observable(&ours, &mine);
            // Deliberate: the official client keeps an OSC sequence (a
            // window title) in the console text as raw characters; syncd
            // drops it, as a terminal does; in the log stream and in
            // `output.log` alike.
            for pointer in ["/console", "/files/output.log"] {
                let lines = expected.pointer_mut(pointer).and_then(Value::as_array_mut);
                for line in lines.into_iter().flatten() {
                    if let Some(text) = line.as_str() {
                        *line = json!(without_osc(text));
                    }
                }
            }
            // `_wandb.m`: the official client lists defined metrics in no
            // fixed order (step_metric_index "5" points 1-based into that
            // order), so compare them as a set, with the index resolved.
            for side in [&mut expected, &mut got] {
                let m = &mut side["config"]["_wandb"]["value"]["m"];
                if let Some(list) = m.as_array().cloned() {
                    let name = |v: &Value| {
                        v["1"]
                            .as_str()
                            .or(v["2"].as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let mut resolved: Vec<Value> = list
                        .iter()
                        .map(|metric| {
                            let mut metric = metric.clone();
                            if let Some(i) = metric["5"].as_u64() {
                                let target = (i as usize).checked_sub(1).and_then(|i| list.get(i));
                                metric["5"] = json!(target.map(name));
                            }
                            metric
                        })
                        .collect();
                    resolved.sort_by_key(name);
                    *m = Value::Array(resolved);
                }
            }
            // `_wandb.e` is keyed by the writer's id; the official client
            // uses the id of its own sync process (new on every sync), so
            // only the environments themselves can be compared.
            for side in [&mut expected, &mut got] {
                let e = &mut side["config"]["_wandb"]["value"]["e"];
                if let Some(map) = e.as_object() {
                    *e = Value::Array(map.values().cloned().collect());
                }
            }
            // Deliberate: a run continued by a second process. The official
            // client syncs each fragment on its own: the last one's
            // output.log replaces the others', and before 0.31 (no resume
            // marker) its console lines start again at line 0, over the
            // first fragment's. syncd keeps the console of every fragment,
            // in order, in both; what the official client kept is its end.
            if case.run_dirs.len() > 1 {
                let lines = |v: &Value| v.as_array().cloned().unwrap_or_default();
                let all_ours = lines(&got["console"]);
                for (what, theirs, ours) in [
                    ("console", &expected["console"], &got["console"]),
                    (
                        "output.log",
                        &expected["files"]["output.log"],
                        &got["files"]["output.log"],
                    ),
                ] {
                    let (theirs, ours) = (lines(theirs), lines(ours));
                    if !ours.ends_with(&theirs) || ours.len() != all_ours.len() {
                        problems.push(format!(
                            "{ctx}: {what}: official {theirs:?} is not the end of syncd's {ours:?}"
                        ));
                    }
                }
                expected["console"] = got["console"].clone();
                if expected["files"].get("output.log").is_some() {
                    expected["files"]["output.log"] = got["files"]["output.log"].clone();
                }
            }
            // Deliberate: a file that is a symlink out of the run directory
            // is not uploaded (the official client uploads its target).
            if case.name == "media_save"
                && let Some(files) = expected["files"].as_object_mut()
            {
                files.remove("notes.txt");
            }
            // wandb before 0.18 writes its last system metrics and its final
            // summary after the exit record. The official sync stops at the
            // exit record and drops them; syncd uploads them. What the
            // official client did send must be there too.
            if crate::official_sync::version(&version) < (0, 18, 0) {
                let ours_summary = got["summary"].as_object().cloned().unwrap_or_default();
                for (key, value) in expected["summary"].as_object().cloned().unwrap_or_default() {
                    let mut d = Vec::new();
                    differences(
                        &value,
                        ours_summary.get(&key).unwrap_or(&Value::Null),
                        &format!(".summary.{key}"),
                        &mut d,
                    );
                    problems.extend(d.into_iter().map(|d| format!("{ctx}: {d}")));
                }
                assert!(
                    got["events"].as_array().unwrap().len()
                        >= expected["events"].as_array().unwrap().len()
                );
                for key in ["summary", "events"] {
                    expected[key] = got[key].clone();
                }
                expected["files"]["wandb-summary.json"] =
                    got["files"]["wandb-summary.json"].clone();
            }
            if !run_has_exit(case) {
                // Deliberate: the official client completes a cut-off run as
                // failed; syncd leaves it open until told to finalize.
                assert_eq!(expected["complete"], true, "{ctx}");
                assert_eq!(expected["exitcode"], 1, "{ctx}");
                assert_ne!(got["complete"], true, "{ctx}: syncd must not complete it");
                expected["complete"] = got["complete"].clone();
                expected["exitcode"] = got["exitcode"].clone();
                // Files generated only when a run ends are not there yet.
                for side in [&mut expected, &mut got] {
                    for generated in [
                        "wandb-summary.json",
                        "config.yaml",
                        "wandb-metadata.json",
                        "output.log",
                    ] {
                        if let Some(files) = side["files"].as_object_mut() {
                            files.remove(generated);
                        }
                    }
                }
            }
            if case.name == "slurm_env" && got["displayName"] != expected["displayName"] {
                // Deliberate: syncd names a Slurm run after its job
                // (`v{version}-{experiment}_{job}`, the array task's job id)
                // and groups array tasks; the official client sends no name.
                assert_eq!(got["displayName"], "train-demo_4240_2", "{ctx}");
                assert_eq!(got["groupName"], "train-demo_4240", "{ctx}");
                assert!(expected["displayName"].is_null(), "{ctx}");
                expected["displayName"] = got["displayName"].clone();
                expected["groupName"] = got["groupName"].clone();
            }
            let mut diffs = Vec::new();
            differences(&expected, &got, "", &mut diffs);
            for d in diffs {
                problems.push(format!("{ctx}: {d}"));
            }
            checked += 1;
        }
    }
    if sets.is_empty() {
        return;
    }
    assert!(checked > 0);
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `text` without its OSC sequences (`ESC ]` up to BEL or `ESC \\`).
fn without_osc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\u{1b}]") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = [("\u{7}", 1), ("\u{1b}\\", 2)]
            .iter()
            .filter_map(|(t, len)| after.find(t).map(|at| at + len))
            .min();
        match end {
            Some(end) => rest = &after[end..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn osc_sequences_are_cut_from_text() {
    assert_eq!(without_osc("a\u{1b}]0;t\u{7}b\u{1b}]2;u\u{1b}\\c"), "abc");
    assert_eq!(without_osc("\u{1b}[31mred"), "\u{1b}[31mred");
}

/// Artifacts alone, on the artifact cases of every set: what `syncd sync`
/// leaves equals what the official client leaves (versions, aliases,
/// states, manifests, bytes), and the official client did upload some.
#[test]
fn syncd_uploads_the_same_artifacts_as_the_official_client() {
    let Some(cli) = wandb_cli() else { return };
    let mut checked = 0;
    let mut problems = Vec::new();
    for set in &generated_roots() {
        let (version, cases) = cases_of(set);
        let cases: Vec<&Case> = cases
            .iter()
            .filter(|c| c.name.starts_with("artifact"))
            .collect();
        if cases.is_empty() {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let official = WandbServer::start();
        let ours = WandbServer::start();
        let theirs: Vec<PathBuf> = cases
            .iter()
            .flat_map(|c| copy_case(c, &tmp.path().join("official")))
            .collect();
        let args: Vec<&Path> = theirs.iter().map(PathBuf::as_path).collect();
        let sync = wandb_sync(
            &cli,
            &official,
            official.api_key(),
            &tmp.path().join("scratch"),
            &args,
        );
        assert!(sync.status.is_some(), "{}", sync.describe());
        let mine: Vec<PathBuf> = cases
            .iter()
            .flat_map(|c| copy_case(c, &tmp.path().join("ours")))
            .collect();
        let mut args: Vec<&str> = vec!["-j", "4"];
        args.extend(mine.iter().map(|p| p.to_str().unwrap()));
        let out = syncd_sync(&ours, &tmp.path().join("syncd-home"), &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for case in &cases {
            let ctx = format!("wandb {version} case {}", case.name);
            let expected = artifacts_observable(&official, &case.run_id);
            assert!(
                expected.as_array().is_some_and(|a| !a.is_empty()),
                "{ctx}: the official client uploaded no artifact\n{}",
                sync.describe()
            );
            problems.extend(
                artifact_differences(&official, &ours, &case.run_id)
                    .into_iter()
                    .map(|d| format!("{ctx}: {d}")),
            );
            checked += 1;
        }
    }
    if generated_roots().is_empty() {
        return;
    }
    assert!(checked > 0, "no artifact fixture cases");
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Whether the generator may skip `case` for wandb `version`, and why (the
/// only cases a writer truly cannot write). Every other case must be in
/// every set: a generator that drops a case for a version, silently or
/// with a reason not listed here, fails this.
fn may_skip(case: &str, version: (u32, u32, u32)) -> Option<&'static str> {
    match case {
        // Typed HistoryItem values are new in 0.31.0.
        "typed_history" if version < (0, 31, 0) => Some("typed value oneof"),
        _ => None,
    }
}

#[test]
fn every_fixture_set_has_every_case_or_a_known_reason_to_skip_it() {
    let sets = generated_roots();
    let manifests: Vec<(PathBuf, Value)> = sets
        .iter()
        .map(|set| {
            let text = std::fs::read_to_string(set.join("manifest.json")).unwrap();
            (set.clone(), serde_json::from_str(&text).unwrap())
        })
        .collect();
    // Every case any set wrote or skipped: the generator's case list.
    let mut all_cases = std::collections::BTreeSet::new();
    for (_, manifest) in &manifests {
        for key in ["cases", "skipped"] {
            all_cases.extend(
                manifest[key]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone()),
            );
        }
    }
    let mut problems = Vec::new();
    for (set, manifest) in &manifests {
        let version = manifest["wandb_version"].as_str().unwrap_or("?");
        let parsed = crate::official_sync::version(version);
        for case in &all_cases {
            let written = manifest["cases"].get(case).is_some();
            let reason = manifest["skipped"].get(case).and_then(Value::as_str);
            match (written, reason, may_skip(case, parsed)) {
                (true, None, _) => {}
                (false, Some(reason), Some(known)) if reason.contains(known) => {}
                (false, Some(reason), _) => problems.push(format!(
                    "{}: wandb {version} skipped {case}: {reason}",
                    set.display()
                )),
                (false, None, _) => problems.push(format!(
                    "{}: wandb {version} has no {case} and no reason",
                    set.display()
                )),
                (true, Some(reason), _) => problems.push(format!(
                    "{}: wandb {version} wrote {case} and skipped it ({reason})",
                    set.display()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `output.log` of a run as a server stores it, line by line.
fn output_log_lines(server: &WandbServer, run_id: &str) -> Option<Vec<String>> {
    let bytes = server.stored_file(run_id, "output.log")?;
    Some(
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// A killed run (no exit record) finalized by `syncd sync --finalize` gets
/// the `output.log` the official client makes of it: the console records,
/// never what the killed writer left in `files/` (0.31.0 leaves a few
/// unflushed bytes there, 0.19.11 an empty file).
#[test]
fn a_finalized_killed_run_gets_its_output_log_from_the_console_records() {
    let Some(cli) = wandb_cli() else { return };
    let mut checked = 0;
    let mut problems = Vec::new();
    for set in generated_roots() {
        let (version, cases) = cases_of(&set);
        let Some(case) = cases.iter().find(|c| c.name == "sigkill") else {
            continue;
        };
        let ctx = format!("wandb {version} case sigkill");
        let tmp = tempfile::tempdir().unwrap();
        let official = WandbServer::start();
        let ours = WandbServer::start();
        // What a killed writer may leave: the start of its console, never
        // flushed further (0.31.0 leaves a few bytes, 0.19.11 none); here
        // the same stale text for every writer.
        let stale = |dirs: &[PathBuf]| {
            for dir in dirs {
                std::fs::create_dir_all(dir.join("files")).unwrap();
                std::fs::write(dir.join("files/output.log"), "REA").unwrap();
            }
        };
        let theirs_dirs = copy_case(case, &tmp.path().join("official"));
        stale(&theirs_dirs);
        let args: Vec<&Path> = theirs_dirs.iter().map(PathBuf::as_path).collect();
        let sync = wandb_sync(
            &cli,
            &official,
            official.api_key(),
            &tmp.path().join("official-scratch"),
            &args,
        );
        assert!(sync.status.is_some(), "{}", sync.describe());
        let our_dirs = copy_case(case, &tmp.path().join("ours"));
        stale(&our_dirs);
        let mut args = vec!["--finalize", "--stale-after", "0s"];
        args.extend(our_dirs.iter().map(|p| p.to_str().unwrap()));
        let out = syncd_sync(&ours, &tmp.path().join("syncd-home"), &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{ctx}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mine = ours.run(&case.run_id).expect("run on syncd's server");
        assert_eq!(mine["complete"], true, "{ctx}: finalized");
        // The spool it was made in is gone once uploaded.
        let spools = tmp.path().join("syncd-home/state/output-log");
        let left: Vec<_> = std::fs::read_dir(&spools)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{ctx}: spools left behind: {left:?}");
        let expected = output_log_lines(&official, &case.run_id);
        let got = output_log_lines(&ours, &case.run_id);
        let Some(expected) = expected else {
            problems.push(format!("{ctx}: the official client uploaded no output.log"));
            continue;
        };
        assert!(
            !expected.is_empty() && expected[0] != "REA",
            "{ctx}: the official client uploaded {expected:?}"
        );
        // The console lines streamed for the run say the same.
        let console: Vec<String> = crate::sync::comparable(&mine)["console"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        if got.as_ref() != Some(&expected) || console != expected {
            problems.push(format!(
                "{ctx}: output.log official {} lines, first {:?} / syncd {:?} lines, first {:?}; console {} lines",
                expected.len(),
                expected.first(),
                got.as_ref().map(Vec::len),
                got.as_ref().and_then(|g| g.first().cloned()),
                console.len()
            ));
        }
        checked += 1;
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    if std::env::var_os("SYNCD_REQUIRE_FIXTURES").is_some() {
        assert!(checked > 0, "no generated set has a sigkill case");
    }
}
