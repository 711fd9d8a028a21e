//! Any bytes as a `.wandb` file: the reader, the record decoder, the views
//! and classification must never panic, and a resumed read from any cursor
//! the reader returned must see the same records as the one-pass read.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use syncd::source::wandb::fragment::{read_fragment, ReadOptions, Writer};
use syncd::source::wandb::framing::LogReader;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile_in_shm();
    file.write_all(data).unwrap();
    let path = file_path(&file);
    for recover in [false, true] {
        if let Ok(f) = read_fragment(&path, ReadOptions { recover }) {
            let _ = f.classify(Writer::Gone);
            let _ = f.classify(Writer::Alive);
        }
    }
    // Cursor property: reading in two halves equals reading at once.
    let Ok(mut whole) = LogReader::open(std::fs::File::open(&path).unwrap(), 0) else { return };
    let mut all = Vec::new();
    let mut middle = None;
    while let Ok(Some(r)) = whole.next_record() {
        all.push(r.payload.to_vec());
        if middle.is_none() && all.len() >= 2 {
            middle = Some((all.len(), whole.cursor()));
        }
    }
    if let Some((n, cursor)) = middle {
        let mut rest = LogReader::open(std::fs::File::open(&path).unwrap(), cursor).unwrap();
        let mut i = n;
        while let Ok(Some(r)) = rest.next_record() {
            assert_eq!(Some(&r.payload.to_vec()), all.get(i), "resumed read differs at record {i}");
            i += 1;
        }
        assert_eq!(i, all.len());
    }
});

fn tempfile_in_shm() -> std::fs::File {
    let path = format!("/dev/shm/syncd-fuzz-{}", std::process::id());
    std::fs::File::create(path).unwrap()
}

fn file_path(_file: &std::fs::File) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/dev/shm/syncd-fuzz-{}", std::process::id()))
}
