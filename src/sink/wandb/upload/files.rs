//! The run's files: which are sent (new or changed; end-policy and
//! generated files only when the run finishes), where each is found (the
//! newest fragment that has it), and the rule that only the run's own data
//! leaves the machine (no `..`, no absolute path, no symlink out of the run
//! directory, regular files only).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::fs::sha256_hex;
use crate::ledger::FileAck;
use crate::sink::wandb::filestream;
use crate::sink::wandb::run_config;
use crate::source::wandb::views::{FileKind, Policy};

use super::{RunSync, output_log};

impl RunSync<'_> {
    /// The files a step uploads: those new or changed (end-policy and
    /// generated files only when the run finishes), by name, and `output`
    /// (from [`RunSync::output_log_to_send`]). They are taken as stored in
    /// the run as read (so the next step does not offer them again); the
    /// step's checkpoint, saved once they are, holds that too.
    pub(super) fn files_for_step(
        &mut self,
        finishing: bool,
        output: Option<SpooledLog>,
    ) -> (BTreeMap<String, Vec<u8>>, Option<SpooledLog>) {
        let (contents, mtimes) = self.files_to_send(finishing);
        for (name, bytes) in &contents {
            let ack = FileAck {
                size: bytes.len() as u64,
                sha256: sha256_hex(bytes),
                mtime_ns: mtimes.get(name).copied(),
            };
            self.entry.acked.files.insert(name.clone(), ack);
        }
        if let Some(spool) = &output {
            self.entry
                .acked
                .files
                .insert(filestream::OUTPUT.into(), spool.ack.clone());
        }
        (contents, output)
    }

    /// A dry run's [`RunSync::files_for_step`]: counts what would be sent
    /// and takes it as sent (in memory only), so it is counted once.
    pub(super) fn count_files(&mut self, finishing: bool, output: Option<SpooledLog>) {
        let (contents, output) = self.files_for_step(finishing, output);
        if let Some(spool) = output {
            let _ = std::fs::remove_file(&spool.path);
            self.would_send.files += 1;
            self.would_send.bytes += spool.ack.size;
        }
        for bytes in contents.into_values() {
            self.would_send.files += 1;
            self.would_send.bytes += bytes.len() as u64;
        }
    }

    /// The run's files that the server does not have as they are now, by
    /// name, with the mtime each had when read.
    pub(super) fn files_to_send(
        &mut self,
        finishing: bool,
    ) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, i64>) {
        let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        // Each file's mtime when read, for its acknowledgement.
        let mut mtimes: BTreeMap<String, i64> = BTreeMap::new();
        let listed: Vec<(String, Policy, FileKind)> = self
            .entry
            .state
            .files
            .iter()
            .map(|(p, e)| (p.clone(), e.policy, e.kind))
            .collect();
        for (path, policy, kind) in listed {
            // The writer's own output.log is never sent: it is rebuilt from
            // the console records when the run finishes (see output_log.rs).
            if kind == FileKind::Artifact
                || (policy == Policy::End && !finishing)
                || path == filestream::OUTPUT
            {
                continue;
            }
            let Some(found) = self.find_run_file(&path) else {
                continue;
            };
            // While the run is live, a file whose size and mtime are what was
            // uploaded is not read again (a file saved with the "live" policy
            // can be large, and every upload would read and hash it); the
            // final upload compares contents.
            let ack = self.entry.acked.files.get(&path);
            if !finishing
                && ack.is_some_and(|a| a.size == found.size && a.mtime_ns == Some(found.mtime_ns))
            {
                continue;
            }
            if let Some(bytes) = self.read_found(&path, &found) {
                mtimes.insert(path.clone(), found.mtime_ns);
                contents.insert(path, bytes);
            }
        }
        if finishing {
            contents.insert(
                "wandb-summary.json".into(),
                run_config::summary_json(&self.entry.state).into_bytes(),
            );
            contents.insert(
                "config.yaml".into(),
                run_config::config_yaml(&self.entry.state).into_bytes(),
            );
            if let Some(metadata) = run_config::metadata_json(&self.entry.state) {
                contents.insert("wandb-metadata.json".into(), metadata.into_bytes());
            }
        }
        contents.retain(|path, bytes| match self.entry.acked.files.get_mut(path) {
            Some(ack) if ack.size == bytes.len() as u64 && ack.sha256 == sha256_hex(bytes) => {
                // The same bytes, touched: remember the new mtime so that
                // it is not read again.
                ack.mtime_ns = mtimes.get(path).copied();
                false
            }
            _ => true,
        });
        (contents, mtimes)
    }

    /// When the run finishes, `output.log` made from the console records of
    /// every fragment (see [`output_log`]) in its spool file, unless the
    /// server has it as it is; `None` when the run printed nothing or the
    /// spool cannot be written (then reported: the console lines are on the
    /// server all the same). The run is read again on a blocking thread: a
    /// run of gigabytes must not hold the daemon's loop while it is.
    pub(super) async fn output_log_to_send(&mut self, finishing: bool) -> Option<SpooledLog> {
        if !finishing || self.entry.state.console.line_count() == 0 {
            return None; // nothing printed: no second reading of the run
        }
        let spool = output_log::spool_path(self.ledger.dir(), &self.entry.key);
        let (fragments, at) = (self.job.fragments.clone(), spool.clone());
        let rebuilt = tokio::task::spawn_blocking(move || {
            let Some(path) = output_log::rebuild(&fragments, &at)? else {
                return Ok(None);
            };
            let (size, sha256) = output_log::digest(&path)?;
            let ack = FileAck {
                size,
                sha256,
                mtime_ns: None,
            };
            Ok(Some(SpooledLog { path, ack }))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let spooled = match rebuilt {
            Ok(spooled) => spooled?,
            Err(e) => {
                let _ = std::fs::remove_file(&spool);
                self.entry.warn(format!(
                    "output.log cannot be made from the console records ({e}); not uploaded"
                ));
                return None;
            }
        };
        let acked = self.entry.acked.files.get(filestream::OUTPUT);
        if acked.is_some_and(|a| a.size == spooled.ack.size && a.sha256 == spooled.ack.sha256) {
            let _ = std::fs::remove_file(&spooled.path);
            return None;
        }
        Some(spooled)
    }

    /// A run file's bytes from the newest fragment that has it.
    #[cfg(test)]
    pub(super) fn read_run_file(&mut self, rel: &str) -> Option<Vec<u8>> {
        let found = self.find_run_file(rel)?;
        self.read_found(rel, &found)
    }

    /// The bytes of run file `rel`; a file that cannot be read, is not a
    /// regular file, or leads out of its run directory (through a symlink
    /// in any component: `files/sub -> /etc`, `files -> /etc`) is reported
    /// (once) and skipped. Only the run's own data leaves the machine.
    pub(super) fn read_found(&mut self, rel: &str, found: &FoundFile) -> Option<Vec<u8>> {
        use std::io::Read;
        let read = crate::fs::open_beneath(&found.run_dir, &found.path).and_then(|mut file| {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map(|_| bytes)
        });
        match read {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.entry.warn(match crate::fs::refusal(&e) {
                    Some(refused @ crate::fs::Refused::Outside(_)) => format!(
                        "files/{rel} {refused}; not uploaded (copy the file into the run to upload it)"
                    ),
                    Some(refused) => format!("files/{rel} {refused}; not uploaded"),
                    None => format!("files/{rel}: cannot read ({e}); not uploaded"),
                });
                None
            }
        }
    }

    /// Where run file `rel` is: in the newest fragment that has it. Whether
    /// it may be read is decided when it is opened ([`Self::read_found`]).
    pub(super) fn find_run_file(&mut self, rel: &str) -> Option<FoundFile> {
        if rel.split('/').any(|part| part == "..") || rel.starts_with('/') {
            self.entry.warn(format!(
                "files/{rel}: a path outside the run directory; not uploaded"
            ));
            return None;
        }
        for dir in self.fragment_dirs.iter().rev() {
            let path = dir.join("files").join(rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            // The file's own size and mtime (a symlink's target's).
            let meta = std::fs::metadata(&path).unwrap_or(meta);
            return Some(FoundFile {
                size: meta.len(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                path,
                run_dir: dir.clone(),
            });
        }
        None
    }
}

/// The rebuilt `output.log` in its spool file, with what its upload is
/// acknowledged as.
pub(super) struct SpooledLog {
    pub path: PathBuf,
    pub ack: FileAck,
}

/// A run file on disk.
pub(super) struct FoundFile {
    path: PathBuf,
    /// The fragment's run directory, which the file must lie within.
    run_dir: PathBuf,
    size: u64,
    mtime_ns: i64,
}
