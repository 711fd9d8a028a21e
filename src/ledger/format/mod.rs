//! The ledger's bytes on disk, owned here and nowhere else: each format
//! version has its own serde types (`v1.rs`), converted to and from the
//! in-memory [`RunLedger`] at this edge. The types the rest of syncd works
//! with (run state, console, server run, naming) carry no serde code for
//! the ledger, so changing them cannot change what a ledger says; the
//! conversions stop compiling instead.
//!
//! An entry is one JSON object whose `format` field names its version.
//! [`encode`] writes the newest version; [`decode`] reads the newest
//! directly and an older one through its migration. Format 2 (`v2.rs`)
//! added the run's artifact uploads to format 1 (`v1.rs`); a format-1
//! entry migrates by being read with format 2's types, which spell
//! everything format 1 has the same way. See the ledger's module doc for
//! the rule every change follows.

mod v1;
mod v2;

use super::RunLedger;

/// The version [`encode`] writes.
pub(super) const VERSION: u32 = v2::VERSION;

/// Why an entry's bytes give no [`RunLedger`].
#[derive(Debug)]
pub(super) enum Refused {
    /// Not an entry of any version this syncd knows: the reason.
    Damaged(String),
    /// An entry of a later version (a newer syncd wrote it).
    Newer(u32),
}

/// An entry as the newest version's JSON, indented (durable copies, which
/// people read) or on one line (live checkpoints, rewritten often).
pub(super) fn encode(entry: &RunLedger, indented: bool) -> Vec<u8> {
    let entry = v2::Entry::from(entry);
    if indented {
        serde_json::to_vec_pretty(&entry).expect("a ledger entry serializes")
    } else {
        serde_json::to_vec(&entry).expect("a ledger entry serializes")
    }
}

/// The entry these bytes hold, in whichever version they were written.
pub(super) fn decode(bytes: &[u8]) -> Result<RunLedger, Refused> {
    // The newest version first: parsing twice would cost every start-up
    // over a large ledger.
    match serde_json::from_slice::<v2::Entry>(bytes) {
        // Format 1 is format 2 without artifacts (see `v2.rs`).
        Ok(entry) if entry.format == v2::VERSION || entry.format == v1::VERSION => {
            RunLedger::try_from(entry).map_err(Refused::Damaged)
        }
        Ok(entry) => Err(other_version(entry.format)),
        Err(e) => match version_of(bytes) {
            // A newer entry need not parse as this one.
            Some(version) if version > VERSION => Err(Refused::Newer(version)),
            _ => Err(Refused::Damaged(e.to_string())),
        },
    }
}

/// What an entry of a version other than the newest is (when there are
/// older versions, this is where they migrate).
fn other_version(version: u32) -> Refused {
    if version > VERSION {
        Refused::Newer(version)
    } else {
        Refused::Damaged(format!("format {version} is not one syncd ever wrote"))
    }
}

