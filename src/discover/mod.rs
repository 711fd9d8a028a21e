//! Where runs are: turns the paths a user gives into the `.wandb` files they
//! hold. A path may be a `.wandb` file, a run directory (holds `*.wandb`), a
//! wandb directory (holds run directories), or a project directory that has a
//! `wandb/` or `.wandb/` inside. Links (`latest-run`, or a user's own) never
//! yield a file twice: files are deduplicated by device and inode.
//!
//! Only bounded directory reads are made (a path and at most its children),
//! never a recursive walk.
//!
//! - [`scan`]: the daemon's polling of its roots, the source of truth;
//! - [`watch`]: inotify on local filesystems, to notice sooner (never
//!   trusted alone; network filesystems are polled only);
//! - [`trigger`]: `syncd notify` spool files and wandb-osh command files.
//!
//! Discovery says which files exist and changed; it never opens a run file
//! for its records (that is [`crate::source`]) and never decides what to
//! upload.

pub(crate) mod scan;

// What the daemon bench scans with.
pub use scan::{RootSpec, Scanner};
pub(crate) mod trigger;
pub(crate) mod watch;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    #[error(
        "{0}: holds no W&B run (expected a .wandb file, an offline-run-* directory, or a wandb/ directory)"
    )]
    NoRuns(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A run directory (or a directory that may hold runs) that cannot be
    /// read: its runs cannot be synced, which is said, not skipped.
    #[error("{}: cannot be read ({source}); no run in it is synced", crate::paths::display(.path))]
    Unreadable { path: PathBuf, source: io::Error },
}

impl DiscoverError {
    pub fn path(&self) -> &Path {
        match self {
            DiscoverError::NotFound(p) | DiscoverError::NoRuns(p) => p,
            DiscoverError::Io { path, .. } | DiscoverError::Unreadable { path, .. } => path,
        }
    }
}

/// A `.wandb` transaction log found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WandbFile {
    /// The path as found (inside the directory the user named).
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// Finds the `.wandb` files under each path. Returns what was found, plus
/// one error for each path that does not exist or holds no run.
pub fn wandb_files(paths: &[PathBuf]) -> (Vec<WandbFile>, Vec<DiscoverError>) {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let unreadable_before = errors.len();
        match files_under(path, &mut errors) {
            // Nothing found, but something could not be read: that is the
            // error, not an empty path.
            Ok(files) if files.is_empty() && errors.len() > unreadable_before => {}
            Ok(files) if files.is_empty() => errors.push(DiscoverError::NoRuns(path.clone())),
            Ok(files) => {
                for file in files {
                    if seen.insert((file.dev, file.ino)) {
                        found.push(file);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (found, errors)
}

/// The `.wandb` files under `path`; a directory below it that cannot be
/// read is added to `unreadable` and the others are still looked through.
fn files_under(
    path: &Path,
    unreadable: &mut Vec<DiscoverError>,
) -> Result<Vec<WandbFile>, DiscoverError> {
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            DiscoverError::NotFound(path.to_path_buf())
        } else {
            DiscoverError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    if meta.is_file() {
        return Ok(if is_wandb_log(path) {
            vec![wandb_file(path, &meta)]
        } else {
            vec![]
        });
    }
    let direct = logs_in(path).map_err(io_err)?;
    if !direct.is_empty() {
        return Ok(direct);
    }
    for inner in ["wandb", ".wandb"] {
        let candidate = path.join(inner);
        if candidate.is_dir() {
            let files = logs_in_children(&candidate, unreadable).map_err(io_err)?;
            if !files.is_empty() {
                return Ok(files);
            }
        }
    }
    logs_in_children(path, unreadable).map_err(io_err)
}

/// `*.wandb` files directly in `dir`, sorted by name.
fn logs_in(dir: &Path) -> io::Result<Vec<WandbFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if !is_wandb_log(&path) {
            continue;
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(wandb_file(&path, &meta)),
            _ => {} // a dangling link or a directory named *.wandb
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// `*/*.wandb` under a wandb directory. `latest-run` is skipped: it links to a
/// run directory that is listed under its own name as well.
fn logs_in_children(dir: &Path, unreadable: &mut Vec<DiscoverError>) -> io::Result<Vec<WandbFile>> {
    let mut children: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == "latest-run" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            children.push(path);
        }
    }
    children.sort();
    let mut files = Vec::new();
    for child in children {
        match logs_in(&child) {
            Ok(found) => files.extend(found),
            // An unreadable sibling must not hide the readable runs, nor
            // be passed over in silence.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                unreadable.push(DiscoverError::Unreadable {
                    path: child,
                    source: e,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

fn is_wandb_log(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wandb")
}

fn wandb_file(path: &Path, meta: &fs::Metadata) -> WandbFile {
    WandbFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b":W&B\xe1\xbe\x00").unwrap();
    }

    #[test]
    fn every_kind_of_path_finds_the_same_file_once() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path();
        let run = project.join("wandb/offline-run-20260101_000000-abc");
        let log = run.join("run-abc.wandb");
        touch(&log);
        fs::write(run.join("run-abc.wandb.synced"), b"").unwrap();
        std::os::unix::fs::symlink(
            "offline-run-20260101_000000-abc",
            project.join("wandb/latest-run"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&run, project.join("alias")).unwrap();

        for path in [
            log.clone(),
            run.clone(),
            project.join("wandb"),
            project.to_path_buf(),
            project.join("wandb/latest-run"),
        ] {
            let (files, errors) = wandb_files(std::slice::from_ref(&path));
            assert!(errors.is_empty(), "{path:?}: {errors:?}");
            assert_eq!(files.len(), 1, "{path:?}");
        }
        let all = [
            project.join("wandb"),
            project.join("wandb/latest-run"),
            project.join("alias"),
            log,
        ];
        let (files, errors) = wandb_files(&all);
        assert!(errors.is_empty());
        assert_eq!(
            files.len(),
            1,
            "links to one run must not duplicate it: {files:?}"
        );
    }

    #[test]
    fn missing_and_empty_paths_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let (files, errors) = wandb_files(&[missing.clone(), tmp.path().to_path_buf()]);
        assert!(files.is_empty());
        assert!(matches!(&errors[0], DiscoverError::NotFound(p) if p == &missing));
        assert!(matches!(&errors[1], DiscoverError::NoRuns(_)));
        assert!(errors[1].to_string().contains("holds no W&B run"));
    }
}
