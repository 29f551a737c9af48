//! Convergence probes: after a sampled write is acknowledged, read the post without a token on
//! every URL until each serves it, and take the time from the acknowledgement to the last URL's
//! first fresh answer (an upper bound: the answer's arrival).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::Api;
use crate::history::{Clock, Expected, Micros, Outcome};

/// Longest pause between two reads of one probe.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Probed {
    /// Every URL served the write this many ms after its acknowledgement.
    Converged(f64),
    /// Some URL never did before the run ended.
    Not,
    /// A delete of the post was sent meanwhile: nothing to measure.
    Superseded,
}

/// One sampled write.
pub(crate) struct Probe {
    pub(crate) api: Api,
    pub(crate) urls: Arc<[String]>,
    pub(crate) clock: Clock,
    pub(crate) post: String,
    pub(crate) want: Expected,
    pub(crate) acked: Micros,
    /// Posts a delete was sent for.
    pub(crate) deleting: Arc<Mutex<HashSet<String>>>,
}

impl Probe {
    /// Probes every URL at once until converged, superseded or `stop`.
    pub(crate) async fn run(self, stop: watch::Receiver<bool>) -> Probed {
        let this = Arc::new(self);
        let tasks: Vec<_> = (0..this.urls.len())
            .map(|url| tokio::spawn(Arc::clone(&this).on(url, stop.clone())))
            .collect();
        let mut latest: Micros = 0;
        for task in tasks {
            match task.await {
                Ok(Some(at)) => latest = latest.max(at),
                Ok(None) | Err(_) => return this.gave_up(),
            }
        }
        Probed::Converged(latest.saturating_sub(this.acked) as f64 / 1000.0)
    }

    fn gave_up(&self) -> Probed {
        if self.superseded() {
            Probed::Superseded
        } else {
            Probed::Not
        }
    }

    fn superseded(&self) -> bool {
        self.want != Expected::Gone
            && self
                .deleting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&self.post)
    }

    /// When `url` first served the write; `None` if it never did.
    async fn on(self: Arc<Self>, url: usize, mut stop: watch::Receiver<bool>) -> Option<Micros> {
        let mut pause = Duration::from_millis(1);
        loop {
            let outcome = self.api.get(&self.urls[url], &self.post, None).await;
            let at = self.clock.now();
            let fresh = match (self.want, &outcome) {
                (Expected::AtLeast(v), Outcome::Found { version }) => *version >= v,
                (Expected::Gone, Outcome::Absent) => true,
                _ => false,
            };
            if fresh {
                return Some(at);
            }
            if *stop.borrow() || self.superseded() {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return None,
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}
