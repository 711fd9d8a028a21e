//! Trigger files: a job asks for an upload now by dropping a small file
//! that names a run directory, instead of waiting for the next poll. Two
//! kinds are read:
//!
//! - syncd's spool (`<state dir>/notify/*.trigger`), written by `syncd
//!   notify` on a compute node (no network needed: it is a file on the shared
//!   filesystem);
//! - wandb-osh's command directory (`~/.wandb_osh_command_dir/*.command`, the
//!   absolute run directory inside), so jobs that use wandb-osh's hook work
//!   unchanged.
//!
//! A trigger is deleted once read; what it named is then synced like any
//! discovered run.

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

pub(crate) const SPOOL_DIR: &str = "notify";
const TRIGGER_EXT: &str = "trigger";
const OSH_EXT: &str = "command";

/// wandb-osh's default command directory.
pub(crate) fn osh_default_dir(home: &Path) -> PathBuf {
    home.join(".wandb_osh_command_dir")
}

/// Writes a trigger naming `target` into `spool`. The file appears whole
/// (written under a temporary name, then renamed) so the daemon never reads
/// half of it.
pub(crate) fn write_trigger(spool: &Path, target: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(spool)?;
    let unique = format!(
        "{}-{}-{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        std::process::id(),
        fastrand::u32(..)
    );
    let tmp = spool.join(format!(".{unique}.tmp"));
    let path = spool.join(format!("{unique}.{TRIGGER_EXT}"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(target.as_os_str().as_encoded_bytes())?;
    drop(file);
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// A request found in a trigger file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trigger {
    /// What the trigger names: a run directory, a wandb directory or a file.
    pub target: PathBuf,
    /// The trigger file it came from (already deleted).
    pub source: PathBuf,
}

/// The directories triggers are read from.
#[derive(Debug, Clone)]
pub(crate) struct TriggerDirs {
    pub spool: PathBuf,
    pub osh: Option<PathBuf>,
}

impl TriggerDirs {
    /// Reads and deletes every complete trigger. Unreadable or empty ones are
    /// deleted too and reported in `problems`.
    pub(crate) fn take(&self, problems: &mut Vec<String>) -> Vec<Trigger> {
        let mut found = Vec::new();
        take_from(&self.spool, TRIGGER_EXT, &mut found, problems);
        if let Some(osh) = &self.osh {
            take_from(osh, OSH_EXT, &mut found, problems);
        }
        found
    }
}

/// A trigger holds one path: anything longer is not a trigger.
const MAX_TRIGGER_BYTES: u64 = 64 * 1024;

/// A trigger file's bytes; a named pipe or device is refused, not waited on.
fn read_trigger(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    crate::fs::open_regular(path)?
        .take(MAX_TRIGGER_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn take_from(dir: &Path, ext: &str, found: &mut Vec<Trigger>, problems: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != ext) {
            continue;
        }
        let content = read_trigger(&path);
        // Deleted whatever it says: a bad trigger must not be retried forever.
        let _ = fs::remove_file(&path);
        match content {
            Ok(bytes) => {
                let text = bytes.trim_ascii();
                if text.is_empty() {
                    problems.push(format!(
                        "{}: empty trigger file ignored",
                        crate::paths::display(&path)
                    ));
                    continue;
                }
                found.push(Trigger {
                    // The path's bytes: a directory name need not be UTF-8.
                    target: PathBuf::from(std::ffi::OsString::from_vec(text.to_vec())),
                    source: path,
                });
            }
            Err(e) => problems.push(format!(
                "{}: cannot read trigger: {e}",
                crate::paths::display(&path)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_triggers_and_osh_commands_are_taken_once() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("notify");
        let osh = tmp.path().join("osh");
        fs::create_dir_all(&osh).unwrap();
        write_trigger(&spool, Path::new("/scratch/wandb/offline-run-x")).unwrap();
        fs::write(osh.join("abc123.command"), "/scratch/other/offline-run-y").unwrap();
        fs::write(osh.join("ignored.txt"), "x").unwrap();
        fs::write(spool.join("empty.trigger"), "  ").unwrap();
        let dirs = TriggerDirs {
            spool: spool.clone(),
            osh: Some(osh.clone()),
        };
        let mut problems = Vec::new();
        let mut targets: Vec<PathBuf> = dirs
            .take(&mut problems)
            .into_iter()
            .map(|t| t.target)
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            [
                PathBuf::from("/scratch/other/offline-run-y"),
                PathBuf::from("/scratch/wandb/offline-run-x")
            ]
        );
        assert_eq!(problems.len(), 1);
        assert!(dirs.take(&mut problems).is_empty(), "taken once");
        assert!(osh.join("ignored.txt").exists());
    }

    #[test]
    fn a_named_pipe_is_refused_and_a_path_that_is_not_utf8_kept() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        fs::create_dir_all(&spool).unwrap();
        let pipe = spool.join("pipe.trigger");
        let made = std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap();
        assert!(made.success());
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/scratch/wandb/run-\xe9"));
        write_trigger(&spool, odd).unwrap();
        let dirs = TriggerDirs { spool, osh: None };
        let mut problems = Vec::new();
        let found = dirs.take(&mut problems);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].target, odd);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("named pipe"), "{problems:?}");
        assert!(!pipe.exists(), "a bad trigger is deleted like any other");
    }
}
