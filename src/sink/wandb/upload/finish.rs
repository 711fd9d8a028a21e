//! The end of a run: completed when its newest fragment has an exit
//! record, finalized as failed when its writer is gone (a verdict from the
//! scheduler, or `--finalize` and a file quiet for `stale_after`), else
//! left live.

use std::path::Path;
use std::time::SystemTime;

use crate::fs::sha256_hex;
use crate::ledger::Phase;
use crate::sink::wandb::filestream::Request;
use crate::sink::wandb::run_config;
use crate::source::wandb::framing::Tail;
use crate::source::wandb::value::Value;

use super::{RunSync, StepError, now_rfc3339, send_to_stream};

impl RunSync<'_> {
    /// After the newest fragment: complete the run if that fragment ended,
    /// or, when asked to, finalize a run whose writer is gone.
    pub(super) async fn finish(
        &mut self,
        index: usize,
        cursor: u64,
        tail: Tail,
        path: &Path,
    ) -> Result<(), StepError> {
        let code = match self.entry.fragments[index].exit {
            Some(exit) if exit.not_complete => None,
            Some(exit) => Some(exit.code),
            None => match self.finalize_code(tail, path) {
                Some(code) => Some(code),
                None => return self.mark_live(),
            },
        };
        let settled = matches!(self.entry.phase, Phase::Synced | Phase::Finalized);
        if settled && self.entry.acked.complete == code && self.records_read == 0 {
            return Ok(());
        }
        let phase = if self.entry.finalized_reason.is_some() {
            Phase::Finalized
        } else {
            Phase::Synced
        };
        let client = match self.sending_client() {
            Some(client) if self.entry.state.identity.run_id.is_some() => client,
            _ => {
                if self.entry.state.identity.run_id.is_some() {
                    self.count_files(true);
                }
                self.entry.acked.complete = code;
                self.entry.phase = phase;
                return Ok(());
            }
        };
        let server = self.ensure_server_run(client).await?;
        self.upsert_if_changed(client, &server).await?;
        let uploaded = self.upload_files(client, &server, true).await?;
        let summary = run_config::summary_json(&self.entry.state);
        let summary_sha = sha256_hex(summary.as_bytes());
        let summary = (self.entry.acked.summary_sha256.as_deref() != Some(summary_sha.as_str()))
            .then_some(summary);
        // An exit record that says "not complete" leaves the run open.
        let request = Request {
            uploaded,
            summary,
            complete: code,
            ..Default::default()
        };
        if !request.is_empty() {
            send_to_stream(client, &server, &request).await?;
        }
        self.entry.acked.complete = code;
        self.entry.acked.summary_sha256 = Some(summary_sha);
        self.entry.fragments[index].cursor = cursor;
        self.entry.phase = phase;
        self.entry.last_upload = Some(now_rfc3339());
        self.save_checkpoint()?;
        Ok(())
    }

    /// Exit code 1 for a run without exit record, when `--finalize` asks for
    /// it and the newest file has been quiet for `stale_after`; the reason is
    /// recorded. `None` leaves the run open.
    pub(super) fn finalize_code(&mut self, tail: Tail, path: &Path) -> Option<i32> {
        if let Some(verdict) = &self.options.verdict {
            self.entry.finalized_reason = Some(verdict.reason.clone());
            if let Some(state) = &verdict.slurm_state {
                let run = &mut self.entry.state;
                run.summary
                    .insert("slurm_state".into(), Value::String(state.clone()));
                let tag = format!("slurm:{state}");
                if !run.identity.tags.contains(&tag) {
                    run.identity.tags.push(tag);
                }
            }
            return Some(1);
        }
        if !self.options.finalize {
            return None;
        }
        let age = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        if age.is_none_or(|a| a < self.options.stale_after) {
            self.entry.warn(format!(
                "not finalized: {} changed less than {} ago, its writer may still be running",
                crate::paths::display(path),
                humantime::format_duration(self.options.stale_after)
            ));
            return None;
        }
        self.entry.finalized_reason = Some(match tail {
            Tail::Clean => {
                "no exit record: the run was cut off (killed, timed out or crashed)".to_string()
            }
            Tail::Incomplete { bytes, .. } | Tail::Torn { bytes, .. } => format!(
                "no exit record, and {bytes} bytes of an unfinished record at the end: \
                 the run was cut off (killed, timed out or crashed)"
            ),
        });
        Some(1)
    }

    pub(super) fn mark_live(&mut self) -> Result<(), StepError> {
        self.entry.phase = Phase::Live;
        if self.sending_client().is_some() {
            self.save_checkpoint()?;
        }
        Ok(())
    }
}
