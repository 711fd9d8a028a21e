//! inotify as an accelerator, never as the source of truth. Writes made by
//! compute nodes to NFS, Lustre, GPFS or other network filesystems do not
//! raise inotify events on the login node, so each root's filesystem is
//! identified (`statfs`) and only local ones are watched. Polling still runs
//! everywhere; on local roots the watcher just makes a change visible before
//! the next poll.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use notify::{RecursiveMode, Watcher};

/// What kind of filesystem a path is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    /// Changes made on this machine are all it sees: inotify is reliable.
    Local,
    /// Shared with other machines (by name): inotify misses remote writes.
    Network(&'static str),
    Unknown,
}

/// `statfs` magic numbers of filesystems other machines write to.
const NETWORK_FILESYSTEMS: &[(i64, &str)] = &[
    (0x6969, "nfs"),
    (0x0bd0_0bd0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x0000_517b, "smb"),
    (0x00c3_6400, "ceph"),
    (0x1983_0326, "beegfs"),
    (0x6573_5546, "fuse"),
    (0xaad7_aaea, "panfs"),
    (0x0102_1997, "9p"),
];

pub fn fs_kind(path: &Path) -> FsKind {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return FsKind::Unknown;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return FsKind::Unknown;
    }
    let magic = stat.f_type as i64 & 0xffff_ffff;
    match NETWORK_FILESYSTEMS.iter().find(|(m, _)| *m == magic) {
        Some((_, name)) => FsKind::Network(name),
        None => FsKind::Local,
    }
}

/// Watches local directories; changed paths come out of [`Accelerator::changed`].
pub struct Accelerator {
    watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::Receiver<PathBuf>,
    watched: std::collections::HashSet<PathBuf>,
}

impl Accelerator {
    /// A watcher, or an inert one if the system refuses (inotify limits):
    /// polling covers everything anyway.
    pub fn new() -> Accelerator {
        let (tx, events) = mpsc::channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Opening or reading a file or directory raises access events:
            // the daemon's own reads (listing a run directory, reading a
            // `.wandb` file) would wake it again for nothing, and listing
            // raised one per run directory listed, which listed it again.
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        })
        .ok();
        Accelerator {
            watcher,
            events,
            watched: Default::default(),
        }
    }

    /// Watches `dir` (not recursively) if it is on a local filesystem.
    /// Returns whether it is watched.
    pub fn watch(&mut self, dir: &Path) -> bool {
        if self.watched.contains(dir) {
            return true;
        }
        if fs_kind(dir) != FsKind::Local {
            return false;
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return false;
        };
        if watcher.watch(dir, RecursiveMode::NonRecursive).is_ok() {
            self.watched.insert(dir.to_path_buf());
            return true;
        }
        false
    }

    /// Paths that changed since the last call (deduplicated).
    pub fn changed(&mut self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.events.try_iter().collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

impl Default for Accelerator {
    fn default() -> Self {
        Accelerator::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_directories_are_watched_and_report_writes() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(fs_kind(tmp.path()), FsKind::Local);
        assert_eq!(fs_kind(&tmp.path().join("missing")), FsKind::Unknown);
        let mut accelerator = Accelerator::new();
        assert!(accelerator.watch(tmp.path()));
        let file = tmp.path().join("run-x.wandb");
        std::fs::write(&file, b"x").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline && !seen.contains(&file) {
            seen.extend(accelerator.changed());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(seen.contains(&file), "{seen:?}");
    }

    #[test]
    fn reading_and_listing_raise_nothing() {
        // Listing a run directory used to raise an event for it, which made
        // the daemon list it again, forever.
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("offline-run-20261123_000000-x");
        std::fs::create_dir(&run_dir).unwrap();
        let file = run_dir.join("run-x.wandb");
        std::fs::write(&file, b"x").unwrap();
        let mut accelerator = Accelerator::new();
        assert!(accelerator.watch(tmp.path()) && accelerator.watch(&run_dir));
        for _ in 0..3 {
            let _ = std::fs::read_dir(&run_dir).unwrap().count();
            let _ = std::fs::read(&file).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(accelerator.changed(), Vec::<PathBuf>::new());
        // A write still is seen.
        std::fs::write(&file, b"xy").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(accelerator.changed().contains(&file));
    }
}
