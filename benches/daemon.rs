//! `syncd run` on a login-node-like load, against the local W&B-protocol
//! test server:
//!
//! ```sh
//! cargo bench --bench daemon                               # 180 s window
//! SYNCD_BENCH_SECONDS=20 SYNCD_BENCH_RUNS=300 cargo bench --bench daemon   # smoke
//! ```
//!
//! 10,000 finished runs (`SYNCD_BENCH_RUNS`; written once with our own
//! `LogWriter` on every core, cached under `target/tmp/bench-daemon`) are
//! synced once with `syncd sync -j 16` (`SYNCD_BENCH_JOBS`); then
//! `syncd run --no-slurm --poll 5s` (`SYNCD_BENCH_POLL`)
//! watches them while this process appends one history record a second to
//! each of 50 live runs (`SYNCD_BENCH_LIVE`) for `SYNCD_BENCH_SECONDS`
//! (default 180). Printed: the daemon's CPU (whole window, last 60 s), peak
//! RSS, syscalls per poll cycle (`strace -c` for 30 s after the window, appends
//! going on), and freshness (write to the line being on the server), plain
//! and, for 10 s at the end, with `syncd notify` after each write of a few
//! runs. The daemon is started twice: the first start finds every run and
//! writes its settled-run index (its start-up is printed too), the second,
//! measured throughout, starts from that index as every later start does.
//! Start-up is timed from spawn to the first heartbeat file and to the end
//! of the first full scan (the "watching" line). Not a pass/fail test.
//!
//! The figures at 100,000 settled runs and 200 live ones:
//!
//! ```sh
//! SYNCD_BENCH_RUNS=100000 SYNCD_BENCH_LIVE=200 cargo bench --bench daemon
//! ```
//!
//! `SYNCD_BENCH_BIN` runs another build of `syncd` (e.g. an older one, copied
//! away) against the same tree, for before/after figures.
//!
//! `SYNCD_BENCH_WRAP` runs the daemon under a tool, e.g.
//! `SYNCD_BENCH_WRAP="heaptrack -o /tmp/daemon"` for where its memory goes
//! (the figures are then the daemon's under that tool; it is found by the
//! pid in its lease).

// The test suite's server; the bench uses part of its API.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/wandb_server/mod.rs"]
mod wandb_server;

mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::status_kb;
use prost::Message;
use syncd::discover::{RootSpec, Scanner};
use syncd::source::wandb::framing::LogWriter;
use syncd::source::wandb::proto::{
    HistoryItem, HistoryRecord, HistoryStep, Record, RecordType, RunExitRecord, RunRecord,
    Timestamp,
};
use wandb_server::WandbServer;

const STRACE_SECS: u64 = 30;
const TRIGGER_SECS: u64 = 10;
/// Live runs whose appends are followed by `syncd notify` in the trigger phase.
const TRIGGERED_RUNS: usize = 5;
/// The daemon's default `--idle-poll`: a full scan of every run this often.
const IDLE_POLL: u64 = 120;

/// What a history line's freshness is counted as.
#[derive(Clone, Copy)]
enum Kind {
    Plain = 0,
    /// Written while strace slowed the daemon down: not reported.
    Straced = 1,
    Notified = 2,
}

