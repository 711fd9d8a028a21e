//! `syncd sync` next to the official `wandb sync`, on the same runs, against
//! the same local W&B-protocol test server, in one run:
//!
//! ```sh
//! cargo bench --bench sync     # needs the wandb 0.31.0 venv scripts/test.sh installs
//! ```
//!
//! Corpus (written once by the real wandb 0.31.0 and cached under
//! `target/tmp/bench-sync`): 20 runs of 5,000 steps and one of 300,000
//! (`SYNCD_BENCH_BIG_STEPS` to change). Scenarios: both corpora on
//! loopback, and the 20 runs with a round trip added (50 ms,
//! `SYNCD_BENCH_RTT_MS`) by a delaying proxy in front of the server, both
//! tools through it (what a login node talking to a cloud server sees).
//! Printed per scenario and tool: wall time, the tool's CPU time (user +
//! system, its children included), peak RSS (the whole process tree's
//! VmRSS and the tool's own process's VmHWM, sampled every 10 ms), bytes
//! the server received, the server's CPU, and the ratios; the load average
//! before and after (the machine may be shared). Then the growing run: a run
//! written over time, synced every second by each tool; bytes sent in all
//! against the run's own size. Not a pass/fail test.
//!
//! `SYNCD_BENCH_CASES` picks scenarios (comma-separated: `small`, `big`,
//! `rtt`, `growing`; all by default), `SYNCD_BENCH_REPEAT` measures each
//! tool that many times and prints the median wall, `SYNCD_BENCH_SYNCD_ARGS`
//! adds arguments to `syncd sync` (e.g. `-j 8`), `SYNCD_BENCH_BIN` runs
//! another build of syncd (to compare builds), `SYNCD_BENCH_WRAP` runs it
//! under a tool (e.g. `heaptrack -o FILE`), `SYNCD_BENCH_OFFICIAL=0` leaves
//! the official client out.

// The test suite's server; the bench uses part of its API.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/wandb_server/mod.rs"]
mod wandb_server;

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::status_kb;
use wandb_server::WandbServer;

fn main() {
    let venv = venv();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-sync");
    std::fs::create_dir_all(&work).unwrap();
    let cases =
        std::env::var("SYNCD_BENCH_CASES").unwrap_or_else(|_| "small,big,rtt,growing".into());
    let case = |name: &str| cases.split(',').any(|c| c.trim() == name);
    let big_steps: u64 = env_or("SYNCD_BENCH_BIG_STEPS", 300_000);
    let rtt = Duration::from_millis(env_or("SYNCD_BENCH_RTT_MS", 50));
    let small = corpus(&venv, &work.join("corpus-20x5000"), 20, 5_000);
    let big = case("big").then(|| {
        corpus(
            &venv,
            &work.join(format!("corpus-1x{big_steps}")),
            1,
            big_steps,
        )
    });
    println!("corpus: {} ({} MB)", small.display(), mb(du(&small)));
    if let Some(big) = &big {
        println!("corpus: {} ({} MB)", big.display(), mb(du(big)));
    }
    println!("load average before: {}", load_average());
    println!();
    println!(
        "{:<34} {:>8} {:>8} {:>10} {:>10} {:>9} {:>11}",
        "scenario / tool", "wall s", "CPU s", "tree RSS", "own RSS", "sent MB", "server CPU"
    );
    let small_label = "20 runs x 5,000 steps".to_string();
    let rtt_label = format!("20 x 5,000, +{} ms RTT", rtt.as_millis());
    let big_label = format!("1 run x {big_steps} steps");
    let mut scenarios: Vec<(&str, &Path, Option<Duration>)> = Vec::new();
    if case("small") {
        scenarios.push((&small_label, &small, None));
    }
    if let Some(big) = &big {
        scenarios.push((&big_label, big, None));
    }
    if case("rtt") {
        scenarios.push((&rtt_label, &small, Some(rtt)));
    }
    let with_official = env_or("SYNCD_BENCH_OFFICIAL", 1) != 0;
    for (label, source, delay) in scenarios {
        let ours = measure_median(&work, source, Tool::Syncd, delay);
        let Some(official) =
            with_official.then(|| measure_median(&work, source, Tool::Official(&venv), delay))
        else {
            print_measured(&format!("{label}: syncd sync"), &ours);
            continue;
        };
        for (name, m) in [("wandb sync", &official), ("syncd sync", &ours)] {
            print_measured(&format!("{label}: {name}"), m);
        }
        println!(
            "{:<34} {:>7.2}x {:>7.2}x {:>9.2}x {:>9.2}x {:>8.2}x",
            format!("{label}: syncd/official"),
            ours.wall / official.wall,
            ours.cpu / official.cpu,
            ours.tree_rss as f64 / official.tree_rss as f64,
            ours.max_rss as f64 / official.max_rss as f64,
            ours.bytes as f64 / official.bytes as f64
        );
        println!(
            "{:<34} {:>7.2}x",
            format!("{label}: syncd wall/CPU"),
            ours.wall / ours.cpu
        );
    }
    println!("load average after: {}", load_average());
    if case("growing") {
        println!();
        growing(&venv, &work);
    }
}

