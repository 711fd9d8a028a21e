//! The state directory's lease (`<state dir>/lease.json`): at most one daemon
//! uploads from a state directory at a time, also when the directory is on
//! NFS and the daemons run on different login nodes that share `$HOME`.
//!
//! # The file
//!
//! `lease.json` names the holder (`host`, `pid`, and a random `token` per
//! process, which tells our lease from one left by an earlier process with
//! the same pid) and carries `acquired_at`, `heartbeat_at` and `expires_at`
//! as RFC 3339 UTC timestamps with milliseconds, like the other files of the
//! state directory: readable with `cat`, and precise enough for sub-second
//! TTLs in tests. A lease is valid until `expires_at` by the reader's clock.
//! The holder renews it every TTL/3 ([`Lease::renew_interval`]), so a holder
//! that stops for longer than the TTL (crash, `kill -9`, node down) loses it
//! to the next daemon that asks. Login nodes' clocks are NTP-synchronised; a
//! skew that is a small part of the TTL only moves the moment of a takeover.
//!
//! # Why this is safe on NFS without flock
//!
//! flock/fcntl locks depend on the NFS lock manager, which is often disabled
//! for cluster home directories and forgets locks when the server restarts;
//! O_EXCL is not atomic on older NFS clients. Every change to `lease.json` is
//! instead a compare-and-swap built from two operations that an NFS server
//! (and Lustre, GPFS, local filesystems) performs atomically: `link(2)`,
//! which fails when the new name exists, and `rename(2)`, which replaces its
//! target in one step.
//!
//! - Creating a lease where there is none: the claim is written to a private
//!   temporary file and linked to `lease.json`. Of several creators, exactly
//!   one link succeeds; the others read the winner's lease and are refused.
//! - Changing an existing lease (takeover, renewal, release): a process that
//!   read the version with bytes `B` first links its claim to
//!   `lease.json.lock-<sha256(B)>`. One process gets that name. It re-reads
//!   `lease.json` and only if it still holds `B` renames its claim over it
//!   (or removes it, to release); then it removes the lock. The others find
//!   the lock taken and back off: an acquirer is refused, a holder learns it
//!   lost the lease. A process that locked a version which was replaced in
//!   the meantime sees the mismatch and starts again from the new version.
//!   Contents carry a random token and a millisecond timestamp, so a version,
//!   and with it a lock name, never recurs: a late process cannot mistake an
//!   old lock for a new one. Versions are bytes, not parsed claims, so a
//!   damaged file is replaced under the same protocol.
//! - A process that dies holding a lock leaves a lock file whose claim
//!   expires like a lease. The next process clears it under the same
//!   protocol one level down (a lock on the dead lock's content), so two
//!   processes clearing it cannot each remove a fresh lock the other took.
//! - An NFS client may retransmit a `link` whose reply was lost; the retry
//!   fails with EEXIST although the link was made. The link count of our own
//!   temporary file tells the truth (the check open(2) recommends).
//!
//! Limits: (1) a process frozen for longer than the TTL between checking its
//! lock and renaming (SIGSTOP, a swap storm) can have its lock cleared as dead
//! and still rename afterwards; the check is made right before the rename to
//! keep this window to one system call. Every lease without fencing tokens has
//! this limit, and the holder then learns at its next renewal that it lost the
//! lease; two daemons uploading the same run briefly is wasteful but not
//! harmful, since every upload goes to fixed line offsets. (2) It relies on
//! NFS close-to-open consistency (the default; not the `nocto` mount option),
//! so that a file opened after another node's rename shows the new content.
//! (3) Clock skew between login nodes must stay well below the TTL. (4) A
//! process killed between its rename and removing its lock leaves that lock
//! behind; it names a version that never recurs, so it is inert.
//!
//! All calls block on file I/O (milliseconds, more on a slow NFS server);
//! async callers should use `spawn_blocking`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fs::durable::read_optional;
use crate::fs::sha256_hex;

/// File name inside the state directory.
pub(crate) const FILE: &str = "lease.json";

const FORMAT: u32 = 1;

/// How often one call starts over after another process changed the lease
/// under it. Each restart means someone else made progress, so a handful is
/// plenty; the limit only turns a pathological livelock into an error.
const MAX_ROUNDS: usize = 16;

/// How deep locks on dead locks may nest. Each level needs a process to die
/// within the few milliseconds the level above is held.
const MAX_LOCK_DEPTH: u32 = 4;

/// Temporary files older than this (and older than a few TTLs) were left by
/// a crash and are removed.
const ABANDONED_TEMP_AGE: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// Errors and reports

