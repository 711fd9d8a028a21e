//! The end of a run: completed when its newest fragment has an exit
//! record, finalized as failed when its writer is gone (a verdict from the
//! scheduler, or `--finalize` and a file quiet for `stale_after`), else
//! left live.

use std::path::Path;
use std::time::SystemTime;

use crate::ledger::Phase;
use crate::source::wandb::framing::Tail;
use crate::source::wandb::value::Value;

use super::{RunEnd, RunSync, StepError};

impl RunSync<'_> {
    /// After the newest fragment: complete the run if that fragment ended,
    /// or, when asked to, finalize a run whose writer is gone, else leave it
    /// live. What is pending goes with it.
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
                None => {
                    if self.pending.records > 0 {
                        self.flush(index, cursor, None).await?;
                    }
                    return self.mark_live().await;
                }
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
        if !self.pending.alerts.is_empty() {
            // Alerts go before the run is marked complete, as they were
            // written.
            self.flush(index, cursor, None).await?;
        }
        // The last lines, the run's files and its end in one step: the
        // files go once, and the end is sent once everything else arrived.
        let end = RunEnd {
            complete: code,
            phase,
        };
        self.flush(index, cursor, Some(end)).await
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

    pub(super) async fn mark_live(&mut self) -> Result<(), StepError> {
        if self.sending_client().is_some() {
            // The run as read is the run as acknowledged only once the step
            // under way is.
            self.drain().await?;
            self.entry.phase = Phase::Live;
            let checkpoint = self.entry.clone();
            self.save_checkpoint(checkpoint)?;
        } else {
            self.entry.phase = Phase::Live;
        }
        Ok(())
    }
}