fn print_measured(label: &str, m: &Measured) {
    println!(
        "{:<34} {:>8.2} {:>8.2} {:>7.1} MB {:>7.1} MB {:>9.1} {:>10.2}s",
        label,
        m.wall,
        m.cpu,
        mb(m.tree_rss),
        mb(m.max_rss),
        mb(m.bytes),
        m.server_cpu
    );
}

/// `/proc/loadavg`'s three averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn venv() -> PathBuf {
    let dir = std::env::var_os("SYNCD_WANDB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/syncd-test/venv-wandb-0.31.0")
        });
    assert!(
        dir.join("bin/wandb").is_file(),
        "no wandb venv at {} (run scripts/test.sh once)",
        dir.display()
    );
    dir
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            du(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn writer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wandb/live_writer.py")
}

/// `runs` real runs of `steps` steps each, written once (two at a time).
fn corpus(venv: &Path, dir: &Path, runs: usize, steps: u64) -> PathBuf {
    if dir.join(".complete").exists() {
        return dir.join("wandb");
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    eprintln!("writing {runs} run(s) of {steps} steps with the real wandb (once)...");
    for pair in (0..runs).collect::<Vec<_>>().chunks(2) {
        let children: Vec<Child> = pair
            .iter()
            .map(|i| {
                Command::new(venv.join("bin/python"))
                    .arg(writer_script())
                    .args([
                        "--dir",
                        dir.to_str().unwrap(),
                        "--id",
                        &format!("bench{i:03}"),
                    ])
                    .args(["--steps", &steps.to_string(), "--metrics", "10"])
                    .env("HOME", dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
    }
    std::fs::write(dir.join(".complete"), b"").unwrap();
    dir.join("wandb")
}

enum Tool<'a> {
    Official(&'a Path),
    Syncd,
}

struct Measured {
    wall: f64,
    /// The tool's user + system time, its children's included.
    cpu: f64,
    tree_rss: u64,
    max_rss: u64,
    bytes: u64,
    server_cpu: f64,
}

/// [`measure`] `SYNCD_BENCH_REPEAT` times (default 1); the one with the
/// median wall time.
fn measure_median(work: &Path, source: &Path, tool: Tool, rtt: Option<Duration>) -> Measured {
    let repeat = env_or("SYNCD_BENCH_REPEAT", 1).max(1);
    let mut all: Vec<Measured> = (0..repeat)
        .map(|_| measure(work, source, &tool, rtt))
        .collect();
    all.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    all.swap_remove(all.len() / 2)
}

/// One tool on a fresh copy of `source` against a fresh server, through a
/// proxy adding `rtt` to every round trip when given.
fn measure(work: &Path, source: &Path, tool: &Tool, rtt: Option<Duration>) -> Measured {
    let scratch = work.join("scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    // A copy: the official client writes markers into run directories.
    let copy = scratch.join("wandb");
    let status = Command::new("cp")
        .arg("-a")
        .arg(source)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let runs: Vec<PathBuf> = std::fs::read_dir(&copy)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("offline-run-")
        })
        .collect();
    let server = WandbServer::start();
    let proxy = rtt.map(|rtt| DelayProxy::start(server.addr(), rtt));
    if let Some(proxy) = &proxy {
        server.set_upload_port(proxy.addr.port());
    }
    let base_url = match &proxy {
        Some(proxy) => format!("http://{}", proxy.addr),
        None => server.base_url(),
    };
    let mut cmd = command(tool, &server, &scratch, &copy, &runs);
    cmd.env("WANDB_BASE_URL", &base_url);
    if matches!(tool, Tool::Syncd) {
        cmd = wrapped(cmd);
    }
    let cpu_before = self_cpu();
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tree_rss, max_rss, cpu) = wait_sampling(child);
    let wall = started.elapsed().as_secs_f64();
    // The proxy's work is on this process too.
    drop(proxy);
    let server_cpu = self_cpu() - cpu_before;
    let bytes = server.snapshot()["counters"]["bytes_received"]
        .as_u64()
        .unwrap();
    Measured {
        wall,
        cpu,
        tree_rss,
        max_rss,
        bytes,
        server_cpu,
    }
}

fn command(
    tool: &Tool,
    server: &WandbServer,
    scratch: &Path,
    wandb_dir: &Path,
    runs: &[PathBuf],
) -> Command {
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = match tool {
        Tool::Official(venv) => {
            let mut cmd = Command::new(venv.join("bin/wandb"));
            cmd.args(["sync", "--include-synced"]).args(runs);
            cmd
        }
        Tool::Syncd => {
            let bin = std::env::var_os("SYNCD_BENCH_BIN")
                .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_syncd")), PathBuf::from);
            let mut cmd = Command::new(bin);
            cmd.arg("sync")
                .arg("--state-dir")
                .arg(scratch.join("state"))
                .args(
                    std::env::var("SYNCD_BENCH_SYNCD_ARGS")
                        .unwrap_or_default()
                        .split_whitespace(),
                )
                .arg(wandb_dir);
            cmd
        }
    };
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WANDB_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("HOME", &home)
        .env("TMPDIR", &home)
        .env("WANDB_BASE_URL", server.base_url())
        .env("WANDB_API_KEY", server.api_key())
        .env("WANDB_ERROR_REPORTING", "false");
    cmd
}

/// `cmd` under `SYNCD_BENCH_WRAP`'s tool (e.g. `heaptrack -o FILE`), if set.
fn wrapped(cmd: Command) -> Command {
    let Ok(wrap) = std::env::var("SYNCD_BENCH_WRAP") else {
        return cmd;
    };
    let mut words = wrap.split_whitespace();
    let mut outer = Command::new(words.next().expect("SYNCD_BENCH_WRAP names a tool"));
    outer
        .args(words)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => outer.env(name, value),
            None => outer.env_remove(name),
        };
    }
    outer
}

