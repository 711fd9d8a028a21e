//! `syncd sync` next to the official `wandb sync`, on the same runs, against
//! the same local W&B-protocol test server, in one run:
//!
//! ```sh
//! cargo bench --bench sync     # needs the wandb 0.31.0 venv scripts/test.sh installs
//! ```
//!
//! Corpus (written once by the real wandb 0.31.0 and cached under
//! `target/tmp/bench-sync`): 20 runs of 5,000 steps and one of 500,000
//! (`SYNCD_BENCH_BIG_STEPS` to change). Printed per scenario and tool: wall
//! time, peak RSS (the whole process tree's VmRSS and the tool's own
//! process's VmHWM, sampled every 10 ms), bytes the server received, and the ratios. Then
//! the growing run: a run written over time, synced every second by each
//! tool; bytes sent in all against the run's own size. Not a pass/fail test.

// The test suite's server; the bench uses part of its API.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/wandb_server/mod.rs"]
mod wandb_server;

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::status_kb;
use wandb_server::WandbServer;

fn main() {
    let venv = venv();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-sync");
    std::fs::create_dir_all(&work).unwrap();
    let big_steps: u64 = env_or("SYNCD_BENCH_BIG_STEPS", 500_000);
    let small = corpus(&venv, &work.join("corpus-20x5000"), 20, 5_000);
    let big = corpus(
        &venv,
        &work.join(format!("corpus-1x{big_steps}")),
        1,
        big_steps,
    );
    println!(
        "corpus: {} ({} MB), {} ({} MB)",
        small.display(),
        mb(du(&small)),
        big.display(),
        mb(du(&big))
    );
    println!();
    println!(
        "{:<26} {:>8} {:>10} {:>10} {:>12} {:>11}",
        "scenario / tool", "wall s", "tree RSS", "own RSS", "sent MB", "server CPU"
    );
    for (label, source) in [
        ("20 runs x 5,000 steps", &small),
        (&*format!("1 run x {big_steps} steps"), &big),
    ] {
        let official = measure(&work, source, Tool::Official(&venv));
        let ours = measure(&work, source, Tool::Syncd);
        for (name, m) in [("wandb sync", &official), ("syncd sync", &ours)] {
            println!(
                "{:<26} {:>8.2} {:>7.1} MB {:>7.1} MB {:>12.1} {:>10.2}s",
                format!("{label}: {name}"),
                m.wall,
                mb(m.tree_rss),
                mb(m.max_rss),
                mb(m.bytes),
                m.server_cpu
            );
        }
        println!(
            "{:<26} {:>8.2}x {:>9.2}x {:>9.2}x {:>11.2}x",
            format!("{label}: syncd/official"),
            ours.wall / official.wall,
            ours.tree_rss as f64 / official.tree_rss as f64,
            ours.max_rss as f64 / official.max_rss as f64,
            ours.bytes as f64 / official.bytes as f64
        );
    }
    println!();
    growing(&venv, &work);
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
    tree_rss: u64,
    max_rss: u64,
    bytes: u64,
    server_cpu: f64,
}

/// One tool on a fresh copy of `source` against a fresh server.
fn measure(work: &Path, source: &Path, tool: Tool) -> Measured {
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
    let mut cmd = command(&tool, &server, &scratch, &copy, &runs);
    let cpu_before = self_cpu();
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tree_rss, max_rss) = wait_sampling(child);
    let wall = started.elapsed().as_secs_f64();
    let server_cpu = self_cpu() - cpu_before;
    let bytes = server.snapshot()["counters"]["bytes_received"]
        .as_u64()
        .unwrap();
    Measured {
        wall,
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
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncd"));
            cmd.arg("sync")
                .arg("--state-dir")
                .arg(scratch.join("state"))
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

/// CPU seconds (user + system) of this process: the test server's work.
fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Waits for `child`, sampling its process tree every 10 ms. Returns (peak
/// of the tree's summed VmRSS, the child's own VmHWM) in bytes. (`wait4`'s
/// ru_maxrss is no use here: a child inherits the parent's high-water mark
/// at fork, and this process holds the test server's data.)
fn wait_sampling(mut child: Child) -> (u64, u64) {
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
    child.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (peak.load(Ordering::Relaxed), own.load(Ordering::Relaxed))
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
