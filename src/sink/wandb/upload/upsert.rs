//! The run's identity on the server: created on first contact, sent again
//! when its config or its other parameters change (told by digests kept in
//! the ledger).

use crate::fs::sha256_hex;
use crate::naming::{Naming, name_run};
use crate::sink::wandb::client::Client;
use crate::sink::wandb::ops::{self, ServerRun, UpsertRun};
use crate::sink::wandb::run_config;
use crate::source::wandb::views::RunIdentity;

use super::{RunSync, StepError};

/// The display name and group an upsert set.
pub(super) fn sent_naming(upsert: &UpsertRun) -> Naming {
    Naming {
        display_name: upsert.display_name.clone(),
        group: upsert.group.clone(),
    }
}

impl RunSync<'_> {
    /// The run on the server, created on first contact.
    pub(super) async fn ensure_server_run(
        &mut self,
        client: &Client,
    ) -> Result<ServerRun, StepError> {
        if let Some(server) = &self.entry.server {
            return Ok(server.clone());
        }
        let upsert = self.upsert_params(true);
        let server = ops::upsert_bucket(client, &upsert).await?;
        if server.history_line_count > 0
            && self.entry.acked.history_lines == 0
            && self.entry.acked.history_base == 0
        {
            self.entry.warn(format!(
                "the server already had {} history lines for this run (an earlier upload); they are rewritten in place",
                server.history_line_count
            ));
        }
        self.entry.acked.config_sha256 = upsert.config.as_deref().map(|c| sha256_hex(c.as_bytes()));
        // The digest leaves the config out: the upsert just sent has the
        // same parameters as `upsert_params(false)`.
        self.entry.acked.params_sha256 = Some(params_digest(&upsert));
        self.entry.naming = Some(sent_naming(&upsert));
        self.entry.server = Some(server.clone());
        // Remember the server identity before any line is sent, on the last
        // checkpoint (the records read since are not acknowledged yet).
        let (server_run, acked) = (self.entry.server.clone(), self.entry.acked.clone());
        let warnings = self.entry.warnings.clone();
        let naming = self.entry.naming.clone();
        self.save_decision(|stored| {
            stored.server = server_run;
            stored.naming = naming;
            stored.acked.config_sha256 = acked.config_sha256;
            stored.acked.params_sha256 = acked.params_sha256;
            stored.warnings = warnings;
        })?;
        Ok(server)
    }

    /// The display name and group the naming rule gives the run now.
    /// Its Slurm variables are the records' or, when they hold none, those
    /// of `wandb-metadata.json`, as the reader fills them for `inspect`
    /// (`source::wandb::metadata`), so both show one name.
    pub(super) fn naming(&self) -> Naming {
        let state = &self.entry.state;
        let slurm = &self.job.metadata_slurm;
        let filled;
        let identity = if state.identity.slurm.is_empty() && !slurm.is_empty() {
            filled = RunIdentity {
                slurm: slurm.clone(),
                ..state.identity.clone()
            };
            &filled
        } else {
            &state.identity
        };
        name_run(
            &self.options.naming,
            identity,
            &state.config,
            self.job.manifest.as_deref(),
        )
    }

    pub(super) fn upsert_params(&self, with_config: bool) -> UpsertRun {
        let identity = &self.entry.state.identity;
        let naming = self.naming();
        UpsertRun {
            storage_id: self
                .entry
                .server
                .as_ref()
                .map(|s| s.storage_id.clone())
                .filter(|s| !s.is_empty()),
            name: identity
                .run_id
                .clone()
                .unwrap_or_else(|| self.entry.run_id.clone()),
            entity: self
                .entry
                .server
                .as_ref()
                .map(|s| s.entity.clone())
                .or_else(|| self.options.entity.clone())
                .or_else(|| identity.entity.clone())
                .or_else(|| self.job.entity.clone()),
            project: self
                .entry
                .server
                .as_ref()
                .map(|s| s.project.clone())
                .or_else(|| self.options.project.clone())
                .or_else(|| identity.project.clone())
                .or_else(|| self.job.project.clone()),
            group: naming.group.or_else(|| identity.group.clone()),
            display_name: naming
                .display_name
                .or_else(|| identity.display_name.clone()),
            notes: identity.notes.clone(),
            commit: identity
                .git
                .as_ref()
                .map(|g| g.commit.clone())
                .filter(|c| !c.is_empty()),
            repo: identity
                .git
                .as_ref()
                .map(|g| g.remote_url.clone())
                .filter(|r| !r.is_empty()),
            config: with_config.then(|| run_config::upsert_config(&self.entry.state)),
            host: identity.host.clone(),
            program: identity.program.clone(),
            job_type: identity.job_type.clone(),
            // Like wandb: no tags is null, not an empty list.
            tags: (!identity.tags.is_empty()).then(|| identity.tags.clone()),
            summary_metrics: None,
        }
    }

    pub(super) async fn upsert_if_changed(
        &mut self,
        client: &Client,
        server: &ServerRun,
    ) -> Result<(), StepError> {
        let config = run_config::upsert_config(&self.entry.state);
        let config_sha = sha256_hex(config.as_bytes());
        let params = self.upsert_params(false);
        let params_sha = params_digest(&params);
        let config_changed = self.entry.acked.config_sha256.as_deref() != Some(config_sha.as_str());
        let params_changed = !params_match(
            self.entry.acked.params_sha256.as_deref(),
            &params_sha,
            &params,
        );
        if !config_changed && !params_changed {
            // An entry written before the digest's encoding was defined
            // takes the new digest at its next checkpoint.
            self.entry.acked.params_sha256 = Some(params_sha);
            return Ok(());
        }
        let mut upsert = if params_changed {
            params
        } else {
            UpsertRun {
                storage_id: Some(server.storage_id.clone()).filter(|s| !s.is_empty()),
                name: server.name.clone(),
                entity: Some(server.entity.clone()),
                project: Some(server.project.clone()),
                ..Default::default()
            }
        };
        if config_changed {
            upsert.config = Some(config);
        }
        ops::upsert_bucket(client, &upsert).await?;
        if params_changed {
            self.entry.naming = Some(sent_naming(&upsert));
        }
        self.entry.acked.config_sha256 = Some(config_sha);
        self.entry.acked.params_sha256 = Some(params_sha);
        Ok(())
    }
}

