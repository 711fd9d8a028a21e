use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{all_fixture_sets, inspect_json, oracle, wandb_files_under};

fn canonical(p: &str) -> PathBuf {
    Path::new(p)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(p))
}

/// Checks one fixture case directory: every fragment `inspect` reports
/// agrees with the oracle, and every `.wandb` file is reported exactly once.
fn check_case(case_dir: &Path) -> usize {
    let files = wandb_files_under(case_dir);
    if files.is_empty() {
        return 0;
    }
    let facts = oracle(&files);
    let (_, report) = inspect_json(&[case_dir], &[]);
    let mut seen = Vec::new();
    for run in report["runs"].as_array().unwrap() {
        for fragment in run["fragments"].as_array().unwrap() {
            let path = canonical(fragment["path"].as_str().unwrap());
            let expected = facts
                .as_object()
                .unwrap()
                .iter()
                .find(|(p, _)| canonical(p) == path)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("oracle has no facts for {}", path.display()));
            let ctx = path.display().to_string();
            assert_eq!(fragment["records"], expected["records"], "{ctx}: records");
            assert_eq!(
                fragment["record_types"], expected["record_types"],
                "{ctx}: record types"
            );
            assert_eq!(
                fragment["history_rows"], expected["history_rows"],
                "{ctx}: history rows"
            );
            assert_eq!(
                fragment["last_step"], expected["last_step"],
                "{ctx}: last _step"
            );
            assert_eq!(
                fragment["exit_code"], expected["exit_code"],
                "{ctx}: exit code"
            );
            assert_eq!(
                fragment["slurm_job_id"], expected["slurm_job_id"],
                "{ctx}: Slurm job id"
            );
            assert_eq!(
                fragment["cursor"], expected["complete_offset"],
                "{ctx}: resume offset"
            );
            let tail_clean = fragment["tail"]["state"] == "clean";
            assert_eq!(
                tail_clean,
                !expected["tail_incomplete"].as_bool().unwrap(),
                "{ctx}: tail"
            );
            if let Some(id) = expected["run_id"].as_str() {
                assert_eq!(run["run_id"], id, "{ctx}: run id");
            }
            seen.push(path);
        }
    }
    let mut expected: Vec<PathBuf> = files.iter().map(|f| f.canonicalize().unwrap()).collect();
    expected.sort();
    seen.sort();
    assert_eq!(
        seen,
        expected,
        "{}: every file reported exactly once",
        case_dir.display()
    );
    files.len()
}

#[test]
fn inspect_agrees_with_the_independent_reader_on_every_fixture() {
    let mut checked = 0;
    for set in all_fixture_sets() {
        for case in std::fs::read_dir(&set)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
        {
            checked += check_case(&case.path());
        }
    }
    assert!(checked > 0, "no fixture files found");
}

/// What the generator says each case must show, checked on the report.
#[test]
fn fixture_cases_have_their_expected_shape() {
    for set in all_fixture_sets() {
        let Ok(text) = std::fs::read_to_string(set.join("manifest.json")) else {
            continue;
        };
        let manifest: Value = serde_json::from_str(&text).unwrap();
        let version = manifest["wandb_version"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        for (case, info) in manifest["cases"].as_object().unwrap() {
            let dir = Path::new(info["wandb_dir"].as_str().unwrap());
            let dir = if dir.exists() {
                dir.to_path_buf()
            } else {
                set.join(case).join("wandb")
            };
            let (code, report) = inspect_json(&[&dir], &[]);
            let runs = report["runs"].as_array().unwrap();
            let ctx = format!("wandb {version} case {case}");
            assert_eq!(runs.len(), 1, "{ctx}: one run expected: {report:#}");
            let run = &runs[0];
            assert_eq!(code, 0, "{ctx}: exit code");
            if let Some(id) = info["run_id"].as_str() {
                assert_eq!(run["run_id"], id, "{ctx}");
            }
            match case.as_str() {
                "sigkill" => {
                    assert_eq!(run["class"], "truncated", "{ctx}");
                    assert_eq!(run["exit_code"], Value::Null, "{ctx}");
                }
                "exit_code_3" => assert_eq!(run["exit_code"], 3, "{ctx}"),
                "resumed" => {
                    assert_eq!(run["fragments"].as_array().unwrap().len(), 2, "{ctx}");
                    let starts: Vec<&str> = run["fragments"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f["start_time"].as_str().unwrap())
                        .collect();
                    assert!(
                        starts[0] < starts[1],
                        "{ctx}: fragments in start-time order: {starts:?}"
                    );
                }
                // wandb before 0.21 does not record Slurm variables at all;
                // the generator says what each version should show.
                "slurm_env" => {
                    assert_eq!(run["slurm_job_id"], info["expect"]["slurm_job_id"], "{ctx}");
                }
                "artifact" => {
                    let artifacts = run["artifacts"].as_array().unwrap();
                    assert!(!artifacts.is_empty(), "{ctx}");
                    // Nothing uploaded yet: queued, and no problem.
                    assert_eq!(artifacts[0]["state"], "queued", "{ctx}");
                    assert!(!run["problems"].to_string().contains("artifact"), "{ctx}");
                }
                "big_record" => {
                    let big = run["fragments"][0]["size"].as_u64().unwrap();
                    assert!(big > 32 * 1024, "{ctx}");
                }
                _ => {}
            }
            if case != "sigkill" {
                assert_eq!(run["class"], "finished", "{ctx}: {run:#}");
            }
        }
    }
}