#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    #[error(
        "another syncd is uploading from this state directory: pid {pid} on {host} holds the \
         lease {} (valid for {} more unless renewed). Stop that daemon (`kill {pid}` on \
         {host}), wait for it to exit, or pass --wait to take over as soon as it stops",
        .path.display(),
        humantime::format_duration(truncate_to_millis(*.expires_in))
    )]
    Held {
        path: PathBuf,
        host: String,
        pid: u32,
        expires_in: Duration,
    },
    #[error(
        "lost the lease {}: {cause}. This daemon must stop uploading from this state \
         directory; restart it, with --wait if another daemon now holds the lease",
        .path.display()
    )]
    Lost { path: PathBuf, cause: LossCause },
    #[error(
        "cannot {action} {}: {source}. The state directory must be writable and on a \
         filesystem with hard links (NFS, Lustre, GPFS and local disks have them); choose \
         another with --state-dir",
        .path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the lease {} kept changing under this process ({MAX_ROUNDS} attempts); if no other \
         syncd uses this state directory, remove {}.lock-* files there and start again",
        .path.display(),
        .path.display()
    )]
    Contended { path: PathBuf },
    #[error("the lease TTL must be longer than zero (the default is 30s)")]
    InvalidTtl,
}

impl LeaseError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LeaseError {
        let path = path.to_path_buf();
        move |source| LeaseError::Io {
            action,
            path,
            source,
        }
    }
}

/// Why a holder no longer holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LossCause {
    /// `lease.json` is gone.
    Removed,
    /// Another process holds it: ours expired (this daemon stalled, or its
    /// node lost the state directory, for longer than the TTL).
    TakenOver { host: String, pid: u32 },
    /// Another process is replacing it right now, because ours expired.
    BeingTakenOver { host: String, pid: u32 },
    /// `lease.json` no longer parses.
    Unreadable { reason: String },
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossCause::Removed => write!(f, "the lease file was removed"),
            LossCause::TakenOver { host, pid } => write!(
                f,
                "pid {pid} on {host} took it over after ours expired (this daemon was stalled \
                 or cut off from the state directory for longer than the TTL)"
            ),
            LossCause::BeingTakenOver { host, pid } => write!(
                f,
                "pid {pid} on {host} is taking it over because ours expired"
            ),
            LossCause::Unreadable { reason } => {
                write!(
                    f,
                    "the lease file was overwritten with something unreadable ({reason})"
                )
            }
        }
    }
}

/// What an acquire replaced: worth a warning in the log, because it means
/// a daemon ended without releasing its lease, or the file was damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Takeover {
    /// The previous holder stopped renewing.
    Expired {
        host: String,
        pid: u32,
        expired_ago: Duration,
    },
    /// The previous holder ran on this host and its process is gone, so the
    /// lease was taken without waiting for it to expire.
    HolderGone { pid: u32 },
    /// The lease file did not parse; it was treated as expired.
    Unreadable { reason: String },
}

impl fmt::Display for Takeover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Takeover::Expired {
                host,
                pid,
                expired_ago,
            } => write!(
                f,
                "took over the lease from pid {pid} on {host}, which expired {} ago (that \
                 daemon crashed, was killed, or lost the state directory)",
                humantime::format_duration(truncate_to_millis(*expired_ago))
            ),
            Takeover::HolderGone { pid } => write!(
                f,
                "took over the lease from pid {pid} on this host, which is no longer running"
            ),
            Takeover::Unreadable { reason } => write!(
                f,
                "the lease file was unreadable ({reason}); treated it as expired and replaced it"
            ),
        }
    }
}

fn truncate_to_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

// ---------------------------------------------------------------------------
// The claim: what `lease.json` and lock files hold

/// The content of `lease.json`, and of a lock file (the claim of whoever is
/// changing the lease, which expires like a lease if that process dies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub format: u32,
    pub host: String,
    pub pid: u32,
    /// Random per process. Not a secret: it only tells processes apart.
    pub token: String,
    #[serde(with = "rfc3339_millis")]
    pub acquired_at: SystemTime,
    #[serde(with = "rfc3339_millis")]
    pub heartbeat_at: SystemTime,
    #[serde(with = "rfc3339_millis")]
    pub expires_at: SystemTime,
}

/// Where a claim stands for a reader at a given moment.
enum Standing {
    Valid {
        remaining: Duration,
    },
    Expired {
        ago: Duration,
    },
    /// Made by a process on this host that no longer exists.
    HolderGone,
}

impl Claim {
    fn new(me: &Identity, acquired_at: SystemTime, now: SystemTime, ttl: Duration) -> Claim {
        // Whole milliseconds, as the file stores them, so the claim a holder
        // keeps equals the one it wrote.
        let now = whole_millis(now);
        Claim {
            format: FORMAT,
            host: me.host.clone(),
            pid: me.pid,
            token: me.token.clone(),
            acquired_at: whole_millis(acquired_at),
            heartbeat_at: now,
            expires_at: now + ttl,
        }
    }

    fn parse(bytes: &[u8]) -> Result<Claim, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a claim serializes");
        bytes.push(b'\n');
        bytes
    }

    fn is_held_by(&self, me: &Identity) -> bool {
        self.host == me.host && self.pid == me.pid && self.token == me.token
    }

    fn standing(&self, now: SystemTime) -> Standing {
        // A holder on this host whose process is gone will never renew; not
        // waiting out its TTL lets a daemon restarted after a crash go on at
        // once. A holder elsewhere can only be judged by its expiry.
        if self.host == this_host() && !process_exists(self.pid) {
            return Standing::HolderGone;
        }
        match self.expires_at.duration_since(now) {
            Ok(remaining) if !remaining.is_zero() => Standing::Valid { remaining },
            Ok(_) => Standing::Expired {
                ago: Duration::ZERO,
            },
            Err(past) => Standing::Expired {
                ago: past.duration(),
            },
        }
    }

    fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }
}