fn main() {
    let runs = env_or("SYNCD_BENCH_RUNS", 10_000) as usize;
    let live_n = env_or("SYNCD_BENCH_LIVE", 50) as usize;
    let window = env_or("SYNCD_BENCH_SECONDS", 180).max(2);
    let poll = env_or("SYNCD_BENCH_POLL", 5);
    let jobs = env_or("SYNCD_BENCH_JOBS", 16).clamp(1, 64);
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-daemon");
    let root = finished_tree(&work, runs);
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        if entry.file_name().to_string_lossy().contains("-live") {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    let scratch = work.join(format!("scratch-{runs}"));
    let _ = std::fs::remove_dir_all(&scratch);
    let state = scratch.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let server = WandbServer::start();

    // 1. Everything finished is synced once, as by a first `syncd sync`.
    let (cpu0, started) = (cpu_usage(libc::RUSAGE_CHILDREN), Instant::now());
    let status = syncd(&server, &scratch)
        .args(["sync", "-j", &jobs.to_string(), "--state-dir"])
        .arg(&state)
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(File::create(scratch.join("presync.log")).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "pre-sync failed: {}", scratch.display());
    let presync_cpu = cpu_usage(libc::RUSAGE_CHILDREN) - cpu0;
    let presync = started.elapsed().as_secs_f64();
    assert!(server.run(&format!("r{runs:05}")).is_some());

    // 2. The live runs (run record only so far), and the scanner's own count.
    let lives: Vec<Live> = (0..live_n).map(|i| Live::create(&root, i)).collect();
    let scanned = scanner_syscalls(&root, &state, &lives);

    // 3. The daemon, twice: the first start finds every run and writes
    // its settled-run index, the second (the one measured from then on)
    // starts from that index, as every start after the first does.
    let poll_arg = format!("{poll}s");
    let start_daemon = |log: &Path| -> Started {
        let _ = std::fs::remove_file(state.join("daemon.json"));
        let mut cmd = syncd(&server, &scratch);
        cmd.args(["run", "--no-slurm", "--poll", &poll_arg, "--state-dir"])
            .arg(&state)
            .arg(&root);
        started_daemon(wrapped(cmd), &state, log)
    };
    let cold = start_daemon(&scratch.join("daemon-first.log"));
    let cold_stop = cold
        .daemon
        .stop(cold.pid, libc::SIGTERM, Duration::from_secs(15));
    let Started {
        daemon,
        pid,
        first_beat,
        wall: startup_wall,
        cpu: startup_cpu,
        hwm: hwm_startup,
    } = start_daemon(&scratch.join("daemon.log"));
    let startup = (startup_wall, startup_cpu);
    let up = Instant::now();
    let full_polls = |a: Instant, b: Instant| {
        let at = |k: u64| up + Duration::from_secs(IDLE_POLL * k);
        (1..100).filter(|&k| at(k) >= a && at(k) < b).count()
    };

    // 4. The window: appends, freshness, CPU.
    let mut bench = Bench {
        lives,
        server: &server,
        lat: Default::default(),
    };
    let start = Instant::now();
    for (i, live) in bench.lives.iter_mut().enumerate() {
        live.next = start + Duration::from_millis(1000 * i as u64 / live_n as u64);
    }
    let (cpu_start, self_start) = (proc_cpu(pid), cpu_usage(libc::RUSAGE_SELF));
    let tail = window.min(60);
    let (mid, end) = (
        start + Duration::from_secs(window - tail),
        start + Duration::from_secs(window),
    );
    bench.drive(mid, Kind::Plain, None);
    let cpu_mid = proc_cpu(pid);
    bench.drive(end, Kind::Plain, None);
    let cpu_end = proc_cpu(pid);
    let self_cpu = 100.0 * (cpu_usage(libc::RUSAGE_SELF) - self_start) / window as f64;
    let (hwm, rss) = (status_kb(pid, "VmHWM:"), status_kb(pid, "VmRSS:"));

    // strace for 30 s, then appends followed by `syncd notify`.
    let strace_start = Instant::now();
    let strace = strace_counts(pid, &mut bench);
    let strace_fulls = full_polls(strace_start, Instant::now());
    let notify = |dir: &Path| {
        let mut cmd = syncd(&server, &scratch);
        let status = cmd.arg("notify").arg(dir).arg("--state-dir").arg(&state);
        assert!(status.status().unwrap().success());
    };
    let last = Instant::now() + Duration::from_secs(TRIGGER_SECS);
    bench.drive(last, Kind::Plain, Some(&notify));
    // Stragglers get a poll interval and some.
    for live in &mut bench.lives {
        live.next = last + Duration::from_secs(3600);
    }
    let pending = |b: &Bench| b.lives.iter().map(|l| l.written.len() - l.seen).sum();
    while pending(&bench) > 0 && last.elapsed().as_secs() < poll + 10 {
        bench.drive(Instant::now() + Duration::from_secs(1), Kind::Plain, None);
    }
    let unseen: usize = pending(&bench);
    let written: usize = bench.lives.iter().map(|l| l.written.len()).sum();
    let stopped = daemon.stop(pid, libc::SIGTERM, Duration::from_secs(15));

    // 5. Figures.
    println!("syncd run: {runs} synced + {live_n} live runs, --poll {poll}s, window {window} s");
    println!(
        "pre-sync (syncd sync -j {jobs}, {runs} runs): {presync:.1} s wall, {presync_cpu:.1} s CPU"
    );
    println!(
        "first start (no settled-run index yet): first full scan done {:.2} s wall, {:.2} s CPU; \
         peak RSS then {:.1} MB; exit: {cold_stop}",
        cold.wall, cold.cpu, cold.hwm
    );
    println!(
        "start-up: first heartbeat {first_beat:.2} s; first full scan done {:.2} s wall, {:.2} s CPU; \
         peak RSS then {hwm_startup:.1} MB",
        startup.0, startup.1
    );
    println!(
        "appends: {written} history records, {unseen} never seen on the server; bench process \
         (writer + server + checks): {self_cpu:.1} % of a core; daemon exit: {stopped}"
    );
    println!("{:<48} {:>22}  goal", "figure", "measured");
    let row = |name: String, value: String, goal: &str| println!("{name:<48} {value:>22}  {goal}");
    let cpu = |a: f64, secs: u64| format!("{:.2} % of a core", 100.0 * (cpu_end - a) / secs as f64);
    let fulls = |a, b| match full_polls(a, b) {
        0 => String::new(),
        n => format!(", {n} full poll"),
    };
    let name = "start-up (spawn to first full scan done)";
    row(name.into(), format!("{:.2} s", startup.0), "<= 2 s");
    row(
        format!("CPU, whole window ({window} s{})", fulls(start, end)),
        cpu(cpu_start, window),
        "<= 0.5 %",
    );
    let name = format!(
        "CPU, last {tail} s (only live runs change{})",
        fulls(mid, end)
    );
    row(name, cpu(cpu_mid, tail), "<= 0.5 %");
    let (hwm, rss) = (hwm as f64 / 1024.0, rss as f64 / 1024.0);
    let name = "peak RSS (VmHWM, with start-up) / RSS at end";
    row(name.into(), format!("{hwm:.1} / {rss:.1} MB"), "<= 40 MB");
    let name =
        format!("syscalls per poll cycle (strace {STRACE_SECS} s, {strace_fulls} full poll)");
    match &strace {
        Ok((calls, _)) => {
            let per_cycle = *calls as f64 * poll as f64 / STRACE_SECS as f64;
            let per_sec = *calls as f64 / STRACE_SECS as f64;
            row(name, format!("{per_cycle:.0} ({per_sec:.0}/s)"), "")
        }
        Err(why) => row(name, "skipped".into(), why),
    }
    let counts = format!("{} / {}", scanned.0, scanned.1);
    row("scanner's own count, fast / full poll".into(), counts, "");
    let full_cpu = format!("{:.1} ms", scanned.2 * 1000.0);
    row("CPU of one full poll (scanner alone)".into(), full_cpu, "");
    let [plain, _, notified] = &mut bench.lat;
    row(
        format!("freshness p50 / p95 / max (n={})", plain.len()),
        percentiles(plain),
        &format!("p50 <= {} s", poll + 1),
    );
    let name = format!("freshness, notify p50 / p95 / max (n={})", notified.len());
    row(name, percentiles(notified), "p50 <= 1 s");
    if let Ok((_, top)) = &strace {
        println!("strace -c -f, top syscalls by calls over {STRACE_SECS} s:\n{top}");
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process, killed if still running when dropped (also on panic).
struct Proc(Child);

/// A daemon whose first full scan is done.
struct Started {
    daemon: Proc,
    /// The daemon's (under a wrapper, not the child's).
    pid: u32,
    /// Seconds from spawn to its first heartbeat file.
    first_beat: f64,
    /// Seconds from spawn to its "watching" line, and its CPU seconds then.
    wall: f64,
    cpu: f64,
    /// Its peak RSS then, MB.
    hwm: f64,
}

/// Spawns `cmd` (`syncd run` with `state`, logging to `log`) and waits for
/// the end of its first full scan (its "watching" line).
fn started_daemon(mut cmd: Command, state: &Path, log: &Path) -> Started {
    cmd.stdout(Stdio::null()).stderr(File::create(log).unwrap());
    let spawned = Instant::now();
    let daemon = Proc(cmd.spawn().unwrap());
    // The heartbeat file (`engine::heartbeat`), as `syncd status` reads it.
    let beat = state.join("daemon.json");
    let mut first_beat = None;
    loop {
        if first_beat.is_none() && beat.exists() {
            first_beat = Some(spawned.elapsed().as_secs_f64());
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("syncd run: watching") {
            break;
        }
        assert!(spawned.elapsed().as_secs() < 600, "see {}", log.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = lease_holder(state);
    let wall = spawned.elapsed().as_secs_f64();
    Started {
        daemon,
        pid,
        first_beat: first_beat.unwrap_or(wall),
        wall,
        cpu: proc_cpu(pid),
        hwm: status_kb(pid, "VmHWM:") as f64 / 1024.0,
    }
}

impl Proc {
    /// Sends `signal` to `pid` (the child, or the daemon under a wrapper)
    /// and waits up to `limit` for the child's exit.
    fn stop(mut self, pid: u32, signal: i32, limit: Duration) -> String {
        // SAFETY: a signal to our child or its descendant; neither is reaped
        // while the child runs.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        "did not stop in time (killed)".into()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `cmd` under `SYNCD_BENCH_WRAP`'s tool, if set.
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

/// The daemon's pid, from its lease.
fn lease_holder(state: &Path) -> u32 {
    let text = std::fs::read_to_string(state.join("lease.json")).expect("the daemon's lease");
    let lease: serde_json::Value = serde_json::from_str(&text).expect("lease JSON");
    lease["pid"].as_u64().expect("a pid in the lease") as u32
}

/// `syncd` with the server's URL and key and a private home.
fn syncd(server: &WandbServer, scratch: &Path) -> Command {
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let bin = std::env::var_os("SYNCD_BENCH_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_syncd")), PathBuf::from);
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("WANDB_") || text.starts_with("SYNCD_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env_remove("NOTIFY_SOCKET")
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("WANDB_BASE_URL", server.base_url())
        .env("WANDB_API_KEY", server.api_key());
    cmd
}

fn record(num: i64, record_type: RecordType) -> Vec<u8> {
    let record_type = Some(record_type);
    Record {
        num,
        record_type,
        info: None,
    }
    .encode_to_vec()
}

fn run_record(id: &str, seconds: i64) -> Vec<u8> {
    let run = RunRecord {
        run_id: id.into(),
        project: "bench".into(),
        start_time: Some(Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    };
    record(1, RecordType::Run(run))
}

fn history(step: i64, start: i64) -> Vec<u8> {
    let item = |key: &str, value_json: String| HistoryItem {
        key: String::new(),
        nested_key: vec![key.into()],
        typed: None,
        value_json,
    };
    let item = vec![
        item("_step", step.to_string()),
        item("_runtime", step.to_string()),
        item("_timestamp", (start + step).to_string()),
        item("loss", format!("{}", 1.0 / (step + 1) as f64)),
    ];
    let history = HistoryRecord {
        item,
        step: Some(HistoryStep { num: step }),
    };
    record(2 + step, RecordType::History(history))
}

fn run_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!("offline-run-20260101_000000-{id}"))
}

/// `runs` finished runs (5 history records and an exit record each), written
/// once, on every core (100,000 runs are 200,000 files and directories).
fn finished_tree(work: &Path, runs: usize) -> PathBuf {
    let top = work.join(format!("root-{runs}"));
    let root = top.join("wandb");
    if top.join(".complete").exists() {
        return root;
    }
    let _ = std::fs::remove_dir_all(&top);
    eprintln!(
        "writing {runs} finished runs under {} (once)...",
        root.display()
    );
    std::fs::create_dir_all(&root).unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let root = &root;
            scope.spawn(move || {
                for i in (1..=runs).skip(t).step_by(threads) {
                    write_finished_run(root, i);
                }
            });
        }
    });
    std::fs::write(top.join(".complete"), b"").unwrap();
    root
}

fn write_finished_run(root: &Path, i: usize) {
    let id = format!("r{i:05}");
    let dir = run_dir(root, &id);
    std::fs::create_dir_all(&dir).unwrap();
    let file = File::create(dir.join(format!("run-{id}.wandb"))).unwrap();
    let mut writer = LogWriter::new(BufWriter::new(file)).unwrap();
    let start = 1_790_000_000 + i as i64;
    writer.append(&run_record(&id, start)).unwrap();
    for step in 0..5 {
        writer.append(&history(step, start)).unwrap();
    }
    let exit = RunExitRecord {
        exit_code: 0,
        runtime: 5,
        not_complete: false,
    };
    writer.append(&record(7, RecordType::Exit(exit))).unwrap();
    writer.into_inner().flush().unwrap();
}

/// A run this process appends to, like the legacy writer: every record is in
/// the file when `append` returns (no buffering).
struct Live {
    name: String,
    dir: PathBuf,
    file: PathBuf,
    writer: LogWriter<File>,
    start: i64,
    /// When history line k was written, and how its freshness counts.
    written: Vec<(Instant, Kind)>,
    /// Lines the server is known to have.
    seen: usize,
    next: Instant,
}

impl Live {
    fn create(root: &Path, i: usize) -> Live {
        let name = format!("live{i:04}");
        let dir = run_dir(root, &name);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("run-{name}.wandb"));
        let out = File::options().create(true).append(true).open(&file);
        let mut writer = LogWriter::new(out.unwrap()).unwrap();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        let start = now.unwrap().as_secs() as i64;
        writer.append(&run_record(&name, start)).unwrap();
        let next = Instant::now();
        let (written, seen) = (Vec::new(), 0);
        Live {
            name,
            dir,
            file,
            writer,
            start,
            written,
            seen,
            next,
        }
    }
}

struct Bench<'a> {
    lives: Vec<Live>,
    server: &'a WandbServer,
    /// Freshness in seconds, by [`Kind`].
    lat: [Vec<f64>; 3],
}

impl Bench<'_> {
    /// Appends once a second to each live run (staggered) until `until`,
    /// runs `notify` after each write of the first few runs when given, and
    /// asks the server every 100 ms which lines arrived.
    fn drive(&mut self, until: Instant, kind: Kind, notify: Option<&dyn Fn(&Path)>) {
        let mut next_check = Instant::now();
        while Instant::now() < until {
            for (i, live) in self.lives.iter_mut().enumerate() {
                if Instant::now() < live.next {
                    continue;
                }
                let step = live.written.len() as i64;
                live.writer.append(&history(step, live.start)).unwrap();
                let notify = notify.filter(|_| i < TRIGGERED_RUNS);
                let kind = notify.map_or(kind, |_| Kind::Notified);
                live.written.push((Instant::now(), kind));
                if let Some(notify) = notify {
                    notify(&live.dir);
                }
                live.next += Duration::from_secs(1);
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + Duration::from_millis(100);
                self.check();
            }
            let wake = self.lives.iter().map(|l| l.next).chain([next_check, until]);
            let wait = wake
                .min()
                .unwrap()
                .saturating_duration_since(Instant::now());
            std::thread::sleep(wait.min(Duration::from_millis(20)));
        }
    }

    /// Which of the written lines the server has now.
    fn check(&mut self) {
        for live in self.lives.iter_mut().filter(|l| l.seen < l.written.len()) {
            let lines = (self.server.run(&live.name))
                .and_then(|r| r["stream_files"]["wandb-history.jsonl"].as_u64())
                .unwrap_or(0) as usize;
            let lines = lines.min(live.written.len());
            let now = Instant::now();
            for &(at, kind) in &live.written[live.seen.min(lines)..lines] {
                self.lat[kind as usize].push(now.duration_since(at).as_secs_f64());
            }
            live.seen = live.seen.max(lines);
        }
    }
}