/// The digest of the parameters an upsert sets besides the config (group,
/// display name, notes, git, host, program, job type, tags): when it
/// changes, they are sent again. It hashes a defined encoding, a JSON array
/// of the fields in this order (`null` for a field not set), so it is the
/// same whichever compiler built syncd.
pub(super) fn params_digest(p: &UpsertRun) -> String {
    let fields = serde_json::json!([
        p.group,
        p.display_name,
        p.notes,
        p.commit,
        p.repo,
        p.host,
        p.program,
        p.job_type,
        p.tags
    ]);
    sha256_hex(fields.to_string().as_bytes())
}

/// The digest syncd stored before [`params_digest`] had a defined
/// encoding: the hash of the fields' `Debug` text. Only to recognise the
/// ledger entries it wrote (so that an upgrade does not send every run's
/// parameters again); never written.
fn legacy_params_digest(p: &UpsertRun) -> String {
    sha256_hex(
        format!(
            "{:?}",
            (
                &p.group,
                &p.display_name,
                &p.notes,
                &p.commit,
                &p.repo,
                &p.host,
                &p.program,
                &p.job_type,
                &p.tags
            )
        )
        .as_bytes(),
    )
}

/// Whether `stored`, the digest acknowledged in the ledger, is that of
/// `params`, in either encoding.
/// Whether `stored` is the digest of `params` (`digest` is
/// [`params_digest`] of them), in the current encoding or the legacy one.
pub(super) fn params_match(stored: Option<&str>, digest: &str, params: &UpsertRun) -> bool {
    stored.is_some_and(|stored| stored == digest || stored == legacy_params_digest(params))
}