/// The `format` field of an entry that did not parse as the newest.
fn version_of(bytes: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        format: u32,
    }
    serde_json::from_slice::<Versioned>(bytes)
        .ok()
        .map(|v| v.format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    fn goldens() -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// Every golden entry (`tests/fixtures/ledger/`, written by the syncd
    /// of its format's time) loads. Saving what was loaded gives the bytes
    /// of a newest-version golden back; an older golden is saved in the
    /// newest version, which loads as the same entry.
    #[test]
    fn every_golden_loads_and_saves_byte_for_byte() {
        let goldens = goldens();
        assert!(goldens.len() >= 8, "{goldens:?}");
        for path in goldens {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let golden = std::fs::read(&path).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let ledger = Ledger::open(tmp.path()).unwrap();
            let live = name.ends_with(".live");
            let stored = ledger
                .dir()
                .join(if live { "run.live" } else { "run.json" });
            std::fs::write(&stored, &golden).unwrap();
            let entry = ledger
                .load("run")
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap();
            if live {
                ledger.save_unsynced(&entry).unwrap();
            } else {
                ledger.save(&entry).unwrap();
            }
            // Saved under the entry's own key (not where the golden was put).
            let written = ledger.dir().join(format!(
                "{}.{}",
                entry.key,
                if live { "live" } else { "json" }
            ));
            let saved = std::fs::read(&written).unwrap();
            if name.starts_with(&format!("v{VERSION}-")) {
                assert!(
                    saved == golden,
                    "{name} changed on load and save:\n{}",
                    String::from_utf8_lossy(&saved)
                );
            } else {
                let migrated = ledger.load(&entry.key).unwrap().unwrap();
                assert_eq!(
                    encode(&migrated, true),
                    encode(&entry, true),
                    "{name}: the migrated entry loads as what was loaded"
                );
                let text = String::from_utf8_lossy(&saved).to_string();
                assert!(
                    text.contains(&format!("\"format\":{VERSION}"))
                        || text.contains(&format!("\"format\": {VERSION}")),
                    "{name}: saved as format {VERSION}: {text}"
                );
            }
        }
    }

    /// What the goldens hold, read through the in-memory types (so a
    /// conversion that loses or swaps a field fails here even when the
    /// bytes round-trip).
    #[test]
    fn goldens_load_as_what_they_say() {
        use crate::ledger::Phase;
        use crate::source::wandb::views::console::Stream;
        let load = |name: &str| {
            let path = goldens()
                .into_iter()
                .find(|p| p.file_name().unwrap() == name)
                .unwrap();
            let bytes = std::fs::read(path).unwrap();
            let body = match bytes.strip_prefix(b"syncd-in-place ") {
                Some(rest) => &rest[rest.iter().position(|&b| b == b'\n').unwrap() + 1..],
                None => &bytes[..],
            };
            decode(body).unwrap_or_else(|e| panic!("{name}: {e:?}"))
        };

        let finished = load("v1-finished.json");
        assert_eq!(finished.phase, Phase::Synced);
        assert_eq!(finished.acked.history_lines, 200);
        assert_eq!(finished.acked.complete, Some(0));
        assert_eq!(
            finished.fragments[0].path,
            std::path::Path::new(
                "/scratch/alice/finished/wandb/offline-run-20261123_112321-fxfinish/run-fxfinish.wandb"
            )
        );
        assert_eq!(finished.fragments[0].exit.map(|e| e.code), Some(0));
        let server = finished.server.as_ref().unwrap();
        assert_eq!(
            (
                server.entity.as_str(),
                server.project.as_str(),
                server.name.as_str()
            ),
            ("default-entity", "syncd-fixtures", "fxfinish")
        );
        let naming = finished.naming.as_ref().unwrap();
        assert_eq!(naming.display_name.as_deref(), Some("finished-demo"));
        let state = &finished.state;
        assert_eq!(state.identity.tags, ["fixture", "finished"]);
        assert_eq!(
            state.identity.git.as_ref().unwrap().commit,
            "137d0b2e63d14108a95d203773347a5b1263f829"
        );
        assert_eq!(state.config["lr"].to_extended_json(), "0.001");
        assert_eq!(state.summary["_step"].to_extended_json(), "199");
        assert_eq!(state.console.line_count(), 7);
        let lines: Vec<_> = state.console.recent().collect();
        assert_eq!(lines[1].text, "progress 100%");
        assert_eq!(lines[1].stream, Stream::Stdout);
        assert_eq!(state.history_rows, 200);
        assert_eq!(state.environments.len(), 1);
        assert!(!state.telemetry.is_empty());
        assert_eq!(state.fragment_start.unwrap().seconds, 1_795_433_001);

        let live = load("v1-live.live");
        assert_eq!(live.phase, Phase::Live);
        assert!(live.acked.history_lines > 0 && live.acked.history_lines < 200);
        assert!(live.fragments[0].exit.is_none());

        let failed = load("v1-failed.json");
        assert_eq!(failed.phase, Phase::Failed);
        assert!(failed.last_error.unwrap().message.contains("500"));

        let odd = load("v1-non-utf8-path.json");
        assert!(odd.fragments[0].path.to_str().is_none());
        assert_eq!(odd.state.summary["nan"].to_extended_json(), "NaN");

        let resumed = load("v1-resumed.json");
        assert_eq!(resumed.fragments.len(), 2);
        assert_eq!(resumed.fragments[1].step_offset, 5);

        use crate::ledger::ArtifactState;
        let committed = load("v2-artifact-committed.json");
        assert_eq!(committed.phase, Phase::Synced);
        let artifact = &committed.artifacts[0];
        assert_eq!(
            (
                artifact.name.as_str(),
                artifact.kind.as_str(),
                artifact.files
            ),
            ("art-dataset", "dataset", 2)
        );
        assert_eq!(artifact.state, ArtifactState::Committed);
        assert_eq!(artifact.server_id.as_deref(), Some("artifact-1"));
        assert!(artifact.acked.is_empty() && artifact.manifest_digest.is_some());
        let uploading = load("v2-artifact-uploading.json");
        let artifact = &uploading.artifacts[0];
        assert_eq!(artifact.state, ArtifactState::Uploading);
        assert_eq!(artifact.acked["a.txt"], "artifact-1");
        assert_eq!((artifact.fragment, artifact.offset), (0, 1336));
        let refused = load("v2-artifact-not-uploadable.json");
        assert!(
            matches!(&refused.artifacts[0].state, ArtifactState::NotUploadable(why) if why.contains("missing")),
            "{:?}",
            refused.artifacts[0].state
        );
        // Format 1 had no artifact uploads.
        assert!(finished.artifacts.is_empty());

        let slurm = load("v1-slurm.json");
        assert_eq!(slurm.state.identity.slurm_job_id(), Some("4242"));
        assert_eq!(
            slurm.naming.unwrap().display_name.as_deref(),
            Some("train-demo_4240_2")
        );
    }

    #[test]
    fn versions_other_than_this_ones_are_refused_by_kind() {
        let entry = RunLedger::new("k".into(), "r".into(), "http://s".into());
        let mut json: serde_json::Value = serde_json::from_slice(&encode(&entry, false)).unwrap();
        json["format"] = (VERSION + 1).into();
        let newer = serde_json::to_vec(&json).unwrap();
        assert!(matches!(decode(&newer), Err(Refused::Newer(v)) if v == VERSION + 1));
        // A newer version need not have this one's fields.
        let newer = format!(r#"{{"format": {}, "runs": []}}"#, VERSION + 1);
        assert!(matches!(decode(newer.as_bytes()), Err(Refused::Newer(_))));
        json["format"] = 0.into();
        let unknown = serde_json::to_vec(&json).unwrap();
        assert!(matches!(decode(&unknown), Err(Refused::Damaged(_))));
        assert!(matches!(
            decode(b"{\"format\": 1}"),
            Err(Refused::Damaged(_))
        ));
        assert!(matches!(decode(b"[]"), Err(Refused::Damaged(_))));
    }

    #[test]
    fn texts_inside_the_json_are_checked() {
        let entry = RunLedger::new("k".into(), "r".into(), "http://s".into());
        let mut json: serde_json::Value = serde_json::from_slice(&encode(&entry, false)).unwrap();
        json["state"]["config"] = "[1]".into();
        let bad = serde_json::to_vec(&json).unwrap();
        assert!(matches!(decode(&bad), Err(Refused::Damaged(r)) if r.contains("config")));
        json["state"]["config"] = "{}".into();
        json["state"]["telemetry"] = "not base64!".into();
        let bad = serde_json::to_vec(&json).unwrap();
        assert!(matches!(decode(&bad), Err(Refused::Damaged(r)) if r.contains("telemetry")));
    }
}
