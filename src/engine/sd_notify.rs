//! Telling systemd how the daemon is doing (`Type=notify` units,
//! `sd_notify(3)`) without linking libsystemd: the protocol is one datagram
//! of newline-separated `KEY=value` lines sent to the Unix socket named by
//! `$NOTIFY_SOCKET`.
//!
//! - `READY=1` once the daemon holds the lease and runs: `systemctl start`
//!   returns then, and units ordered after syncd start.
//! - `STATUS=…`: the line `systemctl status` shows.
//! - `WATCHDOG=1` at least every [`Notifier::watchdog_interval`] when the unit
//!   sets `WatchdogSec=`: systemd restarts a daemon that stops sending it.
//! - `STOPPING=1` when shutting down.
//!
//! Failures are returned so the daemon can log them; none of them should
//! stop it, since uploading matters more than systemd's view of it.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// Where systemd listens, as `$NOTIFY_SOCKET` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotifySocket {
    /// A socket file.
    Path(PathBuf),
    /// A name in Linux's abstract socket namespace (`@name` in the variable),
    /// without the leading `@`.
    Abstract(Vec<u8>),
}

impl NotifySocket {
    /// Parses `$NOTIFY_SOCKET`: an absolute path, or `@name` for the abstract
    /// namespace. Anything else is refused, as libsystemd refuses it.
    pub(crate) fn parse(value: &OsStr) -> Option<NotifySocket> {
        let bytes = value.as_bytes();
        match bytes.first()? {
            b'@' if bytes.len() > 1 => Some(NotifySocket::Abstract(bytes[1..].to_vec())),
            b'/' => Some(NotifySocket::Path(PathBuf::from(value))),
            _ => None,
        }
    }

    fn address(&self) -> io::Result<SocketAddr> {
        match self {
            NotifySocket::Path(path) => SocketAddr::from_pathname(path),
            NotifySocket::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
    }
}

impl fmt::Display for NotifySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifySocket::Path(path) => write!(f, "{}", path.display()),
            NotifySocket::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot notify systemd through {socket}: {source}; `systemctl status` may show stale \
     information and the watchdog may restart the daemon (check the unit's NotifyAccess= \
     setting)"
)]
pub(crate) struct NotifyError {
    socket: NotifySocket,
    source: io::Error,
}

/// Sends notifications to the service manager that started this process.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    socket: NotifySocket,
    /// `WatchdogSec=` of the unit, when the watchdog is meant for this process.
    watchdog_timeout: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for through the environment, if any:
    /// `NOTIFY_SOCKET`, and `WATCHDOG_USEC` (honoured only when `WATCHDOG_PID`
    /// is unset or names this process).
    pub(crate) fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::from_vars(
            &socket,
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
            std::process::id(),
        )
    }

    /// [`Notifier::from_env`] on given values of the three variables, for
    /// the process `pid`.
    pub(crate) fn from_vars(
        notify_socket: &OsStr,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Option<Notifier> {
        let Some(socket) = NotifySocket::parse(notify_socket) else {
            tracing::warn!(
                notify_socket = %notify_socket.to_string_lossy(),
                "NOTIFY_SOCKET is neither an absolute path nor @name; systemd is not told \
                 how the daemon is doing"
            );
            return None;
        };
        Some(Notifier::new(
            socket,
            watchdog_timeout(watchdog_usec, watchdog_pid, pid),
        ))
    }

    /// A notifier for `socket`; `watchdog_timeout` is the unit's
    /// `WatchdogSec=`, or `None` when the watchdog is off.
    pub(crate) fn new(socket: NotifySocket, watchdog_timeout: Option<Duration>) -> Notifier {
        Notifier {
            socket,
            watchdog_timeout,
        }
    }

    /// Startup is complete.
    pub(crate) fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// One line for `systemctl status`. Line breaks become spaces: a new
    /// line would start another assignment, so text from a run's name could
    /// otherwise send commands such as `READY=1`.
    pub(crate) fn status(&self, text: &str) -> Result<(), NotifyError> {
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"))
    }

    /// Still alive. Does nothing when the watchdog is off for this process.
    pub(crate) fn watchdog(&self) -> Result<(), NotifyError> {
        if self.watchdog_timeout.is_none() {
            return Ok(());
        }
        self.send("WATCHDOG=1")
    }

    /// Shutdown has begun.
    pub(crate) fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    /// How often to call [`Notifier::watchdog`]: half the timeout, as
    /// `sd_watchdog_enabled(3)` recommends, so one late tick is not fatal.
    /// `None` when the watchdog is off.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_timeout.map(|timeout| timeout / 2)
    }

    fn send(&self, message: &str) -> Result<(), NotifyError> {
        // A fresh unbound socket per message, as libsystemd does: messages are
        // seconds apart, and no descriptor stays open for the daemon's life.
        let sent = (|| {
            let address = self.socket.address()?;
            UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)
        })();
        sent.map(|_| ()).map_err(|source| NotifyError {
            socket: self.socket.clone(),
            source,
        })
    }
}

