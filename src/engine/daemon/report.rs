//! What the daemon says about itself: the counts, the one-line summary
//! systemd shows, and the heartbeat `syncd status` reads.

use super::*;

impl DaemonState {
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        let live = self
            .active_runs()
            .filter(|(_, r)| r.phase == Phase::Live && !r.ended)
            .count();
        (live, self.schedule.queued(), self.schedule.in_flight())
    }

    pub(super) fn summary_line(&self) -> String {
        let (live, queued, uploading) = self.counts();
        let network = self.network();
        let slurm = match self.slurm_report() {
            Some(SlurmHealth {
                answering: false, ..
            }) => ", Slurm not answering",
            _ => "",
        };
        format!("{live} runs live, {queued} queued, {uploading} uploading, {network}{slurm}")
    }

    pub(super) fn heartbeat(&self, config: &DaemonConfig, started_at: &str) -> Heartbeat {
        let rfc3339 = |at: SystemTime| humantime::format_rfc3339_seconds(at).to_string();
        let at_instant =
            |t: Instant| rfc3339(SystemTime::now() + t.saturating_duration_since(Instant::now()));
        let next_probe = self.offline_until.map(at_instant);
        let activity =
            self.active_runs()
                // Quiet runs: the ledger says all there is.
                .filter(|(id, run)| !run.quiet(self.schedule.state(id)))
                .map(|(id, run)| {
                    let key = run.key.clone().unwrap_or_else(|| {
                        format!("{UNSYNCED_PREFIX}{}", run.job.run_dir().display())
                    });
                    let scheduled = self.schedule.state(id);
                    let offline = self.offline_until.is_some();
                    let (state, reason, next_retry) = match scheduled {
                        State::InFlight { .. } => ("uploading", None, None),
                        State::Queued | State::Backoff { .. } if offline => {
                            ("waiting", Some("offline"), next_probe.clone())
                        }
                        State::Backoff { until } => {
                            ("waiting", Some("retry"), Some(at_instant(*until)))
                        }
                        State::Queued => ("queued", None, None),
                        State::Stopped(_) => ("stopped", None, None),
                        State::Idle => ("idle", None, None),
                    };
                    let stopped = match scheduled {
                        State::Stopped(reason) => Some(reason.clone()),
                        _ => None,
                    };
                    // What is behind, as of the last scan (the heartbeat
                    // never touches a run's disk, and neither need status).
                    let acked = run.acked.iter().map(|a| a.unwrap_or(0));
                    let on_disk = run.sizes.iter().zip(acked.clone());
                    let bytes_on_disk = Some(on_disk.map(|(size, acked)| acked.max(*size)).sum());
                    let bytes_acked = Some(acked.sum());
                    let project = run
                        .job
                        .project
                        .clone()
                        .or_else(|| run.named_project.as_deref().map(str::to_string));
                    let entity = run
                        .job
                        .entity
                        .clone()
                        .or_else(|| run.named_entity.as_deref().map(str::to_string));
                    (
                        key,
                        Activity {
                            run_id: Some(run.job.id.clone()),
                            error: stopped,
                            state: state.into(),
                            reason: reason.map(str::to_string),
                            next_retry,
                            path: run
                                .job
                                .fragments
                                .last()
                                .and_then(|p| p.parent())
                                .map(Path::to_path_buf),
                            slurm_job: run.slurm_job.clone(),
                            slurm_state: run.slurm_state.clone(),
                            entity,
                            project,
                            bytes_on_disk,
                            bytes_acked,
                        },
                    )
                })
                .collect();
        let network = self.network();
        Heartbeat {
            pid: std::process::id(),
            host: crate::process::hostname().to_string(),
            started_at: started_at.to_string(),
            heartbeat_at: now_rfc3339(),
            stale_after_secs: 15,
            online: network == "online",
            last_contact: self.last_contact.map(rfc3339),
            network: Some(network.to_string()),
            offline_since: self.offline_since.map(rfc3339),
            offline_error: self.offline_error.clone(),
            next_probe,
            slurm: self.slurm_report(),
            loop_stalled_since: None,
            problems: self.problems.iter().cloned().collect(),
            rate_limited: config
                .targets
                .clients()
                .iter()
                .filter_map(|c| Some(format!("{}: {}", c.base_url(), c.pause()?)))
                .collect(),
            base_url: config.targets.default_base_url(),
            activity,
        }
    }
}