fn whole_millis(time: SystemTime) -> SystemTime {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + truncate_to_millis(since_epoch)
}

/// Whether `pid` names a live process here. Without a readable /proc the
/// answer is "yes": then only expiry ends a lease, which is safe. (In a
/// separate pid namespace with the host's name, a holder outside it would
/// look gone; syncd is not meant to run that way.)
fn process_exists(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

mod rfc3339_millis {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// Who this process is, as far as leases go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    host: String,
    pid: u32,
    token: String,
}

impl Identity {
    /// The same for every lease taken in this process, so a process asking
    /// again for the lease it holds gets it back instead of waiting it out.
    fn this_process() -> Identity {
        Identity {
            host: this_host().to_string(),
            pid: std::process::id(),
            token: process_token().to_string(),
        }
    }
}

fn this_host() -> &'static str {
    crate::process::hostname()
}

fn process_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(random_token)
}

/// 128 random bits: the kernel's random UUID, or fastrand's OS-seeded
/// generator where /proc is unavailable. Uniqueness is all that matters.
fn random_token() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|uuid| uuid.trim().replace('-', ""))
        .ok()
        .filter(|t| t.len() == 32)
        .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)))
}

// ---------------------------------------------------------------------------
// Compare-and-swap on the lease file

/// A claim in a private temporary file, to be linked to a lock name and to
/// `lease.json` or renamed over it; the name is removed on drop.
///
/// The lease does not use `durable::write_atomic`: its temporary name is one
/// per process (concurrent calls would share it), and its unconditional
/// rename would overwrite a takeover made by another node a moment earlier.
struct Pending {
    path: PathBuf,
    claim: Claim,
}

impl Pending {
    fn write(dir: &Path, claim: Claim) -> Result<Pending, LeaseError> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        // Unique per host, process (the token also covers a reused pid) and
        // call, so no other caller ever opens this file.
        let path = dir.join(format!(
            ".{FILE}.{}.{}.{}.{}.tmp",
            file_name_safe(this_host()),
            std::process::id(),
            &process_token()[..8],
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let bytes = claim.to_bytes();
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            file.write_all(&bytes)?;
            // Durable before it gets a name that others read.
            file.sync_all()
        })();
        if let Err(source) = written {
            remove_leftover(&path);
            return Err(LeaseError::io("write", &path)(source));
        }
        Ok(Pending { path, claim })
    }

    /// Whether others still consider a lock holding this claim alive, with
    /// half the TTL to spare for clock skew and the last system calls.
    fn is_fresh(&self, now: SystemTime) -> bool {
        let ttl = self
            .claim
            .expires_at
            .duration_since(self.claim.heartbeat_at)
            .unwrap_or_default();
        now < self.claim.heartbeat_at + ttl / 2
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // After a rename the name no longer exists; that is fine.
        remove_leftover(&self.path);
    }
}

/// Removes a file of ours that is no longer needed (a claim written for a
/// swap, a version lock, an abandoned temporary). One that stays only takes
/// space until a later sweep removes it, so a failure is said at debug level.
fn remove_leftover(path: &Path) {
    if let Err(error) = fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::debug!(path = %path.display(), %error, "could not remove a lease leftover");
    }
}

fn file_name_safe(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect()
}

/// Gives `src` the additional name `dst` unless `dst` exists. Returns
/// whether the link was made.
fn link_exclusive(src: &Path, dst: &Path) -> Result<bool, LeaseError> {
    let links = |path: &Path| {
        fs::metadata(path)
            .map(|m| m.nlink())
            .map_err(LeaseError::io("read", path))
    };
    let before = links(src)?;
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(true),
        // A retransmitted NFS link can report EEXIST for the link it made
        // itself; then our file has gained a name.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(links(src)? > before),
        Err(source) => Err(LeaseError::io("link", dst)(source)),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, LeaseError> {
    read_optional(path).map_err(LeaseError::io("read", path))
}

fn remove_if_exists(path: &Path) -> Result<(), LeaseError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LeaseError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// `<file>.lock-<digest of version>`: the name whose owner alone may change
/// that version of `file`.
fn lock_name(target: &Path, version: &[u8]) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!("{name}.lock-{}", &sha256_hex(version)[..32]))
}

/// Owning the lock file of one version of a file; removed on drop.
struct VersionLock {
    path: PathBuf,
    /// The lock's inode is our pending claim's: if the lock was cleared as
    /// dead while we stalled and someone took a fresh one, it is not ours to
    /// remove.
    inode: (u64, u64),
}

impl Drop for VersionLock {
    fn drop(&mut self) {
        if fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            remove_leftover(&self.path);
        }
    }
}

enum Locked {
    Ours(VersionLock),
    /// Another live process holds the lock; its claim.
    Theirs(Claim),
}

