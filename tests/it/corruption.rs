use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use syncd::source::wandb::fragment::{FileClass, ReadOptions, Writer, read_fragment};
use syncd::source::wandb::framing::{BLOCK_SIZE, LogReader, ReadError, Tail};

use crate::support::committed_log;

/// A record as found: (start, end, payload).
type Found = (u64, u64, Vec<u8>);

/// Every record of a file, read with no recovery, and the error that stopped it.
fn records_of(path: &Path) -> (Vec<Found>, Option<ReadError>) {
    records_from(path, 0)
}

/// Records from a resume cursor on.
fn records_from(path: &Path, start: u64) -> (Vec<Found>, Option<ReadError>) {
    let mut out = Vec::new();
    let mut reader = match LogReader::open(File::open(path).unwrap(), start) {
        Ok(r) => r,
        Err(e) => return (out, Some(e)),
    };
    loop {
        match reader.next_record() {
            Ok(Some(r)) => out.push((r.start, r.end, r.payload.to_vec())),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    File::create(&path).unwrap().write_all(bytes).unwrap();
    path
}

/// Multi-block fixtures: a finished run, a killed one (ends on a block
/// boundary with a dangling FIRST chunk), one with a record > 32 KiB.
fn samples() -> Vec<PathBuf> {
    vec![
        committed_log("0.31.0", "finished"),
        committed_log("0.31.0", "sigkill"),
        committed_log("0.31.0", "big_record"),
        committed_log("0.17.9", "finished"),
    ]
}

#[test]
fn truncation_at_every_offset_of_the_last_block() {
    let tmp = tempfile::tempdir().unwrap();
    for original in samples() {
        let bytes = std::fs::read(&original).unwrap();
        let (all, err) = records_of(&original);
        assert!(err.is_none());
        let last_block = (bytes.len() as u64 - 1) / BLOCK_SIZE * BLOCK_SIZE;
        // Records before the last block are read once; each cut resumes
        // from the cursor at the last record that ends before that block.
        let base = all
            .iter()
            .map(|r| r.1)
            .filter(|&end| end <= last_block)
            .max()
            .unwrap_or(0);
        let path = write_temp(tmp.path(), "cut.wandb", &bytes);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut previous = usize::MAX;
        // From the whole file down: each cut is one truncation.
        for cut in (last_block..=bytes.len() as u64).rev() {
            file.set_len(cut).unwrap();
            let (got, err) = records_from(&path, base);
            assert!(
                err.is_none(),
                "{}: cut at {cut}: {err:?}",
                original.display()
            );
            // Exactly the records that end at or before the cut, unchanged.
            let expected: Vec<_> = all
                .iter()
                .filter(|r| r.1 <= cut && r.1 > base)
                .cloned()
                .collect();
            assert_eq!(got.len(), expected.len(), "cut at {cut}");
            assert!(got == expected, "cut at {cut}: records differ");
            assert!(got.len() <= previous);
            previous = got.len();
            let expected: Vec<_> = all.iter().filter(|r| r.1 <= cut).cloned().collect();
            if cut % 499 == 0 || cut == bytes.len() as u64 || cut <= 8 {
                // The full read path (decode, views, classification) too.
                let f = read_fragment(&path, ReadOptions::default()).unwrap();
                assert!(f.corruption.is_empty(), "cut at {cut}");
                assert_eq!(f.records as usize, expected.len());
                let class = f.classify(Writer::Gone);
                let early = [FileClass::Empty, FileClass::HeaderOnly];
                assert!(
                    matches!(class, FileClass::Truncated | FileClass::Finished)
                        || (cut <= 7 && early.contains(&class)),
                    "cut {cut}: {class:?}"
                );
                // The resume cursor is the end of the last complete record,
                // or the start of the next block when only padding follows.
                let last_end = expected.last().map_or(if cut < 7 { 0 } else { 7 }, |r| r.1);
                assert!(
                    f.cursor >= last_end && f.cursor <= cut && f.cursor - last_end < 7,
                    "cut {cut}"
                );
                let alive = f.classify(Writer::Alive);
                assert!(
                    matches!(alive, FileClass::Growing | FileClass::Finished)
                        || (cut <= 7 && early.contains(&alive)),
                    "cut {cut}: {alive:?}"
                );
            }
        }
    }
}

#[test]
fn zeroed_block_in_the_middle_is_corruption_with_the_good_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let original = committed_log("0.31.0", "sigkill");
    let mut bytes = std::fs::read(&original).unwrap();
    assert!(
        bytes.len() as u64 >= 3 * BLOCK_SIZE,
        "fixture spans several blocks"
    );
    let (all, _) = records_of(&original);
    let block = BLOCK_SIZE as usize;
    bytes[block..2 * block].fill(0);
    let path = write_temp(tmp.path(), "zeroed.wandb", &bytes);

    let stop = read_fragment(&path, ReadOptions { recover: false }).unwrap();
    assert_eq!(stop.classify(Writer::Gone), FileClass::Corrupt);
    let c = &stop.corruption[0];
    let before = all.iter().filter(|r| r.1 <= BLOCK_SIZE).count() as u64;
    // The record straddling into the zeroed block is lost; all before are good.
    assert!(
        c.good_records_before >= before - 1 && c.good_records_before <= before,
        "{c:?} vs {before}"
    );
    assert!(
        c.offset >= BLOCK_SIZE - 32 && c.offset < 3 * BLOCK_SIZE,
        "{c:?}"
    );

    let go_on = read_fragment(&path, ReadOptions { recover: true }).unwrap();
    assert!(
        go_on.records > stop.records,
        "recovery reads the blocks after the damage"
    );
    assert!(go_on.records < all.len() as u64);
    assert!(go_on.corruption.iter().all(|c| c.resumed_at.is_some()));
}

#[test]
fn zeroed_space_after_the_last_record_is_not_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let original = committed_log("0.31.0", "finished");
    let mut bytes = std::fs::read(&original).unwrap();
    let (all, _) = records_of(&original);
    bytes.resize(bytes.len() + 2 * BLOCK_SIZE as usize, 0);
    let path = write_temp(tmp.path(), "prealloc.wandb", &bytes);
    let f = read_fragment(&path, ReadOptions::default()).unwrap();
    assert!(f.corruption.is_empty());
    assert_eq!(f.records as usize, all.len());
    assert_eq!(f.tail, Tail::Clean);
    assert_eq!(f.classify(Writer::Gone), FileClass::Finished);
}