fn percentiles(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    format!("{:.2} / {:.2} / {:.2} s", at(50), at(95), v[v.len() - 1])
}

/// What the scanner counts (directory reads + stats) for one fast poll (root
/// mtime unchanged, live runs' files stat'ed) and one full (idle) poll (the
/// root listed, every run's file stat'ed), and the CPU seconds of the full
/// one (in this process, page cache warm).
fn scanner_syscalls(root: &Path, state: &Path, lives: &[Live]) -> (u64, u64, f64) {
    let uid = std::fs::metadata(state).unwrap().uid();
    let mut scanner = Scanner::new(vec![RootSpec(root.display().to_string())], uid);
    let all = scanner.scan_roots(true).new_files;
    let mut fast = scanner.scan_roots(false);
    scanner.check_files(lives.iter().map(|l| &l.file), &mut fast);
    let cpu = cpu_usage(libc::RUSAGE_THREAD);
    let mut full = scanner.scan_roots(true);
    scanner.check_files(&all, &mut full);
    let full_cpu = cpu_usage(libc::RUSAGE_THREAD) - cpu;
    (fast.syscalls, full.syscalls, full_cpu)
}

/// CPU seconds (user + system) of `pid`, from /proc/<pid>/stat.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU seconds (user + system) of this process or its waited-for children.
fn cpu_usage(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// `strace -c -f -p <pid>` for STRACE_SECS while appends go on: the total
/// calls and the top rows by calls.
fn strace_counts(pid: u32, bench: &mut Bench) -> Result<(u64, String), &'static str> {
    let out = std::env::temp_dir().join(format!("syncd-bench-strace-{}", std::process::id()));
    let child = Command::new("strace")
        .args(["-c", "-f", "-S", "calls", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        return Err("strace not installed (apt-get install -y strace)");
    };
    let strace = Proc(child);
    bench.drive(
        Instant::now() + Duration::from_secs(STRACE_SECS),
        Kind::Straced,
        None,
    );
    let strace_pid = strace.0.id();
    strace.stop(strace_pid, libc::SIGINT, Duration::from_secs(10));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let rows: Vec<&str> = (text.lines())
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .filter(|l| !l.ends_with(" total"))
        .collect();
    if rows.is_empty() {
        return Err("strace counted nothing (ptrace not permitted?)");
    }
    let calls = (rows.iter())
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum();
    let header = text.lines().find(|l| l.contains("syscall")).unwrap_or("");
    let top: Vec<&str> = std::iter::once(header)
        .chain(rows.into_iter().take(12))
        .collect();
    Ok((calls, top.join("\n")))
}