/// Takes the lock on the version `seen` of `target`, linking `pending` to
/// the lock name. A dead owner's lock is cleared first.
fn lock_version(
    target: &Path,
    seen: &[u8],
    pending: &Pending,
    depth: u32,
) -> Result<Locked, LeaseError> {
    let lock = lock_name(target, seen);
    for _ in 0..MAX_ROUNDS {
        if link_exclusive(&pending.path, &lock)? {
            let meta =
                fs::metadata(&pending.path).map_err(LeaseError::io("read", &pending.path))?;
            return Ok(Locked::Ours(VersionLock {
                path: lock,
                inode: (meta.dev(), meta.ino()),
            }));
        }
        let Some(lock_content) = read(&lock)? else {
            continue; // its owner finished just now
        };
        if let Ok(owner) = Claim::parse(&lock_content)
            && let Standing::Valid { .. } = owner.standing(SystemTime::now())
        {
            return Ok(Locked::Theirs(owner));
        }
        // Its owner died in mid-change. Clear the dead lock while holding the
        // lock on the dead lock's content, so that of two processes doing
        // this, the second cannot remove a fresh lock the first just took.
        if depth >= MAX_LOCK_DEPTH {
            return Err(LeaseError::Contended { path: lock });
        }
        match lock_version(&lock, &lock_content, pending, depth + 1)? {
            Locked::Theirs(other) => return Ok(Locked::Theirs(other)),
            Locked::Ours(_lock_on_lock) => {
                if read(&lock)?.as_deref() == Some(&lock_content[..]) {
                    remove_if_exists(&lock)?;
                }
            }
        }
    }
    Err(LeaseError::Contended {
        path: target.to_path_buf(),
    })
}

/// What became of a compare-and-swap.
enum Swapped {
    Done,
    /// Another live process is changing the version we saw.
    Contended(Claim),
    /// The file is no longer the version we saw; read it again.
    Changed,
}

/// Replaces `lease` with `pending`'s claim (or removes it, when `remove`)
/// if it still holds exactly `seen`.
fn swap(lease: &Path, seen: &[u8], pending: &Pending, remove: bool) -> Result<Swapped, LeaseError> {
    let _lock = match lock_version(lease, seen, pending, 0)? {
        Locked::Ours(lock) => lock,
        Locked::Theirs(owner) => return Ok(Swapped::Contended(owner)),
    };
    // Only we may change version `seen` now, but whoever held the lock
    // before us may have changed it already.
    if read(lease)?.as_deref() != Some(seen) {
        return Ok(Swapped::Changed);
    }
    // Past half the TTL others may be about to clear our lock as dead; start
    // over rather than race them.
    if !pending.is_fresh(SystemTime::now()) {
        return Ok(Swapped::Changed);
    }
    if remove {
        remove_if_exists(lease)?;
    } else {
        fs::rename(&pending.path, lease).map_err(LeaseError::io("replace", lease))?;
    }
    Ok(Swapped::Done)
}

/// Removes temporary files that a crash left behind: ours are private and
/// live for milliseconds, so an old one is certainly abandoned.
fn sweep_abandoned_temps(state_dir: &Path, ttl: Duration) {
    let max_age = ABANDONED_TEMP_AGE.max(ttl.saturating_mul(4));
    let Ok(entries) = fs::read_dir(state_dir) else {
        return;
    };
    let prefix = format!(".{FILE}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(&prefix) && name.ends_with(".tmp")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if old {
            remove_leftover(&entry.path());
        }
    }
}

// ---------------------------------------------------------------------------
// The lease

/// The lease on a state directory, held by this process. Renew it every
/// [`Lease::renew_interval`] and stop uploading when renewing fails. Dropping
/// it without [`Lease::release`] leaves it to expire after its TTL.
#[derive(Debug)]
pub(crate) struct Lease {
    path: PathBuf,
    dir: PathBuf,
    ttl: Duration,
    me: Identity,
    claim: Claim,
    takeover: Option<Takeover>,
}

impl Lease {
    /// Takes the lease on `state_dir` (creating the directory if needed):
    /// when there is none, when it has expired, when its holder's process on
    /// this host is gone, or when this process already holds it. Otherwise
    /// [`LeaseError::Held`] says who holds it.
    pub(crate) fn acquire(state_dir: &Path, ttl: Duration) -> Result<Lease, LeaseError> {
        Lease::acquire_as(state_dir, ttl, Identity::this_process())
    }

    fn acquire_as(state_dir: &Path, ttl: Duration, me: Identity) -> Result<Lease, LeaseError> {
        if ttl.is_zero() {
            return Err(LeaseError::InvalidTtl);
        }
        fs::create_dir_all(state_dir).map_err(LeaseError::io("create", state_dir))?;
        sweep_abandoned_temps(state_dir, ttl);
        let path = state_dir.join(FILE);
        for _ in 0..MAX_ROUNDS {
            let seen = read(&path)?;
            let now = SystemTime::now();
            let takeover = match seen.as_deref().map(Claim::parse) {
                None => None,
                Some(Err(reason)) => Some(Takeover::Unreadable { reason }),
                Some(Ok(current)) if current.is_held_by(&me) => None,
                Some(Ok(current)) => match current.standing(now) {
                    Standing::Valid { remaining } => {
                        return Err(held_error(&path, &current, remaining));
                    }
                    Standing::Expired { ago } => Some(Takeover::Expired {
                        host: current.host,
                        pid: current.pid,
                        expired_ago: ago,
                    }),
                    Standing::HolderGone => Some(Takeover::HolderGone { pid: current.pid }),
                },
            };
            let pending = Pending::write(state_dir, Claim::new(&me, now, now, ttl))?;
            let Some(seen) = seen else {
                if link_exclusive(&pending.path, &path)? {
                    return Ok(Lease::holding(state_dir, ttl, me, &pending, None).logged());
                }
                continue; // another daemon created it first: look at theirs
            };
            match swap(&path, &seen, &pending, false)? {
                Swapped::Done => {
                    return Ok(Lease::holding(state_dir, ttl, me, &pending, takeover).logged());
                }
                // Someone else is taking it over at this moment: it is theirs.
                Swapped::Contended(other) => {
                    let remaining = other.remaining(SystemTime::now());
                    return Err(held_error(&path, &other, remaining));
                }
                Swapped::Changed => continue,
            }
        }
        Err(LeaseError::Contended { path })
    }