/// CPU seconds (user + system) of this process: the test server's work.
fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Waits for `child`, sampling its process tree every 10 ms. Returns (peak
/// of the tree's summed VmRSS, the child's own VmHWM) in bytes, and its CPU
/// seconds (user + system, of the children it waited for too). (`wait4`'s
/// ru_maxrss is no use here: a child inherits the parent's high-water mark
/// at fork, and this process holds the test server's data.)
fn wait_sampling(child: Child) -> (u64, u64, f64) {
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let own = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak, own) = (done.clone(), peak.clone(), own.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss(pid), Ordering::Relaxed);
                own.fetch_max(status_kb(pid, "VmHWM:") * 1024, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let cpu = wait_cpu(child);
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (
        peak.load(Ordering::Relaxed),
        own.load(Ordering::Relaxed),
        cpu,
    )
}

/// Reaps `child`; its CPU seconds.
fn wait_cpu(child: Child) -> f64 {
    let mut status = 0;
    // SAFETY: wait4 fills the struct we pass; the child is ours and not
    // waited for elsewhere.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that adds a round trip
/// time: every byte is delivered half of it later in each direction, and a
/// new connection's first bytes a whole one later still (its handshake).
/// Latency only: bytes in flight do not wait for each other.
struct DelayProxy {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl DelayProxy {
    fn start(upstream: SocketAddr, rtt: Duration) -> DelayProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("delay-proxy")
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let opened = tokio::time::Instant::now();
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let half = rtt / 2;
                    tokio::spawn(delayed_pipe(
                        client_read,
                        server_write,
                        half,
                        opened + rtt + half,
                    ));
                    tokio::spawn(delayed_pipe(server_read, client_write, half, opened));
                });
            }
        });
        DelayProxy {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Copies `from` to `to`, each piece `delay` after it was read and not
/// before `not_before`; the end of `from` is passed on the same way.
async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    not_before: tokio::time::Instant,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let due = (tokio::time::Instant::now() + delay).max(not_before);
            // An empty piece is the end.
            if tx.send((due, buf[..n].to_vec())).is_err() || n == 0 {
                break;
            }
        }
    });
    while let Some((due, piece)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if piece.is_empty() || to.write_all(&piece).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}

