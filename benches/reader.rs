//! Reader throughput and memory, next to `cat` on the same file.
//!
//! `cargo bench --bench reader` builds a large run (default 256 MB; set
//! `SYNCD_BENCH_MB`) shaped like a real wandb 0.31 offline run (per step: two
//! summary records and one history record of 20 metrics, console output now
//! and then), then prints MB/s for each reading depth and the peak RSS of
//! `syncd inspect` on a small and on the large file. Not a pass/fail test.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use prost::Message;
use syncd::source::wandb::fragment::{self, ReadOptions};
use syncd::source::wandb::framing::{LogReader, LogWriter};
use syncd::source::wandb::proto::{self, Record, RecordType};
use syncd::source::wandb::record;

fn main() {
    let mb: u64 = std::env::var("SYNCD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-reader");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let large = generate(&dir, mb);
    let small = generate(&dir, 16);
    let size = std::fs::metadata(&large).unwrap().len();
    let size_mb = size as f64 / 1e6;
    println!("file: {} ({size_mb:.1} MB)", large.display());

    // Warm the page cache so every figure below reads from memory.
    let _ = time_cat(&large);
    let cat = best_of(3, || time_cat(&large));
    println!("{:<34} {:>9.0} MB/s", "cat file > /dev/null", size_mb / cat);

    let depths: [(&str, ReadDepth); 4] = [
        ("framing + CRC", framing_only),
        ("framing + CRC + record type", with_peek),
        ("framing + CRC + full decode", with_decode),
        ("full read (decode + run views)", with_views),
    ];
    let mut records = 0;
    for (name, f) in depths {
        let secs = best_of(3, || {
            let start = Instant::now();
            records = f(&large);
            start.elapsed().as_secs_f64()
        });
        println!(
            "{name:<34} {:>9.0} MB/s  ({:.2}x cat, {:.1} M records/s)",
            size_mb / secs,
            cat / secs,
            records as f64 / secs / 1e6
        );
    }
    println!("records: {records}");
    for (label, path) in [("small", &small), ("large", &large)] {
        let (rss_kb, secs) = inspect_rss(path);
        let mb = std::fs::metadata(path).unwrap().len() as f64 / 1e6;
        println!(
            "syncd inspect --json, {label} file ({mb:.0} MB): peak RSS {:.1} MB, {secs:.2} s",
            rss_kb as f64 / 1024.0
        );
    }
}

/// Reads a whole file to some depth and returns how many records it saw.
type ReadDepth = fn(&Path) -> u64;

fn best_of(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn time_cat(path: &Path) -> f64 {
    let start = Instant::now();
    let status = Command::new("cat")
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("cat");
    assert!(status.success());
    start.elapsed().as_secs_f64()
}

fn framing_only(path: &Path) -> u64 {
    let mut reader = LogReader::open(File::open(path).unwrap(), 0).unwrap();
    let mut n = 0;
    while reader.next_record().unwrap().is_some() {
        n += 1;
    }
    n
}

fn with_peek(path: &Path) -> u64 {
    let mut reader = LogReader::open(File::open(path).unwrap(), 0).unwrap();
    let mut n = 0;
    while let Some(raw) = reader.next_record().unwrap() {
        n += u64::from(record::peek(raw.payload).unwrap().num > 0);
    }
    n
}

fn with_decode(path: &Path) -> u64 {
    let mut reader = LogReader::open(File::open(path).unwrap(), 0).unwrap();
    let mut n = 0;
    while let Some(raw) = reader.next_record().unwrap() {
        n += u64::from(Record::decode(raw.payload).unwrap().record_type.is_some());
    }
    n
}

fn with_views(path: &Path) -> u64 {
    let fragment = fragment::read_fragment(path, ReadOptions::default()).unwrap();
    assert!(fragment.corruption.is_empty());
    fragment.records
}

/// Peak RSS (KiB) and wall time of `syncd inspect --json` on `path`.
fn inspect_rss(path: &Path) -> (i64, f64) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["inspect", "--json", "--stale-after", "0s"])
        .arg(path)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn syncd");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain syscall on our own child; `usage` is a valid out-pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let _ = child.try_wait();
    (usage.ru_maxrss, start.elapsed().as_secs_f64())
}

/// Writes (once) a run of about `mb` megabytes and returns its path.
fn generate(dir: &Path, mb: u64) -> PathBuf {
    let path = dir.join(format!("run-bench{mb}.wandb"));
    let target = mb * 1_000_000;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= target) {
        return path;
    }
    let tmp = path.with_extension("tmp");
    let mut writer = LogWriter::new(BufWriter::new(File::create(&tmp).unwrap())).unwrap();
    let mut num = 0;
    let mut put = |writer: &mut LogWriter<BufWriter<File>>, record_type: RecordType| {
        num += 1;
        let record = Record {
            num,
            record_type: Some(record_type),
            info: None,
        };
        writer.append(&record.encode_to_vec()).unwrap();
    };
    put(
        &mut writer,
        RecordType::Run(proto::RunRecord {
            run_id: "bench".into(),
            project: "bench".into(),
            start_time: Some(proto::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
    );
    let item = |key: &str, json: String| proto::HistoryItem {
        key: String::new(),
        nested_key: vec![key.to_string()],
        typed: None,
        value_json: json,
    };
    let mut step = 0i64;
    while writer.position() < target {
        let mut items = vec![
            item("_step", step.to_string()),
            item("_runtime", format!("{}.{:06}", step / 10, step % 1000)),
            item("_timestamp", format!("1790000{step:03}.5")),
        ];
        for m in 0..20 {
            items.push(item(
                &format!("train/metric_{m}"),
                format!("{}", (step * 31 + m) as f64 / 7.0),
            ));
        }
        let summary = |items: Vec<proto::KeyedJson>| {
            RecordType::Summary(proto::SummaryRecord {
                update: items,
                remove: vec![],
            })
        };
        put(
            &mut writer,
            summary(vec![proto::KeyedJson {
                key: String::new(),
                nested_key: vec!["_runtime".into()],
                value_json: format!("{}", step / 10),
            }]),
        );
        put(
            &mut writer,
            summary(vec![proto::KeyedJson {
                key: String::new(),
                nested_key: vec!["train/metric_0".into()],
                value_json: format!("{}", step as f64 / 7.0),
            }]),
        );
        put(
            &mut writer,
            RecordType::History(proto::HistoryRecord {
                item: items,
                step: Some(proto::HistoryStep { num: step }),
            }),
        );
        if step % 100 == 0 {
            put(
                &mut writer,
                RecordType::OutputRaw(proto::OutputRecord {
                    output_type: 1,
                    timestamp: None,
                    line: format!("step {step}: loss {:.4}\n", 1.0 / (step + 1) as f64),
                }),
            );
        }
        step += 1;
    }
    put(
        &mut writer,
        RecordType::Exit(proto::RunExitRecord {
            exit_code: 0,
            runtime: 100,
            not_complete: false,
        }),
    );
    drop(writer.into_inner());
    std::fs::rename(&tmp, &path).unwrap();
    path
}