    fn holding(
        dir: &Path,
        ttl: Duration,
        me: Identity,
        pending: &Pending,
        takeover: Option<Takeover>,
    ) -> Lease {
        Lease {
            path: dir.join(FILE),
            dir: dir.to_path_buf(),
            ttl,
            me,
            claim: pending.claim.clone(),
            takeover,
        }
    }

    /// Says that the lease was taken: a takeover as a warning, since it
    /// means a daemon ended without releasing it or the file was damaged.
    fn logged(self) -> Lease {
        let path = self.path.display();
        match &self.takeover {
            None => {
                tracing::debug!(path = %path, ttl_ms = self.ttl.as_millis() as u64, "took the lease")
            }
            Some(takeover @ Takeover::Expired { host, pid, .. }) => {
                tracing::warn!(path = %path, holder_host = %host, holder_pid = pid, "{takeover}")
            }
            Some(takeover @ Takeover::HolderGone { pid }) => {
                tracing::warn!(path = %path, holder_pid = pid, "{takeover}")
            }
            Some(takeover @ Takeover::Unreadable { .. }) => {
                tracing::warn!(path = %path, "{takeover}")
            }
        }
        self
    }

    /// Extends the lease by its TTL from now. [`LeaseError::Lost`] means
    /// another process has it or is taking it: stop uploading.
    pub(crate) fn renew(&mut self) -> Result<(), LeaseError> {
        for _ in 0..MAX_ROUNDS {
            let seen = read(&self.path)?.ok_or_else(|| self.lost(LossCause::Removed))?;
            let current = Claim::parse(&seen)
                .map_err(|reason| self.lost(LossCause::Unreadable { reason }))?;
            if !current.is_held_by(&self.me) {
                return Err(self.lost(LossCause::TakenOver {
                    host: current.host,
                    pid: current.pid,
                }));
            }
            // Renewing goes through the same compare-and-swap as a takeover,
            // so a renewal that comes late (past expiry) and a takeover cannot
            // both succeed: one of them finds the other's lock or new version.
            let now = SystemTime::now();
            let renewed = Claim::new(&self.me, self.claim.acquired_at, now, self.ttl);
            let pending = Pending::write(&self.dir, renewed)?;
            match swap(&self.path, &seen, &pending, false)? {
                Swapped::Done => {
                    self.claim = pending.claim.clone();
                    return Ok(());
                }
                Swapped::Contended(other) => {
                    return Err(self.lost(LossCause::BeingTakenOver {
                        host: other.host,
                        pid: other.pid,
                    }));
                }
                Swapped::Changed => continue,
            }
        }
        Err(LeaseError::Contended {
            path: self.path.clone(),
        })
    }

    /// Gives the lease up, removing `lease.json` only while it is still ours
    /// (a lease someone else took over is left to them).
    pub(crate) fn release(self) -> Result<(), LeaseError> {
        for _ in 0..MAX_ROUNDS {
            let Some(seen) = read(&self.path)? else {
                return Ok(());
            };
            if !Claim::parse(&seen).is_ok_and(|current| current.is_held_by(&self.me)) {
                return Ok(());
            }
            // The lock file shows who is changing the lease, as for renewals.
            let now = SystemTime::now();
            let releasing = Claim::new(&self.me, self.claim.acquired_at, now, self.ttl);
            let pending = Pending::write(&self.dir, releasing)?;
            match swap(&self.path, &seen, &pending, true)? {
                // Contended: someone is taking it over, which releasing allows.
                Swapped::Done | Swapped::Contended(_) => return Ok(()),
                Swapped::Changed => continue,
            }
        }
        Err(LeaseError::Contended { path: self.path })
    }

    fn lost(&self, cause: LossCause) -> LeaseError {
        LeaseError::Lost {
            path: self.path.clone(),
            cause,
        }
    }

    /// How often to call [`Lease::renew`]: a third of the TTL, so that one
    /// slow or failed renewal still leaves time for another before expiry.
    pub(crate) fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    #[cfg(test)]
    /// When the lease runs out unless renewed (by this host's clock).
    pub(crate) fn expires_at(&self) -> SystemTime {
        self.claim.expires_at
    }

    #[cfg(test)]
    /// What this acquire replaced, if anything (logged as a warning when
    /// the lease was taken).
    pub(crate) fn takeover(&self) -> Option<&Takeover> {
        self.takeover.as_ref()
    }
}

