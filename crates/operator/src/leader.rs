//! Leader election by a `coordination.k8s.io/v1` Lease, written with kube directly. A replica
//! becomes leader when the Lease is absent, released, expired, or already its own; it renews every
//! third of the lease duration and stops leading when no renewal has succeeded for two thirds of
//! it (the renew deadline), even while a call still hangs. Updates carry the resourceVersion, so
//! two candidates never both win.
//!
//! Expiry is judged by local observation, never by comparing the holder's `renewTime` with this
//! machine's clock (clocks disagree): a candidate records when it first saw the Lease's current
//! version, and takes over only when that version has stood unchanged for a whole lease duration.
//! The holder counts its deadline from *before* its last successful renewal was sent, so it always
//! stops before anyone may take over, however slow the apiserver.
//!
//! ```text
//! candidate ──acquire──▶ leader ──renew every d/3──▶ leader … ──release (SIGTERM)──▶ gone
//!                           └── no renewal for 2d/3 ──▶ lost (stop reconciling)
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

/// One replica's view of the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease version last read, and when this replica first saw it.
    observed: Arc<Mutex<Option<(String, Instant)>>>,
}

impl LeaseLock {
    /// The Lease `name` in `namespace`, competed for as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: Arc::new(Mutex::new(None)),
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this replica holds the Lease; returns when the attempt that won it was sent
    /// (the start of its renew deadline).
    pub async fn acquire(&self) -> Instant {
        loop {
            let sent = Instant::now();
            match tokio::time::timeout(self.retry_period(), self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => return sent,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "lease: acquire failed"),
                Err(_) => tracing::warn!("lease: the apiserver did not answer in time"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the Lease, the first renewal one retry period after `since` (when the winning
    /// attempt was sent), until no renewal has succeeded within the renew deadline or another
    /// holder is seen; then returns (leadership is lost). A call that hangs is abandoned at the
    /// deadline.
    pub async fn hold(&self, since: Instant) {
        let mut renewed = since;
        loop {
            tokio::time::sleep(self.retry_period()).await;
            let deadline = renewed + self.renew_deadline();
            let sent = Instant::now();
            let Some(left) = deadline.checked_duration_since(sent) else {
                tracing::warn!("lease: not renewed within the renew deadline; stepping down");
                return;
            };
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = sent,
                Ok(Ok(false)) => {
                    tracing::warn!("lease: another replica holds it");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease: renewal failed"),
                Err(_) => {
                    tracing::warn!(
                        "lease: the renewal hung past the renew deadline; stepping down"
                    );
                    return;
                }
            }
        }
    }

    /// How long the holder may go without a successful renewal: two thirds of the duration, so
    /// it has stepped down a third of a duration before any candidate may take over.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once.
    ///
    /// # Errors
    /// The API error of reading or writing the Lease.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }

    /// How long this replica has seen the Lease at `version` (zero when it just changed).
    fn seen_for(&self, version: String) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match &*observed {
            Some((seen, at)) if *seen == version => at.elapsed(),
            _ => {
                *observed = Some((version, Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn retry_period(&self) -> Duration {
        (self.duration / 3).max(Duration::from_millis(200))
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt: `Ok(true)` when this replica holds the Lease afterwards.
    ///
    /// # Errors
    /// API errors other than a lost race (409), which is `Ok(false)`.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let seen_for = self.seen_for(version);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && held(spec, seen_for) {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = Some(MicroTime(now));
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }
}

/// Whether someone holds the Lease, which this replica has seen unchanged for `seen_for`: a
/// holder, and not yet a whole lease duration of silence observed here.
fn held(spec: &LeaseSpec, seen_for: Duration) -> bool {
    let Some(holder) = &spec.holder_identity else {
        return false;
    };
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15));
    !holder.is_empty() && seen_for < duration
}

fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;

    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago_by_its_clock: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago_by_its_clock),
            )),
            lease_duration_seconds: Some(10),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_by_what_this_replica_saw_not_by_the_holders_clock() {
        let secs = Duration::from_secs;
        assert!(held(&spec(Some("a"), 2), secs(2)));
        assert!(
            !held(&spec(Some("a"), 2), secs(11)),
            "silent for a duration here"
        );
        assert!(
            held(&spec(Some("a"), 3600), secs(1)),
            "a holder whose clock runs an hour behind still holds what was just written"
        );
        assert!(!held(&spec(None, 0), secs(0)));
        assert!(!held(&spec(Some(""), 0), secs(0)));
    }
}
