//! What the daemon knows of Slurm: the question it asks (every live run's
//! job, at once), how its queries fare (for `status`), and which runs' jobs
//! are over, so that they are completed or finalized.

use super::*;

/// How the daemon's Slurm queries fare.
#[derive(Default)]
pub(super) struct SlurmWatch {
    /// When the query out now was sent.
    pub(super) asking_since: Option<(Instant, SystemTime)>,
    /// Since when queries fail (the first failure), and the newest error.
    pub(super) failing: Option<(SystemTime, String)>,
    /// Why `sacct` failed in the last answer, if it did.
    pub(super) accounting_failing: Option<String>,
}

impl DaemonState {
    /// The jobs to ask Slurm about: every live run's, at once; `None` when
    /// there are none.
    pub(super) fn slurm_question(&self) -> Option<Vec<String>> {
        let ids: Vec<String> = self
            .active_runs()
            .filter(|(id, r)| !r.ended && !r.settled(self.schedule.state(id)))
            .filter_map(|(_, r)| r.slurm_job.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        (!ids.is_empty()).then_some(ids)
    }

    pub(super) fn slurm_asked(&mut self) {
        if let Some(watch) = self.slurm_health.as_mut() {
            watch.asking_since = Some((Instant::now(), SystemTime::now()));
        }
    }

    /// Takes a Slurm query's answer: job states for the runs asked about,
    /// or a failure (quiescence decides until Slurm answers again).
    pub(super) fn take_slurm_answer(
        &mut self,
        ids: &[String],
        answer: Result<HashMap<String, JobInfo>, SlurmError>,
    ) {
        let watch = self.slurm_health.get_or_insert_with(SlurmWatch::default);
        let asked_at = watch.asking_since.take().map(|(_, at)| at);
        match answer {
            Ok(states) => {
                if let Some((since, _)) = watch.failing.take() {
                    info!(
                        "Slurm answers again (it had not since {})",
                        humantime::format_rfc3339_seconds(since)
                    );
                }
                self.slurm_answers = true;
                for id in &self.active {
                    let Some(run) = self.runs.get_mut(id) else {
                        continue;
                    };
                    let Some(job) = &run.slurm_job else { continue };
                    if !ids.contains(job) {
                        continue;
                    }
                    // Absent from both squeue and sacct: Slurm has forgotten
                    // the job (purged, or another cluster's): it is not alive.
                    let alive = states.get(job).is_some_and(|info| info.state.is_alive());
                    run.slurm_state = states.get(job).map(|info| info.state.name().to_string());
                    if alive {
                        run.gone_since = None;
                    } else if run.gone_since.is_none() {
                        run.gone_since = Some(Instant::now());
                    }
                }
            }
            Err(e) => {
                if watch.failing.is_none() {
                    warn!(
                        error = %e,
                        "asking Slurm failed ({e}); using the quiescence timeout until it answers"
                    );
                }
                let since = watch
                    .failing
                    .as_ref()
                    .map(|(since, _)| *since)
                    .or(asked_at)
                    .unwrap_or_else(SystemTime::now);
                watch.failing = Some((since, e.to_string()));
                self.slurm_answers = false;
            }
        }
    }

    /// Why `sacct` failed while `squeue` answered (how ended jobs ended is
    /// then unknown), or `None` when it answered, for `status` (the Slurm
    /// module logs it, once each way).
    pub(super) fn take_accounting(&mut self, accounting: Option<String>) {
        let watch = self.slurm_health.get_or_insert_with(SlurmWatch::default);
        watch.accounting_failing = accounting;
    }

    /// What `status` says of Slurm: answering, or not since when and why
    /// (a query out longer than [`SLURM_SLOW`] counts as not answering).
    pub(super) fn slurm_report(&self) -> Option<SlurmHealth> {
        let watch = self.slurm_health.as_ref()?;
        if let Some((since, error)) = &watch.failing {
            return Some(SlurmHealth {
                answering: false,
                since: Some(humantime::format_rfc3339_seconds(*since).to_string()),
                error: Some(error.clone()),
            });
        }
        match watch.asking_since {
            Some((began, at)) if began.elapsed() >= SLURM_SLOW => Some(SlurmHealth {
                answering: false,
                since: Some(humantime::format_rfc3339_seconds(at).to_string()),
                error: Some(format!(
                    "no answer yet to the query sent {} s ago",
                    began.elapsed().as_secs()
                )),
            }),
            _ => Some(SlurmHealth {
                answering: true,
                since: None,
                error: None,
            }),
        }
    }

    /// Runs without exit record whose writer is gone get a verdict and are
    /// queued to be finalized.
    pub(super) fn decide_finalization(&mut self, config: &DaemonConfig) {
        let now = Instant::now();
        let mut finalize = Vec::new();
        for id in &self.active {
            let Some(run) = self.runs.get_mut(id) else {
                continue;
            };
            if run.ended
                || run.verdict.is_some()
                || run.phase != Phase::Live
                || matches!(self.schedule.state(id), State::Stopped(_))
            {
                continue;
            }
            let job = run.slurm_job.clone().unwrap_or_default();
            let verdict = if let (Some(since), true) = (run.gone_since, self.slurm_answers) {
                (now.duration_since(since) >= config.grace).then(|| Verdict {
                    reason: match &run.slurm_state {
                        Some(state) => format!(
                            "Slurm job {job} ended ({state}) without the run writing an exit record"
                        ),
                        None => format!(
                            "Slurm no longer knows job {job}, and the run wrote no exit record"
                        ),
                    },
                    slurm_state: run.slurm_state.clone(),
                })
            } else if run.slurm_job.is_none() || !self.slurm_answers {
                let quiet = run
                    .newest_mtime
                    .and_then(|m| SystemTime::now().duration_since(m).ok());
                quiet.filter(|q| *q >= config.quiescence).map(|q| Verdict {
                    reason: format!(
                        "no exit record and no change for {}: taken as cut off",
                        humantime::format_duration(Duration::from_secs(q.as_secs()))
                    ),
                    slurm_state: None,
                })
            } else {
                None
            };
            if let Some(verdict) = verdict {
                info!(run = %id, reason = %verdict.reason, "to be finalized: {}", verdict.reason);
                run.verdict = Some(verdict);
                finalize.push(id.clone());
            }
        }
        for id in &finalize {
            self.schedule.enqueue(id);
        }
    }
}
