//! Whether the servers can be reached: offline as soon as a request cannot
//! reach its server, one cheap probe now and then while offline (a task,
//! bounded by the request timeout), online again at the first answer.

use super::*;

impl DaemonState {
    /// Takes a probe's answer: back online, or offline a while longer.
    pub(super) fn take_probe(&mut self, reply: ProbeReply) {
        self.probing = false;
        if self.offline_until.is_none() {
            // An upload went through while the probe was out.
            return;
        }
        match reply {
            Err(error) => {
                debug!(error = %error, "probe: still offline");
                self.offline_error = Some(error);
                self.offline_probes = self.offline_probes.saturating_add(1);
                let wait = schedule::PROBE_RETRY.backoff(self.offline_probes);
                self.offline_until = Some(Instant::now() + wait);
            }
            Ok(()) => {
                info!("server reachable again, resuming uploads");
                self.back_online();
            }
        }
    }

    /// A request of any worker that could not reach its server puts the
    /// daemon offline at once (its own retries go on): it does not wait
    /// for that worker to give up. Also keeps `last_contact` current.
    pub(super) fn watch_contact(&mut self, targets: &Clients) {
        for client in targets.clients() {
            let contact = client.contact();
            if contact.last_answer > self.last_contact {
                self.last_contact = contact.last_answer;
            }
            let Some(since) = contact.unreachable_since else {
                continue;
            };
            // The outage it belongs to was already ridden out.
            if self.online_at.is_some_and(|online| since < online) {
                continue;
            }
            let error = contact.last_error.unwrap_or_default();
            self.go_offline(since, format!("{}: {error}", client.base_url()));
        }
    }

    pub(super) fn go_offline(&mut self, since: SystemTime, error: String) {
        if self.offline_until.is_none() {
            warn!(error = %error, "server unreachable, going offline: {error}");
            self.offline_probes = 0;
            self.offline_until = Some(Instant::now() + schedule::PROBE_RETRY.backoff(0));
            self.offline_since = Some(since);
        }
        self.offline_error = Some(error);
    }

    /// Online again: the runs that waited for the network are still
    /// queued, and uploads start again.
    pub(super) fn back_online(&mut self) {
        self.offline_until = None;
        self.offline_probes = 0;
        self.offline_since = None;
        self.offline_error = None;
        self.online_at = Some(SystemTime::now());
    }

    /// `online`, `offline`, or `not contacted yet`: online only once a
    /// request was answered, and not while the newest could not reach it.
    pub(super) fn network(&self) -> &'static str {
        match (self.offline_until, self.last_contact) {
            (Some(_), _) => "offline",
            (None, None) => "not contacted yet",
            (None, Some(_)) => "online",
        }
    }
}

/// While offline: one cheap request to each server, one attempt each,
/// bounded by the request timeout; any HTTP answer means the network is
/// back.
pub(super) async fn probe(clients: Vec<Arc<Client>>, timeout: Duration) -> ProbeReply {
    let mut why = String::from("no server to ask");
    for client in clients {
        let once = client.with_attempts(1);
        match tokio::time::timeout(timeout, ops::server_features(&once)).await {
            Ok(Err(e)) if e.is_offline() => why = format!("{}: {e}", client.base_url()),
            Err(_) => {
                why = format!(
                    "{}: no answer within {}",
                    client.base_url(),
                    humantime::format_duration(timeout)
                );
            }
            Ok(_) => return Ok(()),
        }
    }
    Err(why)
}
