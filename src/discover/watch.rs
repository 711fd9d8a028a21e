//! inotify as an accelerator, never as the source of truth. Writes made by
//! compute nodes to NFS, Lustre, GPFS or other network filesystems do not
//! raise inotify events on the login node, so each root's filesystem is
//! identified (`statfs`) and only local ones are watched. Polling still runs
//! everywhere; on local roots the watcher makes two moments visible before
//! the next poll:
//!
//! - a new entry in a watched directory (a new run directory in a wandb
//!   directory, the `.wandb` file in a run directory);
//! - the writer closing a `.wandb` file it wrote (`IN_CLOSE_WRITE`): the run
//!   ended, or its process died (the kernel closes its files either way).
//!
//! Appends are deliberately not watched (no `IN_MODIFY`): a live run is
//! uploaded at most once per poll interval anyway, so an event per write
//! would only wake the daemon for nothing. Nor are opens and reads: the
//! daemon's own reads would wake it again. The inotify descriptor is
//! non-blocking and read on the daemon's tick: no thread of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

/// What kind of filesystem a path is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FsKind {
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

pub(crate) fn fs_kind(path: &Path) -> FsKind {
    let Ok(stat) = rustix::fs::statfs(path) else {
        return FsKind::Unknown;
    };
    // `f_type` is i64 here but narrower on other architectures.
    #[allow(clippy::unnecessary_cast)]
    let magic = stat.f_type as i64 & 0xffff_ffff;
    match NETWORK_FILESYSTEMS.iter().find(|(m, _)| *m == magic) {
        Some((_, name)) => FsKind::Network(name),
        None => FsKind::Local,
    }
}

/// Something a watched directory saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Change {
    pub path: PathBuf,
    /// The writer closed the file (it is not growing any more).
    pub writer_closed: bool,
}

/// Watches local directories; what they saw comes out of
/// [`Accelerator::changed`].
pub(crate) struct Accelerator {
    inotify: Option<Inotify>,
    watched: HashMap<PathBuf, WatchDescriptor>,
    /// The path events of a watch are named under. Two paths of one
    /// directory (a symlink) share a watch: the first is used.
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl Accelerator {
    /// A watcher, or an inert one if the system refuses (inotify limits):
    /// polling covers everything anyway.
    pub(crate) fn new() -> Accelerator {
        Accelerator {
            inotify: Inotify::init().ok(),
            watched: HashMap::new(),
            dirs: HashMap::new(),
        }
    }

    /// Watches `dir` (not recursively) if it is on a local filesystem.
    /// Returns whether it is watched.
    pub(crate) fn watch(&mut self, dir: &Path) -> bool {
        if self.watched.contains_key(dir) {
            return true;
        }
        if fs_kind(dir) != FsKind::Local {
            return false;
        }
        let Some(inotify) = self.inotify.as_mut() else {
            return false;
        };
        let mask =
            WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::ONLYDIR;
        match inotify.watches().add(dir, mask) {
            Ok(wd) => {
                self.watched.insert(dir.to_path_buf(), wd.clone());
                self.dirs.entry(wd).or_insert_with(|| dir.to_path_buf());
                true
            }
            Err(_) => false,
        }
    }

    /// Stops watching every directory `keep` says no to (a run that has
    /// settled, say): watches are a per-user kernel resource.
    pub(crate) fn retain(&mut self, keep: impl Fn(&Path) -> bool) {
        let Some(inotify) = self.inotify.as_mut() else {
            return;
        };
        let dropped: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|dir| !keep(dir))
            .cloned()
            .collect();
        for dir in dropped {
            let Some(wd) = self.watched.remove(&dir) else {
                continue;
            };
            match self.watched.iter().find(|(_, w)| **w == wd) {
                // Another path of the same directory still wants it.
                Some((other, _)) => {
                    self.dirs.insert(wd, other.clone());
                }
                None => {
                    self.dirs.remove(&wd);
                    let _ = inotify.watches().remove(wd);
                }
            }
        }
    }

    /// The number of directories watched.
    pub(crate) fn watching(&self) -> usize {
        self.watched.len()
    }