/// The watchdog timeout, if `WATCHDOG_USEC` sets one for process `pid`.
/// `WATCHDOG_PID` exists because the variables are inherited: a child that
/// is not the service's main process must not feed the watchdog.
/// Values that do not parse turn the watchdog off, with a warning: systemd
/// then restarts the daemon when `WatchdogSec=` passes unfed.
fn watchdog_timeout(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if let Some(for_pid) = for_pid {
        match for_pid.trim().parse::<u32>() {
            Ok(for_pid) if for_pid == pid => {}
            Ok(_) => return None,
            Err(_) => {
                tracing::warn!(
                    watchdog_pid = for_pid,
                    "WATCHDOG_PID is not a process id; the watchdog is not fed"
                );
                return None;
            }
        }
    }
    let usec = usec?;
    match usec.trim().parse::<u64>() {
        Ok(usec) => (usec > 0).then(|| Duration::from_micros(usec)),
        Err(_) => {
            tracing::warn!(
                watchdog_usec = usec,
                "WATCHDOG_USEC is not a number of microseconds; the watchdog is not fed"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, path, socket)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_each_notification_to_a_socket_file() {
        let (_dir, path, socket) = listener();
        let notifier = Notifier::new(
            NotifySocket::Path(path.clone()),
            Some(Duration::from_secs(20)),
        );
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(10)));

        notifier.ready().unwrap();
        assert_eq!(receive(&socket), "READY=1");
        notifier.status("uploading 3 runs\nREADY=1\r").unwrap();
        assert_eq!(receive(&socket), "STATUS=uploading 3 runs READY=1 ");
        notifier.watchdog().unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1");
        notifier.stopping().unwrap();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("syncd-test-{}-{:x}", std::process::id(), fastrand::u64(..));
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let variable = format!("@{name}");
        let notifier = Notifier::from_vars(OsStr::new(&variable), None, None, 1).unwrap();
        assert_eq!(
            notifier.socket,
            NotifySocket::Abstract(name.as_bytes().to_vec())
        );
        notifier.ready().unwrap();
        assert_eq!(receive(&socket), "READY=1");
        notifier.status("idle").unwrap();
        assert_eq!(receive(&socket), "STATUS=idle");
    }

    #[test]
    fn watchdog_for_another_pid_is_off() {
        let (_dir, path, socket) = listener();
        let notifier =
            Notifier::from_vars(path.as_os_str(), Some("30000000"), Some("4242"), 4243).unwrap();
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.watchdog().unwrap();
        // Datagrams arrive in order: had the watchdog sent anything, it
        // would come before this.
        notifier.stopping().unwrap();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn watchdog_variables_are_parsed_like_libsystemd() {
        let at = |usec, pid| watchdog_timeout(usec, pid, 77);
        assert_eq!(at(Some("30000000"), None), Some(Duration::from_secs(30)));
        assert_eq!(
            at(Some("30000000"), Some("77")),
            Some(Duration::from_secs(30))
        );
        assert_eq!(at(Some("30000000"), Some("78")), None);
        assert_eq!(at(Some("30000000"), Some("x")), None);
        assert_eq!(at(Some("0"), None), None);
        assert_eq!(at(Some("soon"), None), None);
        assert_eq!(at(None, Some("77")), None);
    }

    #[test]
    fn socket_variable_must_be_absolute_or_abstract() {
        assert_eq!(
            NotifySocket::parse(OsStr::new("/run/systemd/notify")),
            Some(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifySocket::parse(OsStr::new("@x")),
            Some(NotifySocket::Abstract(b"x".to_vec()))
        );
        for refused in ["", "@", "run/notify"] {
            assert_eq!(
                NotifySocket::parse(OsStr::new(refused)),
                None,
                "{refused:?}"
            );
        }
    }

    /// Variables systemd would never set this way mean a broken unit or
    /// environment: said, not silently ignored.
    #[test]
    fn unusable_variables_are_warned_about() {
        let (_guard, log) = crate::telemetry::capture::start();
        assert!(Notifier::from_vars(OsStr::new("run/notify"), None, None, 77).is_none());
        assert_eq!(watchdog_timeout(Some("soon"), None, 77), None);
        assert_eq!(watchdog_timeout(Some("30000000"), Some("x"), 77), None);
        // Another process's watchdog is not a problem.
        assert_eq!(watchdog_timeout(Some("30000000"), Some("78"), 77), None);
        let warnings = log.lines_with("WARN");
        assert_eq!(warnings.len(), 3, "{}", log.text());
        for (line, variable) in
            warnings
                .iter()
                .zip(["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"])
        {
            assert!(line.contains(variable), "{line}");
        }
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        let notifier = Notifier::new(NotifySocket::Path(path.clone()), None);
        let err = notifier.ready().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("NotifyAccess"), "{err}");
    }
}
