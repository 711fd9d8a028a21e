//! The project directory around a run: which directories are searched,
//! from the run directory upwards, for the run's `.env` files
//! ([`crate::destination`]) and its job manifest ([`crate::naming`]).
//! [`search_dirs`] says which directories that walk visits and
//! [`search_root`] where it stops.

use std::path::{Path, PathBuf};

/// How many directories above the run directory are searched when the run
/// is not under the root: its `wandb/` directory and the `WANDB_DIR` that
/// holds it.
const LEVELS_OUTSIDE_ROOT: usize = 2;

/// The directories searched for a run's `.env` and job manifest, nearest
/// first: `run_dir`, then each parent up to and including `root`. When
/// `run_dir` is not under `root` (compared as given, then with both paths
/// canonicalized, so a root reached through a symlink still matches), only
/// `run_dir`, its `wandb/` directory and that directory's parent are
/// searched: never the whole way up to `/`. Relative paths are taken from
/// the working directory first (`wandb/run-1` has the project directory as
/// an ancestor only once made absolute).
pub(crate) fn search_dirs(run_dir: &Path, root: &Path) -> Vec<PathBuf> {
    let (run_dir, root) = (&absolute(run_dir), &absolute(root));
    if let Some(dirs) = dirs_under(run_dir, root) {
        return dirs;
    }
    if let (Ok(run), Ok(root)) = (run_dir.canonicalize(), root.canonicalize())
        && let Some(dirs) = dirs_under(&run, &root)
    {
        return dirs;
    }
    run_dir
        .ancestors()
        .take(1 + LEVELS_OUTSIDE_ROOT)
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect()
}

/// The root that bounds the search for the `.env` and job manifest of the
/// run in `run_dir`, found under `found_under` (a watched root, a `syncd
/// sync` argument): that path when it is above the directory holding the
/// run's `wandb/` directory (the job's `WANDB_DIR`, where the templates put
/// the manifest and a project keeps its `.env`), else that directory
/// itself, so the search always reaches it. Both are made absolute first
/// (see [`search_dirs`]).
pub(crate) fn search_root(run_dir: &Path, found_under: Option<&Path>) -> PathBuf {
    let run_dir = &absolute(run_dir);
    let found_under = found_under.map(absolute);
    let found_under = found_under.as_deref();
    let wandb_dir_parent = run_dir
        .ancestors()
        .nth(LEVELS_OUTSIDE_ROOT)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(run_dir);
    match found_under {
        Some(root) if wandb_dir_parent.starts_with(root) => root.to_path_buf(),
        _ => wandb_dir_parent.to_path_buf(),
    }
}

/// `path` from the working directory, spelled as given (symlinks kept:
/// the user's spelling is what they recognise in messages).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn dirs_under(run_dir: &Path, root: &Path) -> Option<Vec<PathBuf>> {
    if !run_dir.starts_with(root) {
        return None;
    }
    let mut dirs = Vec::new();
    for dir in run_dir.ancestors() {
        dirs.push(dir.to_path_buf());
        if dir == root {
            break;
        }
    }
    Some(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_stops_at_the_root() {
        let dirs = search_dirs(
            Path::new("/scratch/u/proj/wandb/offline-run-1"),
            Path::new("/scratch/u"),
        );
        assert_eq!(
            dirs,
            [
                "/scratch/u/proj/wandb/offline-run-1",
                "/scratch/u/proj/wandb",
                "/scratch/u/proj",
                "/scratch/u"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn outside_the_root_only_the_run_and_two_levels() {
        let dirs = search_dirs(
            Path::new("/elsewhere/proj/wandb/offline-run-1"),
            Path::new("/scratch/u"),
        );
        assert_eq!(
            dirs,
            [
                "/elsewhere/proj/wandb/offline-run-1",
                "/elsewhere/proj/wandb",
                "/elsewhere/proj"
            ]
            .map(PathBuf::from)
        );
        // A root that is a sibling with a common prefix is not an ancestor.
        let dirs = search_dirs(Path::new("/scratch/u2/run"), Path::new("/scratch/u"));
        assert_eq!(
            dirs,
            ["/scratch/u2/run", "/scratch/u2", "/scratch"].map(PathBuf::from)
        );
    }

    #[test]
    fn a_root_reached_through_a_symlink_still_bounds_the_search() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        let run = real.join("proj/wandb/offline-run-1");
        std::fs::create_dir_all(&run).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let dirs = search_dirs(&run, &link);
        assert_eq!(dirs.len(), 4, "{dirs:?}");
        assert_eq!(dirs.last().unwrap(), &real.canonicalize().unwrap());
    }

    #[test]
    fn the_search_root_reaches_at_least_the_jobs_wandb_dir() {
        let run = Path::new("/s/u/proj/wandb/offline-run-1");
        assert_eq!(search_root(run, Some(Path::new("/s/u"))), Path::new("/s/u"));
        // A root below the job's directory (a `wandb/` dir, the run itself)
        // or none: the job's directory.
        for under in [
            Some("/s/u/proj/wandb"),
            Some("/s/u/proj/wandb/offline-run-1"),
            None,
        ] {
            assert_eq!(
                search_root(run, under.map(Path::new)),
                Path::new("/s/u/proj")
            );
        }
        let cwd = std::env::current_dir().unwrap();
        // A relative run directory is one below the working directory.
        assert_eq!(
            search_root(Path::new("wandb/run"), None),
            cwd.join("wandb/run").ancestors().nth(2).unwrap()
        );
    }

    #[test]
    fn relative_paths_keep_the_project_directory() {
        // `syncd sync wandb` in the project directory: the project
        // directory (the working directory) is searched for the `.env`.
        let cwd = std::env::current_dir().unwrap();
        let run = Path::new("wandb/offline-run-1");
        let root = search_root(run, Some(Path::new("wandb")));
        assert_eq!(root, cwd);
        assert_eq!(search_dirs(run, &root).last().unwrap(), &cwd);
        assert_eq!(search_dirs(run, &root).len(), 3);
    }
}