    /// What happened since the last call, one entry per path (a close wins
    /// over a creation of the same file).
    pub(crate) fn changed(&mut self) -> Vec<Change> {
        let mut changes: Vec<Change> = Vec::new();
        let Some(inotify) = self.inotify.as_mut() else {
            return changes;
        };
        let mut buffer = [0u8; 4096];
        // Until the queue is empty (`WouldBlock`) or the descriptor fails;
        // either way polling covers the rest.
        while let Ok(events) = inotify.read_events(&mut buffer) {
            for event in events {
                if event.mask.contains(EventMask::IGNORED) {
                    // The directory is gone (or was unwatched).
                    self.dirs.remove(&event.wd);
                    self.watched.retain(|_, wd| *wd != event.wd);
                    continue;
                }
                let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name) else {
                    continue;
                };
                changes.push(Change {
                    path: dir.join(name),
                    writer_closed: event.mask.contains(EventMask::CLOSE_WRITE),
                });
            }
        }
        // Sorted by path, a close before a creation of the same path; the
        // first of each path is kept.
        changes.sort();
        changes.reverse();
        changes.dedup_by(|later, kept| later.path == kept.path);
        changes
    }
}

impl Default for Accelerator {
    fn default() -> Self {
        Accelerator::new()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;

    /// Changes seen within `wait`, until `done` says enough.
    fn collect(
        accelerator: &mut Accelerator,
        wait: Duration,
        done: impl Fn(&[Change]) -> bool,
    ) -> Vec<Change> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while Instant::now() < deadline && !done(&seen) {
            seen.extend(accelerator.changed());
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    }

    #[test]
    fn new_entries_and_a_writer_closing_are_seen_appends_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(fs_kind(tmp.path()), FsKind::Local);
        assert_eq!(fs_kind(&tmp.path().join("missing")), FsKind::Unknown);
        let mut accelerator = Accelerator::new();
        assert!(accelerator.watch(tmp.path()));
        let path = tmp.path().join("run-x.wandb");
        let mut file = std::fs::File::create(&path).unwrap();
        let created = Change {
            path: path.clone(),
            writer_closed: false,
        };
        let seen = collect(&mut accelerator, Duration::from_secs(5), |s| {
            s.contains(&created)
        });
        assert_eq!(seen, [created]);

        // A growing file raises nothing: the poll picks appends up.
        for _ in 0..5 {
            file.write_all(b"record").unwrap();
            file.flush().unwrap();
        }
        let seen = collect(&mut accelerator, Duration::from_millis(300), |_| false);
        assert_eq!(seen, []);

        drop(file);
        let closed = Change {
            path: path.clone(),
            writer_closed: true,
        };
        let seen = collect(&mut accelerator, Duration::from_secs(5), |s| {
            s.contains(&closed)
        });
        assert_eq!(seen, [closed]);
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
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(accelerator.changed(), []);
    }

    #[test]
    fn unwatched_directories_fall_silent() {
        let tmp = tempfile::tempdir().unwrap();
        let (kept, dropped) = (tmp.path().join("kept"), tmp.path().join("dropped"));
        for dir in [&kept, &dropped] {
            std::fs::create_dir(dir).unwrap();
        }
        let mut accelerator = Accelerator::new();
        assert!(accelerator.watch(&kept) && accelerator.watch(&dropped));
        // A second path of `kept` (a symlink) shares its watch.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&kept, &link).unwrap();
        assert!(accelerator.watch(&link));
        accelerator.retain(|dir| dir != dropped && dir != link);
        assert_eq!(accelerator.watching(), 1);
        std::fs::write(dropped.join("a.wandb"), b"x").unwrap();
        std::fs::write(kept.join("b.wandb"), b"x").unwrap();
        let seen = collect(&mut accelerator, Duration::from_secs(5), |s| {
            s.iter().any(|c| c.path.starts_with(&kept))
        });
        assert!(seen.iter().all(|c| c.path.starts_with(&kept)), "{seen:?}");
        assert!(!seen.is_empty());

        // A watched directory removed is forgotten.
        std::fs::remove_dir_all(&kept).unwrap();
        let _ = collect(&mut accelerator, Duration::from_millis(300), |_| false);
        assert_eq!(accelerator.watching(), 0);
    }
}
