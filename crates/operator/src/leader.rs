//! Leader election by a `coordination.k8s.io/v1` Lease, written with kube directly. A replica
//! becomes leader when the Lease is absent, released, expired, or already its own; it renews every
//! third of the lease duration and counts as lost when a renewal cannot be written before the
//! lease would expire. Updates carry the resourceVersion, so two candidates never both win.
//!
//! ```text
//! candidate ──acquire──▶ leader ──renew every d/3──▶ leader … ──release (SIGTERM)──▶ gone
//!                           └── renewal fails for d ──▶ lost (stop reconciling)
//! ```

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};

/// One replica's view of the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
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
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lease: acquire failed"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the Lease until a renewal cannot be written for a whole lease duration, or another
    /// holder is seen; then returns (leadership is lost).
    pub async fn hold(&self) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    tracing::warn!("lease: another replica holds it");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "lease: renewal failed"),
            }
            if last_renewal.elapsed() >= self.duration {
                return;
            }
        }
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
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && held(spec, now) {
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

/// Whether someone holds the Lease at `now`: a holder whose renewal is younger than the duration.
fn held(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(holder), Some(renewed)) = (&spec.holder_identity, &spec.renew_time) else {
        return false;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    !holder.is_empty() && now.duration_since(renewed.0) < duration
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
    use super::*;

    fn spec(holder: Option<&str>, age_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(age_secs),
            )),
            lease_duration_seconds: Some(10),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_fresh_lease_is_held_an_expired_or_released_one_is_not() {
        let now = Timestamp::now();
        assert!(held(&spec(Some("a"), 2), now));
        assert!(!held(&spec(Some("a"), 11), now));
        assert!(!held(&spec(None, 0), now));
        assert!(!held(&spec(Some(""), 0), now));
    }
}
