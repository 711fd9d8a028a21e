//! Running other programs (Slurm's commands, `systemctl`): finding them on
//! `PATH` and bounding how long they may take.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// `program` itself when it names a path (`/usr/bin/x`, `./x`), else the
/// first executable of that name in the directories of `path` (`PATH`'s
/// value).
pub(crate) fn find_program(program: &Path, path: Option<&OsStr>) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `command` with its output captured, killing it after `timeout`
/// (an error of kind `TimedOut`). Its pipes are read while it runs, so a
/// chatty command cannot block on a full pipe; a grandchild left holding
/// them is not waited for past the deadline.
pub(crate) fn output_within(mut command: Command, timeout: Duration) -> io::Result<Output> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )
    };
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            // Still our unreaped child: the kill cannot reach another process.
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let collect = |pipe: mpsc::Receiver<Vec<u8>>| {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        pipe.recv_timeout(wait)
    };
    let stdout = collect(stdout).map_err(|_| timed_out())?;
    let stderr = collect(stderr).unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// [`output_within`] for async callers: the child is a `tokio::process`
/// child, awaited without blocking the caller's thread, and killed when the
/// deadline passes or when the future is dropped (`kill_on_drop`), so a
/// daemon that stops or gives up never leaves it behind. The child starts
/// with no signal blocked, whatever the calling thread blocks (the daemon's
/// loop blocks SIGTERM for its keeper thread, and a blocked mask survives
/// exec: `squeue` would otherwise ignore a service manager's SIGTERM).
pub(crate) async fn output_within_async(
    command: std::process::Command,
    timeout: Duration,
) -> io::Result<Output> {
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // One deadline over starting the command and waiting for it: an exec
    // held up by a hung mount is late like a command that does not answer.
    let run = async {
        spawn_with_no_signal_blocked(command)
            .await?
            .wait_with_output()
            .await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(output) => output,
        // Dropping the timed-out future dropped the child (or the channel
        // that would have brought it, so it is dropped on arrival): it is
        // killed.
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
    }
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = sender.send(bytes);
    });
    receiver
}

/// Starts `command` from a short-lived thread that blocks no signal: a
/// child inherits the mask of the thread that forks it, and std resets only
/// signal dispositions, not the mask. The thread hands the child back over
/// a channel rather than being joined, so an `exec` held up by a hung mount
/// holds up only that thread.
async fn spawn_with_no_signal_blocked(
    mut command: tokio::process::Command,
) -> io::Result<tokio::process::Child> {
    let runtime = tokio::runtime::Handle::current();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    thread::Builder::new()
        .name("syncd-spawn".into())
        .spawn(move || {
            let spawned = unblock_all_signals().and_then(|()| {
                // tokio registers the child with the runtime's reaper.
                let _runtime = runtime.enter();
                command.spawn()
            });
            let _ = sender.send(spawned);
        })?;
    receiver
        .await
        .map_err(|_| io::Error::other("the thread starting the command ended without an answer"))?
}

/// Lets the calling thread receive every signal again.
fn unblock_all_signals() -> io::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(io::Error::from)
}

/// Blocks `signals` in the calling thread (and in threads it starts later).
pub(crate) fn block_signals_in_this_thread(signals: &[nix::sys::signal::Signal]) -> io::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let set: SigSet = signals.iter().copied().collect();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(io::Error::from)
}

/// The uid this process runs as.
pub(crate) fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// This machine's name (for the lease, the heartbeat and temporary file
/// names), read once per process: it does not change while syncd runs, and
/// the durable writes that use it happen many times a second.
pub(crate) fn hostname() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_or_by_their_own_path() {
        let path = std::env::var_os("PATH");
        let sh = find_program(Path::new("sh"), path.as_deref()).expect("sh on PATH");
        assert!(sh.is_absolute());
        assert_eq!(find_program(&sh, None), Some(sh.clone()));
        assert_eq!(
            find_program(Path::new("no-such-program-x"), path.as_deref()),
            None
        );
        assert_eq!(find_program(Path::new("sh"), None), None);
    }

    #[test]
    fn output_is_captured_and_a_slow_command_is_killed_in_time() {
        let mut echo = Command::new("sh");
        echo.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = output_within(echo, Duration::from_secs(10)).unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");

        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = Instant::now();
        let error = output_within(slow, Duration::from_millis(200)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_async_runner_captures_output_and_kills_a_slow_command_in_time() {
        let mut echo = Command::new("sh");
        echo.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = output_within_async(echo, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");

        // The shell writes its pid, then sleeps: after the timeout the
        // process must be gone, not left running.
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("pid");
        let mut slow = Command::new("sh");
        slow.args([
            "-c",
            &format!("echo $$ > {}; exec sleep 30", pid_file.display()),
        ]);
        let started = Instant::now();
        let error = output_within_async(slow, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc_dir = Path::new("/proc").join(pid.trim());
        let gone = (0..50).any(|_| {
            // Killed and reaped, or at most a zombie awaiting tokio's reaper.
            let state = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
            let alive = !state.is_empty() && !state.contains(") Z ");
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the timed-out child {pid} still runs");
    }

    #[tokio::test]
    async fn the_async_runner_starts_children_with_no_signal_blocked() {
        // As on the daemon's loop thread, which blocks these for its keeper.
        block_signals_in_this_thread(&[nix::sys::signal::Signal::SIGTERM]).unwrap();
        let mut grep = Command::new("grep");
        grep.args(["SigBlk", "/proc/self/status"]);
        let output = output_within_async(grep, Duration::from_secs(10))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            text.split_whitespace().nth(1),
            Some("0000000000000000"),
            "{text}"
        );
    }

    #[test]
    fn the_uid_is_the_owner_of_files_we_create() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(std::fs::metadata(tmp.path()).unwrap().uid(), current_uid());
    }
}