/// Sum of VmRSS over `pid` and its descendants.
fn tree_rss(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += status_kb(p, "VmRSS:") * 1024;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    total
}

/// A run written over ~20 s, synced every second by each tool (the official
/// client on a snapshot copy each time, as a tmux loop would), then once
/// after it ends. Bytes sent in all, against one sync of the finished run.
fn growing(venv: &Path, work: &Path) {
    let dir = work.join("growing");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut writer = Command::new(venv.join("bin/python"))
        .arg(writer_script())
        .args([
            "--dir",
            dir.to_str().unwrap(),
            "--id",
            "benchgrow",
            "--steps",
            "20000",
            "--sleep",
            "0.001",
        ])
        .env("HOME", &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ours = WandbServer::start();
    let official = WandbServer::start();
    let wandb_dir = dir.join("wandb");
    let mut rounds = 0;
    let mut run_until_done = |last: bool| {
        let runs: Vec<PathBuf> = std::fs::read_dir(&wandb_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("offline-run-")
            })
            .collect();
        if runs.is_empty() {
            return;
        }
        let scratch = dir.join(format!("round-{rounds}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let mut cmd = command(&Tool::Syncd, &ours, &dir, &wandb_dir, &runs);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let copy = scratch.join("wandb");
        Command::new("cp")
            .arg("-a")
            .arg(&wandb_dir)
            .arg(&copy)
            .status()
            .unwrap();
        let copies: Vec<PathBuf> = runs
            .iter()
            .map(|r| copy.join(r.file_name().unwrap()))
            .collect();
        let mut cmd = command(&Tool::Official(venv), &official, &scratch, &copy, &copies);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        rounds += 1;
        let _ = last;
    };
    while writer.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_secs(1));
        run_until_done(false);
    }
    run_until_done(true);
    // The run's own size: one sync of the finished run by each tool.
    let once_ours = WandbServer::start();
    let scratch = dir.join("once");
    std::fs::create_dir_all(&scratch).unwrap();
    command(&Tool::Syncd, &once_ours, &scratch, &wandb_dir, &[])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let sent = |s: &WandbServer| s.snapshot()["counters"]["bytes_received"].as_u64().unwrap();
    let lines = |s: &WandbServer| {
        s.run("benchgrow")
            .map_or(0, |r| r["history"].as_array().unwrap().len())
    };
    let own = sent(&once_ours);
    println!(
        "growing run (20,000 steps written over time, {rounds} syncs by each tool while it grew and after):"
    );
    println!(
        "  syncd sync:  {:>8.1} MB sent, {:.3}x the run's own {:.1} MB; {} history lines on the server",
        mb(sent(&ours)),
        sent(&ours) as f64 / own as f64,
        mb(own),
        lines(&ours)
    );
    println!(
        "  wandb sync:  {:>8.1} MB sent, {:.3}x; {} history lines on the server (duplicates)",
        mb(sent(&official)),
        sent(&official) as f64 / own as f64,
        lines(&official)
    );
}