#[test]
fn bad_header_and_tiny_files() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = write_temp(tmp.path(), "empty.wandb", b"");
    assert_eq!(
        read_fragment(&empty, ReadOptions::default())
            .unwrap()
            .classify(Writer::Gone),
        FileClass::Empty
    );
    let header = write_temp(tmp.path(), "header.wandb", b":W&B\xe1\xbe\x00");
    assert_eq!(
        read_fragment(&header, ReadOptions::default())
            .unwrap()
            .classify(Writer::Alive),
        FileClass::HeaderOnly
    );
    let partial = write_temp(tmp.path(), "partial.wandb", b":W&");
    let f = read_fragment(&partial, ReadOptions::default()).unwrap();
    assert!(f.corruption.is_empty());
    assert_eq!(f.classify(Writer::Alive), FileClass::Growing);
    for bad in [
        &b"PK\x03\x04 not a log"[..],
        b":W&B\xe1\xbe\x01",
        b"\x00\x00\x00\x00\x00\x00\x00",
    ] {
        let path = write_temp(tmp.path(), "bad.wandb", bad);
        let f = read_fragment(&path, ReadOptions::default()).unwrap();
        assert_eq!(f.classify(Writer::Alive), FileClass::Corrupt, "{bad:?}");
        assert_eq!(f.corruption[0].offset, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// One flipped bit anywhere: no panic; every record read before the
    /// reported damage is an unchanged original record; records that end
    /// before the flipped byte are all still read.
    #[test]
    fn bit_flips_never_lose_the_good_prefix(pick in any::<prop::sample::Index>(), bit in 0u8..8, which in 0usize..4) {
        let original = &samples()[which];
        let mut bytes = std::fs::read(original).unwrap();
        let (all, _) = records_of(original);
        let at = pick.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let tmp = tempfile::tempdir().unwrap();
        let path = write_temp(tmp.path(), "flip.wandb", &bytes);
        let (got, _err) = records_of(&path);
        let must_survive = all.iter().filter(|r| r.1 <= at as u64).count();
        prop_assert!(got.len() >= must_survive, "flip at {at}: {} < {must_survive}", got.len());
        for (i, r) in got.iter().enumerate() {
            // A flip inside a payload whose CRC still matched is impossible
            // for a single bit; so every returned record is an original one.
            prop_assert!(all.get(i) == Some(r), "record {i} changed after flip at {at}");
        }
        let f = read_fragment(&path, ReadOptions { recover: true }).unwrap();
        prop_assert!(f.records as usize <= all.len() + 1);
    }

    /// Random bytes, with and without a valid header: never a panic.
    #[test]
    fn random_bytes_never_panic(mut noise in prop::collection::vec(any::<u8>(), 0..70_000), with_header in any::<bool>()) {
        if with_header && noise.len() >= 7 {
            noise[..7].copy_from_slice(b":W&B\xe1\xbe\x00");
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = write_temp(tmp.path(), "noise.wandb", &noise);
        for recover in [false, true] {
            let f = read_fragment(&path, ReadOptions { recover }).unwrap();
            let _ = f.classify(Writer::Gone);
        }
    }
}
