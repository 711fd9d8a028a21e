//! Files syncd reads and writes, whatever they hold: safe opens (here),
//! durable writes ([`durable`]) and content digests ([`sha256_hex`]).
//!
//! Safe opens (regular files only, beneath a directory) of the files users
//! control: `.env` files, run files, `files/*`, job manifests, trigger
//! files, netrc.
//!
//! Opening a named pipe for reading blocks until something writes to it,
//! and opening a device can have effects of its own; a file syncd reads on a
//! user's behalf is therefore opened without blocking, checked on the open
//! descriptor (so what is read is what was checked), and refused unless it
//! is a regular file. A file that must lie within a directory (a run's
//! uploads) is checked by where the open descriptor really leads, which no
//! symlink, in any component, can disguise.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

pub(crate) mod durable;

/// Lowercase hex digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes` in lowercase hex: checksums of uploaded files,
/// of the service unit, of lease versions.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Why a file was not opened although it exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// A named pipe, socket, device or directory.
    #[error("is not a regular file (a {0})")]
    NotRegular(&'static str),
    /// The file lies outside the directory it must be within.
    #[error("leads outside the run directory (to {})", crate::paths::display(.0))]
    Outside(PathBuf),
}

/// The refusal an error of this module carries, if it is one.
pub(crate) fn refusal(e: &io::Error) -> Option<&Refused> {
    e.get_ref()?.downcast_ref::<Refused>()
}

/// Opens `path` for reading, following symlinks, if it is a regular file;
/// never blocks on a named pipe or device.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    open(path, OFlags::empty())
}

/// Opens `path` if it is a regular file that really lies within `root`
/// (after every symlink, of any component, is followed): where the opened
/// descriptor leads is checked, so a directory symlink such as
/// `files/sub -> /etc` or `files -> /etc` cannot lead out, and nothing can
/// be swapped between the check and the read.
pub(crate) fn open_beneath(root: &Path, path: &Path) -> io::Result<File> {
    let file = open_regular(path)?;
    let root = root.canonicalize()?;
    // The kernel's name for what was opened; with /proc missing nothing can
    // be shown to be inside, and nothing is read.
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    if !opened.starts_with(&root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            Refused::Outside(opened),
        ));
    }
    Ok(file)
}

fn open(path: &Path, extra: OFlags) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            Refused::NotRegular(kind_name(kind)),
        ));
    }
    // Regular files never block; reads after this behave as usual.
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
    Ok(file)
}

/// What a file that is not a regular file is, in words.
pub(crate) fn kind_name(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "named pipe"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "device"
    } else if kind.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    fn fifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn a_named_pipe_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let pipe = tmp.path().join(".env");
        fifo(&pipe);
        let start = Instant::now();
        let err = open_regular(&pipe).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(refusal(&err), Some(&Refused::NotRegular("named pipe")));
        assert!(err.to_string().contains("named pipe"), "{err}");
        let err = open_regular(tmp.path()).unwrap_err();
        assert_eq!(refusal(&err), Some(&Refused::NotRegular("directory")));
    }

    #[test]
    fn a_regular_file_reads_normally_and_nofollow_refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"hello").unwrap();
        let mut text = String::new();
        let mut opened = open_regular(&file).unwrap();
        opened.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        let flags = rustix::fs::fcntl_getfl(&opened).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_regular(&link).is_ok());
    }

    #[test]
    fn beneath_follows_links_inside_and_refuses_every_way_out() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let outside = tmp.path().join("secret");
        std::fs::create_dir_all(run.join("files/real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(run.join("files/real/a.txt"), b"ok").unwrap();
        std::fs::write(outside.join("a.txt"), b"secret").unwrap();
        // Inside, through a relative and an absolute directory symlink.
        std::os::unix::fs::symlink("real", run.join("files/rel")).unwrap();
        std::os::unix::fs::symlink(run.join("files/real"), run.join("files/abs")).unwrap();
        for name in ["real", "rel", "abs"] {
            let path = run.join("files").join(name).join("a.txt");
            assert!(open_beneath(&run, &path).is_ok(), "{name}");
        }
        // Out, through a directory symlink in the middle or a file symlink.
        std::os::unix::fs::symlink(&outside, run.join("files/sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("a.txt"), run.join("files/b.txt")).unwrap();
        for path in [run.join("files/sub/a.txt"), run.join("files/b.txt")] {
            let err = open_beneath(&run, &path).unwrap_err();
            assert!(
                matches!(refusal(&err), Some(Refused::Outside(to)) if to.ends_with("secret/a.txt")),
                "{err}"
            );
        }
    }
}