fn held_error(path: &Path, holder: &Claim, remaining: Duration) -> LeaseError {
    LeaseError::Held {
        path: path.to_path_buf(),
        host: holder.host.clone(),
        pid: holder.pid,
        expires_in: remaining,
    }
}

#[cfg(test)]
/// The current holder's claim, for `syncd status` (which then judges
/// `expires_at` itself); `None` when there is no readable lease.
pub(crate) fn holder(state_dir: &Path) -> Option<Claim> {
    let bytes = read_optional(&state_dir.join(FILE)).ok()??;
    Claim::parse(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    /// Another daemon: same process (so its pid is alive), but its own token
    /// and a host name of its own.
    fn daemon(host: &str) -> Identity {
        Identity {
            host: host.to_string(),
            pid: std::process::id(),
            token: format!("{:032x}", fastrand::u128(..)),
        }
    }

    /// Writes a lease that expired `ago`, as a daemon that died would leave.
    fn write_expired(dir: &Path, host: &str, ago: Duration) {
        let now = SystemTime::now();
        let claim = Claim::new(&daemon(host), now - LONG, now - ago - LONG, LONG);
        fs::write(dir.join(FILE), claim.to_bytes()).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn acquire_renew_release() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let mut lease = Lease::acquire(&dir, LONG).unwrap();
        assert!(lease.takeover().is_none());
        assert_eq!(lease.renew_interval(), Duration::from_secs(10));
        let first = holder(&dir).unwrap();
        assert_eq!(first.pid, std::process::id());
        assert_eq!(first.host, this_host());
        assert_eq!(names(&dir), [FILE], "no temporary or lock files remain");

        std::thread::sleep(Duration::from_millis(5));
        lease.renew().unwrap();
        let renewed = holder(&dir).unwrap();
        assert_eq!(renewed.token, first.token);
        assert_eq!(renewed.acquired_at, first.acquired_at);
        assert!(renewed.heartbeat_at > first.heartbeat_at);
        assert!(renewed.expires_at > first.expires_at);
        assert_eq!(lease.expires_at(), renewed.expires_at);
        assert_eq!(names(&dir), [FILE]);

        lease.release().unwrap();
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }

    #[test]
    fn file_is_readable_json_with_rfc3339_times() {
        let tmp = tempfile::tempdir().unwrap();
        let _lease = Lease::acquire(tmp.path(), LONG).unwrap();
        let text = fs::read_to_string(tmp.path().join(FILE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in ["host", "pid", "token", "acquired_at", "heartbeat_at"] {
            assert!(value.get(key).is_some(), "{key} missing in {text}");
        }
        let expires = value["expires_at"].as_str().unwrap();
        assert!(expires.ends_with('Z') && expires.contains('.'), "{expires}");
    }

    #[test]
    fn second_daemon_is_refused_with_who_and_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let _a = Lease::acquire_as(tmp.path(), LONG, daemon("login-a")).unwrap();
        let err = Lease::acquire_as(tmp.path(), LONG, daemon("login-b")).unwrap_err();
        let LeaseError::Held {
            host,
            pid,
            expires_in,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(host, "login-a");
        assert_eq!(*pid, std::process::id());
        assert!(*expires_in <= LONG && *expires_in > LONG / 2);
        let message = err.to_string();
        for part in ["login-a", &format!("kill {pid}"), "--wait", "lease.json"] {
            assert!(message.contains(part), "{part:?} missing: {message}");
        }
        assert_eq!(names(tmp.path()), [FILE]);
    }

    #[test]
    fn the_same_process_gets_its_own_lease_back() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Lease::acquire(tmp.path(), LONG).unwrap();
        let second = Lease::acquire(tmp.path(), LONG).unwrap();
        assert!(second.takeover().is_none());
        drop(first);
        second.release().unwrap();
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn expired_lease_is_taken_over_and_the_old_holder_learns_it() {
        let tmp = tempfile::tempdir().unwrap();
        let ttl = Duration::from_millis(200);
        let mut old = Lease::acquire_as(tmp.path(), ttl, daemon("login-a")).unwrap();
        assert!(matches!(
            Lease::acquire_as(tmp.path(), LONG, daemon("login-b")),
            Err(LeaseError::Held { .. })
        ));
        std::thread::sleep(ttl + Duration::from_millis(50));

        let (_guard, log) = crate::telemetry::capture::start();
        let new = Lease::acquire_as(tmp.path(), LONG, daemon("login-b")).unwrap();
        match new.takeover() {
            Some(Takeover::Expired { host, .. }) => assert_eq!(host, "login-a"),
            other => panic!("{other:?}"),
        }
        assert!(new.takeover().unwrap().to_string().contains("expired"));
        // Said once, as a warning naming the holder it replaced.
        let said = log.lines_with("took over the lease");
        assert_eq!(said.len(), 1, "{}", log.text());
        assert!(
            said[0].contains("WARN") && said[0].contains("holder_host=login-a"),
            "{}",
            said[0]
        );

        let err = old.renew().unwrap_err();
        match &err {
            LeaseError::Lost {
                cause: LossCause::TakenOver { host, .. },
                ..
            } => assert_eq!(host, "login-b"),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("must stop uploading"), "{err}");
        // Releasing a lost lease leaves the new holder's alone.
        old.release().unwrap();
        assert_eq!(holder(tmp.path()).unwrap().host, "login-b");
    }

    #[test]
    fn late_renewal_of_an_untouched_lease_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let ttl = Duration::from_millis(100);
        let mut lease = Lease::acquire_as(tmp.path(), ttl, daemon("login-a")).unwrap();
        std::thread::sleep(ttl * 2);
        lease.renew().unwrap();
        assert!(matches!(
            Lease::acquire_as(tmp.path(), LONG, daemon("login-b")),
            Err(LeaseError::Held { .. })
        ));
    }

    #[test]
    fn renew_detects_removal_and_a_takeover_in_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lease = Lease::acquire_as(tmp.path(), LONG, daemon("login-a")).unwrap();
        let seen = fs::read(tmp.path().join(FILE)).unwrap();

        // Another daemon holds the lock on the current version.
        let lock = lock_name(&tmp.path().join(FILE), &seen);
        let now = SystemTime::now();
        fs::write(
            &lock,
            Claim::new(&daemon("login-b"), now, now, LONG).to_bytes(),
        )
        .unwrap();
        match lease.renew() {
            Err(LeaseError::Lost {
                cause: LossCause::BeingTakenOver { host, .. },
                ..
            }) => assert_eq!(host, "login-b"),
            other => panic!("{other:?}"),
        }
        fs::remove_file(&lock).unwrap();

        fs::remove_file(tmp.path().join(FILE)).unwrap();
        assert!(matches!(
            lease.renew(),
            Err(LeaseError::Lost {
                cause: LossCause::Removed,
                ..
            })
        ));
    }

    #[test]
    fn corrupt_lease_is_treated_as_expired_with_a_warning() {
        for garbage in [&b"{\"host\": \"login-a\", \"pi"[..], b"", b"\0\0\0\0"] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join(FILE), garbage).unwrap();
            let lease = Lease::acquire_as(tmp.path(), LONG, daemon("login-b")).unwrap();
            let warning = lease.takeover().expect("a warning").to_string();
            assert!(warning.contains("unreadable"), "{warning}");
            assert_eq!(holder(tmp.path()).unwrap().host, "login-b");
            assert_eq!(names(tmp.path()), [FILE]);
        }
    }

    #[test]
    fn lease_of_a_dead_process_on_this_host_is_taken_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let now = SystemTime::now();
        let dead = Identity {
            host: this_host().to_string(),
            pid: dead_pid,
            token: "0".repeat(32),
        };
        fs::write(
            tmp.path().join(FILE),
            Claim::new(&dead, now, now, LONG).to_bytes(),
        )
        .unwrap();
        let lease = Lease::acquire_as(tmp.path(), LONG, daemon("login-b")).unwrap();
        assert_eq!(
            lease.takeover(),
            Some(&Takeover::HolderGone { pid: dead_pid })
        );
    }

    #[test]
    fn lock_left_by_a_dead_taker_is_cleared_and_a_live_one_respected() {
        let tmp = tempfile::tempdir().unwrap();
        write_expired(tmp.path(), "login-a", Duration::from_secs(5));
        let seen = fs::read(tmp.path().join(FILE)).unwrap();
        let lock = lock_name(&tmp.path().join(FILE), &seen);

        // A taker that is alive and mid-change: it wins, we are refused.
        let now = SystemTime::now();
        fs::write(
            &lock,
            Claim::new(&daemon("login-c"), now, now, LONG).to_bytes(),
        )
        .unwrap();
        match Lease::acquire_as(tmp.path(), LONG, daemon("login-b")) {
            Err(LeaseError::Held { host, .. }) => assert_eq!(host, "login-c"),
            other => panic!("{other:?}"),
        }

        // A taker that died mid-change: its lock expires and is cleared.
        let then = now - LONG * 2;
        fs::write(
            &lock,
            Claim::new(&daemon("login-c"), then, then, LONG).to_bytes(),
        )
        .unwrap();
        let lease = Lease::acquire_as(tmp.path(), LONG, daemon("login-b")).unwrap();
        assert!(matches!(lease.takeover(), Some(Takeover::Expired { .. })));
        assert_eq!(names(tmp.path()), [FILE]);

        // A damaged lock counts as dead too.
        lease.release().unwrap();
        write_expired(tmp.path(), "login-a", Duration::from_secs(5));
        let seen = fs::read(tmp.path().join(FILE)).unwrap();
        fs::write(lock_name(&tmp.path().join(FILE), &seen), b"{").unwrap();
        Lease::acquire_as(tmp.path(), LONG, daemon("login-b")).unwrap();
        assert_eq!(names(tmp.path()), [FILE]);
    }

    /// Several daemons start at the same moment: on an empty state directory,
    /// on an expired lease, and while the expired holder renews late. Exactly
    /// one ends up holding the lease, and it is the one the file names.
    #[test]
    fn racing_acquirers_exactly_one_wins() {
        const RACERS: usize = 4;
        for round in 0..50 {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().to_path_buf();
            let mut late_holder = None;
            match round % 3 {
                0 => {}
                1 => write_expired(&dir, "login-dead", Duration::from_secs(1)),
                _ => {
                    let ttl = Duration::from_millis(100);
                    late_holder = Some(Lease::acquire_as(&dir, ttl, daemon("login-late")).unwrap());
                    std::thread::sleep(ttl + Duration::from_millis(20));
                }
            }
            let start = Arc::new(Barrier::new(RACERS + usize::from(late_holder.is_some())));
            let mut racers = Vec::new();
            for i in 0..RACERS {
                let (dir, start) = (dir.clone(), start.clone());
                racers.push(std::thread::spawn(move || {
                    let me = daemon(&format!("login-{i}"));
                    start.wait();
                    Lease::acquire_as(&dir, LONG, me).map(|l| l.me.token.clone())
                }));
            }
            let renewer = late_holder.map(|mut lease| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    lease.renew().map(|()| lease.me.token.clone())
                })
            });
            let mut winners = Vec::new();
            for racer in racers {
                match racer.join().unwrap() {
                    Ok(token) => winners.push(token),
                    Err(LeaseError::Held { .. }) => {}
                    Err(e) => panic!("round {round}: unexpected error {e}"),
                }
            }
            if let Some(renewer) = renewer {
                match renewer.join().unwrap() {
                    Ok(token) => winners.push(token),
                    Err(LeaseError::Lost { .. }) => {}
                    Err(e) => panic!("round {round}: unexpected renewal error {e}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
            assert_eq!(holder(&dir).unwrap().token, winners[0], "round {round}");
            assert_eq!(names(&dir), [FILE], "round {round}: files left behind");
        }
    }

    /// The same race between real processes (each its own pid on this host,
    /// as two daemons started together would be), on an empty state
    /// directory and on an expired lease.
    #[test]
    fn racing_processes_exactly_one_wins() {
        const RACERS: usize = 3;
        let exe = std::env::current_exe().unwrap();
        for round in 0..20 {
            let tmp = tempfile::tempdir().unwrap();
            if round % 2 == 1 {
                write_expired(tmp.path(), "login-dead", Duration::from_secs(1));
            }
            let start = SystemTime::now() + Duration::from_millis(150);
            let start_ms = start
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis();
            let mut children: Vec<std::process::Child> = (0..RACERS)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .args(["--exact", "ledger::lease::tests::child_acquirer"])
                        .args(["--ignored", "--nocapture", "--test-threads=1", "-q"])
                        .env(CHILD_DIR, tmp.path())
                        .env(CHILD_START_MS, start_ms.to_string())
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            let verdicts: Vec<String> = children
                .iter_mut()
                .map(|child| {
                    let out = io::BufReader::new(child.stdout.take().unwrap());
                    io::BufRead::lines(out)
                        .map_while(Result::ok)
                        .find_map(|line| line.strip_prefix("LEASE-RESULT ").map(str::to_string))
                        .expect("the child answers")
                })
                .collect();
            // Closing stdin lets the children (and the winner's lease) go.
            for child in &mut children {
                drop(child.stdin.take());
                child.wait().unwrap();
            }
            let winners: Vec<&str> = verdicts
                .iter()
                .filter_map(|v| v.strip_prefix("won "))
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {verdicts:?}");
            assert_eq!(
                verdicts.iter().filter(|v| *v == "held").count(),
                RACERS - 1,
                "round {round}: {verdicts:?}"
            );
            assert_eq!(holder(tmp.path()).unwrap().token, winners[0]);
        }
    }

    const CHILD_DIR: &str = "SYNCD_LEASE_TEST_DIR";
    const CHILD_START_MS: &str = "SYNCD_LEASE_TEST_START_MS";

    /// One racer of `racing_processes_exactly_one_wins`; does nothing when
    /// run on its own.
    #[test]
    #[ignore = "a child process of racing_processes_exactly_one_wins"]
    fn child_acquirer() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let start_ms: u64 = std::env::var(CHILD_START_MS).unwrap().parse().unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(start_ms);
        if let Ok(wait) = start.duration_since(SystemTime::now()) {
            std::thread::sleep(wait);
        }
        let verdict = match Lease::acquire(Path::new(&dir), LONG) {
            Ok(lease) => format!("won {}", lease.me.token),
            Err(LeaseError::Held { .. }) => "held".to_string(),
            Err(e) => format!("error {e}"),
        };
        println!("LEASE-RESULT {verdict}");
        // Stay alive, and so keep the lease, until the parent has every answer.
        let _ = io::Read::read_to_end(&mut io::stdin(), &mut Vec::new());
    }

    #[test]
    fn abandoned_temporary_files_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let stale = tmp.path().join(format!(".{FILE}.node.1.abcdefgh.0.tmp"));
        let fresh = tmp.path().join(format!(".{FILE}.node.2.abcdefgh.0.tmp"));
        fs::write(&stale, b"{}").unwrap();
        fs::write(&fresh, b"{}").unwrap();
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let _lease = Lease::acquire(tmp.path(), LONG).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn zero_ttl_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Lease::acquire(tmp.path(), Duration::ZERO),
            Err(LeaseError::InvalidTtl)
        ));
    }
}
