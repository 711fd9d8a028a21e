//! The daemon's loop never waits on the outside world: against a server
//! that accepts connections and never answers, one that answers and then
//! black-holes, and an `squeue` that sleeps for a minute, its heartbeat
//! stays fresh, its lease is renewed, `status` names the problem, SIGTERM
//! ends it within 2 s plus the 5 s grace for uploads in flight, and a second
//! daemon with `--wait` does not take over; the same while a filesystem under
//! a watched root stops answering (a FUSE mount that hangs), where the loop
//! itself is stuck and its keeper thread holds on. Afterwards everything converges:
//! nothing lost, nothing sent twice.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::daemon::{Daemon, committed_copy, start_daemon, status_json, wait_until};
use crate::wandb_server::WandbServer;

/// A TCP relay in front of the test server that can black-hole: while it
/// does, it accepts connections and reads requests but forwards nothing and
/// answers nothing, in new connections and in ones already open (the way a
/// dead proxy or a dropped route looks to a client).
struct BlackHole {
    addr: SocketAddr,
    holding: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl BlackHole {
    fn start(upstream: SocketAddr, holding: bool) -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let holding = Arc::new(AtomicBool::new(holding));
        let stop = Arc::new(AtomicBool::new(false));
        let (hold, quit) = (Arc::clone(&holding), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !quit.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        relay(client, upstream, Arc::clone(&hold), Arc::clone(&quit));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        BlackHole {
            addr,
            holding,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hold(&self, holding: bool) {
        self.holding.store(holding, Ordering::Relaxed);
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Pumps bytes both ways between `client` and a new connection upstream,
/// dropping them while `holding`; the connection stays open either way.
fn relay(client: TcpStream, upstream: SocketAddr, holding: Arc<AtomicBool>, quit: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    for (mut from, mut to) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ] {
        let (holding, quit) = (Arc::clone(&holding), Arc::clone(&quit));
        from.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while !quit.load(Ordering::Relaxed) {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !holding.load(Ordering::Relaxed) && to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// The pid in the state directory's lease.
fn lease_holder(home: &Path) -> Value {
    let lease: Value =
        serde_json::from_slice(&std::fs::read(home.join("state/lease.json")).unwrap()).unwrap();
    lease["pid"].clone()
}

fn age_of(rfc3339: &Value) -> Duration {
    let at = humantime::parse_rfc3339(rfc3339.as_str().expect("a timestamp")).unwrap();
    SystemTime::now().duration_since(at).unwrap_or_default()
}

/// The daemon's own view, read by `syncd status --json` and from its lease,
/// while something outside hangs: it is alive and says what is wrong.
fn assert_alive(daemon: &Daemon, home: &Path, what: &str) -> Value {
    let status = status_json(home);
    let d = &status["daemon"];
    assert_eq!(d["running"], true, "{what}: status says not running: {d:#}");
    assert_eq!(d["pid"], daemon.pid(), "{what}: {d:#}");
    let beat_age = age_of(&d["heartbeat_at"]);
    assert!(
        beat_age <= Duration::from_secs(5),
        "{what}: heartbeat {beat_age:?} old"
    );
    let lease: Value =
        serde_json::from_slice(&std::fs::read(home.join("state/lease.json")).unwrap()).unwrap();
    assert_eq!(lease["pid"], daemon.pid(), "{what}: lease {lease:#}");
    // TTL 3 s, renewed every second.
    let renewed = age_of(&lease["heartbeat_at"]);
    assert!(
        renewed <= Duration::from_millis(2500),
        "{what}: lease renewed {renewed:?} ago"
    );
    status
}

/// A second daemon with `--wait` on the same state waits and does not take
/// over while the first lives; it is killed afterwards.
fn assert_no_takeover(
    server: &WandbServer,
    hole: &BlackHole,
    home: &Path,
    root: &Path,
    first: &Daemon,
) {
    let second = start_daemon_with_key(server, hole, home, root, &["--wait"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lease_holder(home), first.pid(), "the lease changed hands");
    assert!(
        !second.log_text().contains("watching"),
        "the second daemon started: {}",
        second.log_text()
    );
    drop(second);
}

/// SIGTERM while a request hangs: the daemon is gone within 2 s plus the
/// 5 s grace it gives uploads in flight.
fn stop_in_time(daemon: Daemon) -> Duration {
    let started = Instant::now();
    let status = daemon.stop();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took <= Duration::from_secs(7), "SIGTERM took {took:?}");
    took
}

#[test]
fn a_server_that_accepts_and_never_answers_does_not_stall_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "finished", &root);
    let server = WandbServer::start();
    let hole = BlackHole::start(server.addr(), true);
    let home = tmp.path().join("home");
    let daemon = start_daemon_with_key(&server, &hole, &home, &root, &[]);
    // Never answered yet: not "online".
    let first = status_json(&home);
    assert_ne!(first["daemon"]["network"], "online", "{first:#}");
    wait_until(Duration::from_secs(15), "status to say offline", || {
        status_json(&home)["daemon"]["network"] == "offline"
    });
    // Hanging requests and probes for a while; sample the daemon all along.
    for i in 0..6 {
        let status = assert_alive(&daemon, &home, &format!("sample {i}"));
        let d = &status["daemon"];
        assert_eq!(d["network"], "offline", "{d:#}");
        assert_eq!(d["online"], false);
        assert!(d["offline_since"].is_string(), "{d:#}");
        assert!(d["next_probe"].is_string(), "{d:#}");
        let run = &status["runs"][0];
        assert_eq!(status["runs"].as_array().unwrap().len(), 1, "{status:#}");
        assert!(
            ["waiting", "uploading"].contains(&run["state"].as_str().unwrap()),
            "{run:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The run waits for the network, with what is behind and the next probe.
    wait_until(Duration::from_secs(20), "the run to wait offline", || {
        let status = status_json(&home);
        let run = &status["runs"][0];
        run["state"] == "waiting"
            && run["waiting_for"] == "offline"
            && run["behind_bytes"].as_u64().unwrap_or(0) > 0
            && run["next_retry"].is_string()
    });
    // Project and path from the run itself, before any upload.
    let status = status_json(&home);
    assert_eq!(status["runs"][0]["project"], "syncd-fixtures", "{status:#}");
    assert!(
        status["runs"][0]["path"]
            .as_str()
            .is_some_and(|p| p.contains("fxfinish")),
        "{status:#}"
    );
    assert_no_takeover(&server, &hole, &home, &root, &daemon);
    assert_alive(&daemon, &home, "after the second daemon gave up");
    let took = stop_in_time(daemon);
    eprintln!("SIGTERM with a request hanging: exited after {took:?}");

    // The server answers again: the run arrives whole, each line once.
    hole.hold(false);
    let daemon = start_daemon_with_key(&server, &hole, &home, &root, &[]);
    wait_until(Duration::from_secs(60), "the run after the outage", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    let run = server.run("fxfinish").unwrap();
    assert_eq!(run["history"].as_array().unwrap().len(), 200);
    assert_eq!(run["gaps"], 0);
    wait_until(Duration::from_secs(10), "status to say online", || {
        status_json(&home)["daemon"]["network"] == "online"
    });
    daemon.stop();
}

#[test]
fn a_server_that_answers_then_black_holes_does_not_stall_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    committed_copy("0.31.0", "exit_code_3", &root);
    let server = WandbServer::start();
    let hole = BlackHole::start(server.addr(), false);
    let home = tmp.path().join("home");
    let daemon = start_daemon_with_key(&server, &hole, &home, &root, &[]);
    wait_until(Duration::from_secs(20), "the first run", || {
        server
            .run("fxexit03")
            .is_some_and(|r| r["complete"] == true)
    });
    wait_until(Duration::from_secs(10), "status to say online", || {
        status_json(&home)["daemon"]["network"] == "online"
    });
    // Now the route dies, connections already open included, and a new
    // run appears.
    hole.hold(true);
    committed_copy("0.31.0", "finished", &root);
    wait_until(Duration::from_secs(20), "status to say offline", || {
        status_json(&home)["daemon"]["network"] == "offline"
    });
    for i in 0..5 {
        let status = assert_alive(&daemon, &home, &format!("sample {i}"));
        assert!(status["daemon"]["last_contact"].is_string(), "{status:#}");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_no_takeover(&server, &hole, &home, &root, &daemon);
    let took = stop_in_time(daemon);
    eprintln!("SIGTERM after the server went silent: exited after {took:?}");

    hole.hold(false);
    let daemon = start_daemon_with_key(&server, &hole, &home, &root, &[]);
    wait_until(Duration::from_secs(60), "the second run", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    for id in ["fxexit03", "fxfinish"] {
        let run = server.run(id).unwrap();
        assert_eq!(run["gaps"], 0, "{id}");
    }
    assert_eq!(
        server.run("fxexit03").unwrap()["history_lines_received"],
        server.run("fxexit03").unwrap()["history"]
            .as_array()
            .unwrap()
            .len(),
        "the first run was not sent again"
    );
    daemon.stop();
}

/// `start_daemon` against the relay, with the server's key and requests
/// that time out after 2 s.
fn start_daemon_with_key(
    server: &WandbServer,
    hole: &BlackHole,
    home: &Path,
    root: &Path,
    extra: &[&str],
) -> Daemon {
    let mut flags = vec!["--no-slurm", "--request-timeout", "2s"];
    flags.extend_from_slice(extra);
    start_daemon(
        server,
        home,
        &[root],
        &flags,
        &[("WANDB_BASE_URL", &hole.url())],
    )
}

#[test]
fn an_squeue_that_sleeps_does_not_stall_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("scratch");
    crate::daemon::timed_out_run(&root);
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pids = tmp.path().join("slurm-pids");
    // Both commands hang; each records its pid so the test can see that
    // the daemon kills them.
    let hanging = format!("#!/bin/sh\necho $$ >> {}\nexec sleep 60\n", pids.display());
    for name in ["squeue", "sacct"] {
        let path = bin.join(name);
        std::fs::write(&path, &hanging).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(
        &server,
        &home,
        &[&root],
        &["--grace", "1s"],
        &[("PATH", &path)],
    );
    wait_until(Duration::from_secs(20), "the live part of the run", || {
        server.run("fxslurm0").is_some()
    });
    wait_until(
        Duration::from_secs(20),
        "status to say Slurm is silent",
        || status_json(&home)["daemon"]["slurm"]["answering"] == false,
    );
    for i in 0..6 {
        let status = assert_alive(&daemon, &home, &format!("sample {i}"));
        let slurm = &status["daemon"]["slurm"];
        assert_eq!(slurm["answering"], false, "{slurm:#}");
        assert!(slurm["since"].is_string(), "{slurm:#}");
        // The uploads themselves go on.
        assert_eq!(status["daemon"]["network"], "online", "{status:#}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let url = server.base_url();
    let second = start_daemon(
        &server,
        &home,
        &[&root],
        &["--wait", "--grace", "1s"],
        &[("PATH", &path), ("WANDB_BASE_URL", &url)],
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lease_holder(&home), daemon.pid(), "the lease changed hands");
    drop(second);
    let took = stop_in_time(daemon);
    eprintln!("SIGTERM while squeue hangs: exited after {took:?}");
    // The hanging commands it started are gone with it.
    std::thread::sleep(Duration::from_millis(500));
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "a Slurm command the daemon started still runs: {stat}"
        );
    }

    // Slurm answers again: the job is over (TIMEOUT) and the run is
    // finalized with that verdict.
    let fake_path = crate::daemon::fake_slurm(&bin);
    let daemon = start_daemon(
        &server,
        &home,
        &[&root],
        &["--grace", "1s"],
        &[("PATH", &fake_path)],
    );
    wait_until(Duration::from_secs(30), "the run to be finalized", || {
        server
            .run("fxslurm0")
            .is_some_and(|r| r["complete"] == true)
    });
    let run = server.run("fxslurm0").unwrap();
    assert_eq!(run["summary"]["slurm_state"], "TIMEOUT");
    assert_eq!(run["history"].as_array().unwrap().len(), 10);
    assert_eq!(run["gaps"], 0);
    daemon.stop();
}

/// A FUSE mount of a backing directory (`tests/hangfs/hangfs.py`) whose
/// server is stopped (SIGSTOP) to freeze it: requests wait unread in the
/// kernel, as with a hung NFS or Lustre mount. Thawed, unmounted and its
/// server stopped (by PID) when dropped.
/// Whether a thread of `pid` sleeps uninterruptibly (state `D`).
fn threads_in_uninterruptible_wait(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('D'))
        })
    })
}

struct HangFs {
    server: Option<std::process::Child>,
    mountpoint: std::path::PathBuf,
}

impl HangFs {
    fn mount(backing: &Path, mountpoint: &Path) -> HangFs {
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mountpoint).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hangfs/hangfs.py");
        // Debian's python3-fusepy lives with Debian's own interpreter.
        let server = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args([backing, mountpoint])
            .spawn()
            .expect("start the FUSE server (/usr/bin/python3 with python3-fusepy)");
        let fs = HangFs {
            server: Some(server),
            mountpoint: mountpoint.to_path_buf(),
        };
        wait_until(Duration::from_secs(10), "the FUSE mount", || {
            std::fs::read_to_string("/proc/self/mounts")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(mountpoint.to_str().unwrap()))
        });
        fs
    }

    fn signal(&self, signal: &str) {
        let pid = self.server.as_ref().expect("mounted").id();
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
    }

    fn freeze(&self) {
        self.signal("STOP");
    }

    fn thaw(&self) {
        self.signal("CONT");
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.thaw();
        }
        let _ = std::process::Command::new("umount")
            .arg(&self.mountpoint)
            .status();
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

#[test]
fn a_filesystem_that_stops_answering_does_not_stall_the_lease_heartbeat_or_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let mountpoint = tmp.path().join("mnt");
    let fs = HangFs::mount(&backing, &mountpoint);
    committed_copy("0.31.0", "exit_code_3", &backing);
    let server = WandbServer::start();
    let home = tmp.path().join("home");
    let daemon = start_daemon(&server, &home, &[&mountpoint], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(20), "the first run", || {
        server
            .run("fxexit03")
            .is_some_and(|r| r["complete"] == true)
    });
    // The file server stops answering; another node writes a new run
    // meanwhile. The daemon's next look at the mount blocks in the kernel.
    fs.freeze();
    committed_copy("0.31.0", "finished", &backing);
    wait_until(
        Duration::from_secs(20),
        "status to say the loop stalled",
        || status_json(&home)["daemon"]["loop_stalled_since"].is_string(),
    );
    for i in 0..4 {
        assert_alive(&daemon, &home, &format!("sample {i}"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let second = start_daemon(
        &server,
        &home,
        &[&mountpoint],
        &["--no-slurm", "--wait"],
        &[],
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lease_holder(&home), daemon.pid(), "the lease changed hands");
    drop(second);
    assert!(
        daemon.log_text().contains("loop has not turned"),
        "{}",
        daemon.log_text()
    );
    // SIGTERM: the keeper gives up the lease and the heartbeat and ends the
    // process within 2 s (+5 s grace). One case the kernel decides instead:
    // a request the FUSE server had already read when it was stopped is
    // waited for uninterruptibly (no signal, not even SIGKILL, ends that
    // thread), so the process ends only once the server answers. Then the
    // keeper must still have let go of everything in time.
    let mut daemon = daemon;
    let pid = daemon.pid();
    let started = Instant::now();
    match daemon.term_within(Duration::from_secs(7)) {
        Some(status) => {
            assert!(status.success(), "{status:?}");
            eprintln!(
                "SIGTERM with the loop stuck on a hung mount: exited after {:?}",
                started.elapsed()
            );
        }
        None => {
            let log = daemon.log_text();
            assert!(log.contains("exiting without it"), "{log}");
            assert!(
                threads_in_uninterruptible_wait(pid),
                "the daemon did not exit, and no thread of it is held by the kernel:\n{log}"
            );
            // Released: the lease file is gone (or no longer this daemon's).
            let lease = std::fs::read(home.join("state/lease.json"))
                .ok()
                .map(|bytes| serde_json::from_slice::<Value>(&bytes).unwrap());
            assert!(
                lease.as_ref().is_none_or(|l| l["pid"] != pid),
                "the lease was given up: {lease:?}"
            );
            fs.thaw();
            let status = daemon
                .exit_within(Duration::from_secs(10))
                .expect("the daemon ends once the mount answers");
            assert!(status.success(), "{status:?}");
            eprintln!("SIGTERM with a request held by the kernel: exited once the mount answered");
        }
    }
    assert!(
        !home.join("state/daemon.json").exists(),
        "the heartbeat of a daemon that exited is gone"
    );

    // The file server answers again: the new run arrives, the first is not
    // sent again.
    fs.thaw();
    let daemon = start_daemon(&server, &home, &[&mountpoint], &["--no-slurm"], &[]);
    wait_until(Duration::from_secs(30), "the run written meanwhile", || {
        server
            .run("fxfinish")
            .is_some_and(|r| r["complete"] == true)
    });
    let first = server.run("fxexit03").unwrap();
    assert_eq!(
        first["history_lines_received"].as_u64().unwrap() as usize,
        first["history"].as_array().unwrap().len(),
        "the first run was not sent again"
    );
    assert_eq!(server.run("fxfinish").unwrap()["gaps"], 0);
    daemon.stop();
    drop(fs);
}
