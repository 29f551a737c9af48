//! [`Workload`]: the sessions that drive the deployment, the realtime subscribers and the
//! convergence probes, from start to stop.
//!
//! ```text
//! start: subscribers (one per URL) open ─▶ C sessions loop: pick an op, a URL, send, record an Op
//!        every N-th acknowledged write ─▶ a Probe
//! stop:  sessions finish their request in flight ─▶ History  (subscribers and probes keep going
//!        until the settle period ends: crate::settle)
//! ```
//! Each session holds the last `X-PostCache-Token` it got and sends it on its token-carrying
//! reads. The run keeps fewer than [`MAX_LIVE`] posts alive so one feed page (limit 100) lists
//! them all and feed checks can be exact.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::args::Plan;
use crate::error::CheckError;
use crate::events::Subscriber;
use crate::history::{Clock, Expected, Feed, History, Micros, Op, OpKind, Outcome};
use crate::probe::{Probe, Probed};
use crate::rng::XorShift;

/// Posts created (acknowledged or not) and not yet deleted stay below this.
pub const MAX_LIVE: usize = 80;

/// Names of one run: its tag and one author id per session.
#[derive(Debug, Clone)]
pub struct RunNames {
    /// The run's tag (also the author-id prefix): `chk-<seed>-<time>`.
    pub tag: String,
    /// Author id of each session: `<tag>-c<i>`.
    pub authors: Vec<String>,
}

impl RunNames {
    fn new(seed: u64, clients: usize) -> RunNames {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let tag = format!("chk-{:x}-{millis:x}", seed & 0xffff_ffff);
        let authors = (0..clients).map(|i| format!("{tag}-c{i}")).collect();
        RunNames { tag, authors }
    }
}

#[derive(Default)]
struct Pool {
    /// Acknowledged creates no delete was sent for.
    live: Vec<String>,
    /// Every acknowledged create.
    known: Vec<String>,
    /// Creates sent (not refused) minus deletes acknowledged.
    in_play: usize,
}

/// What sessions and probes share.
pub(crate) struct Shared {
    pub(crate) plan: Plan,
    pub(crate) urls: Arc<[String]>,
    pub(crate) api: Api,
    pub(crate) clock: Clock,
    pub(crate) names: RunNames,
    pool: Mutex<Pool>,
    pub(crate) deleting: Arc<Mutex<HashSet<String>>>,
    acked_writes: AtomicU64,
    probes: Mutex<Vec<JoinHandle<Probed>>>,
    /// Turns true when settling ends: probes and subscribers stop.
    pub(crate) settled: watch::Sender<bool>,
}

/// A running workload. [`Workload::stop`] it, then [`crate::settle::Stopped::check`] the result.
pub struct Workload {
    pub(crate) shared: Arc<Shared>,
    pub(crate) subscribers: Vec<Subscriber>,
    sessions: Vec<JoinHandle<Vec<Op>>>,
    stop: watch::Sender<bool>,
    pub(crate) started: Instant,
}

impl Workload {
    /// Opens the subscribers (waiting up to the request timeout for them) and starts the sessions.
    ///
    /// # Errors
    /// [`CheckError::Client`] when the HTTP client cannot be built.
    pub async fn start(plan: &Plan) -> Result<Workload, CheckError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(plan.clients * 2)
            .connect_timeout(plan.request_timeout)
            .build()
            .map_err(CheckError::Client)?;
        let clock = Clock::start();
        let names = RunNames::new(plan.seed, plan.clients);
        let (settled, settle_rx) = watch::channel(false);
        let topics = names
            .authors
            .iter()
            .map(|a| format!("author:{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let subscribers: Vec<Subscriber> = plan
            .urls
            .iter()
            .enumerate()
            .map(|(i, base)| {
                let (http, rx) = (http.clone(), settle_rx.clone());
                Subscriber::start(http, i, base.clone(), topics.clone(), clock, rx)
            })
            .collect();
        let deadline = Instant::now() + plan.request_timeout;
        while Instant::now() < deadline
            && subscribers.iter().any(|s| s.snapshot().connected.is_none())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let shared = Arc::new(Shared {
            api: Api::new(http, plan.api_token.clone(), plan.request_timeout),
            urls: plan.urls.clone().into(),
            plan: plan.clone(),
            clock,
            names,
            pool: Mutex::default(),
            deleting: Arc::default(),
            acked_writes: AtomicU64::new(0),
            probes: Mutex::default(),
            settled,
        });
        let (stop, stop_rx) = watch::channel(false);
        let sessions = (0..plan.clients)
            .map(|c| tokio::spawn(session(Arc::clone(&shared), c, stop_rx.clone())))
            .collect();
        Ok(Workload {
            shared,
            subscribers,
            sessions,
            stop,
            started: Instant::now(),
        })
    }

    /// The run's tag and author ids.
    pub fn names(&self) -> &RunNames {
        &self.shared.names
    }

    /// Stops the sessions (each finishes its request in flight) and indexes what they did.
    pub(crate) async fn stop_sessions(&mut self) -> History {
        let _ = self.stop.send(true);
        let mut ops = Vec::new();
        for session in self.sessions.drain(..) {
            if let Ok(done) = session.await {
                ops.extend(done);
            }
        }
        History::new(ops)
    }

    /// The probes started so far.
    pub(crate) fn take_probes(&self) -> Vec<JoinHandle<Probed>> {
        std::mem::take(
            &mut *self
                .shared
                .probes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl Shared {
    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sample(&self, post: &str, want: Expected, acked: Micros) {
        let every = self.plan.probe_every;
        if every == 0
            || !self
                .acked_writes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(every)
        {
            return;
        }
        let probe = Probe {
            api: self.api.clone(),
            urls: Arc::clone(&self.urls),
            clock: self.clock,
            post: post.to_owned(),
            want,
            acked,
            deleting: Arc::clone(&self.deleting),
        };
        let task = tokio::spawn(probe.run(self.settled.subscribe()));
        self.probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }
}

/// What a session does next.
enum Choice {
    Create,
    Update(String),
    Delete(String),
    Get(String, bool),
    List(Feed, bool),
}

fn choose(shared: &Shared, rng: &mut XorShift, client: usize) -> Choice {
    let pool = shared.pool();
    let roll = rng.below(100);
    let live = |rng: &mut XorShift| pool.live[rng.below(pool.live.len())].clone();
    let full = pool.in_play >= MAX_LIVE;
    match roll {
        _ if pool.live.is_empty() && !full => Choice::Create,
        0..14 if !full => Choice::Create,
        // A create when the run is full becomes a delete.
        0..17 if !pool.live.is_empty() => Choice::Delete(live(rng)),
        17..41 if !pool.live.is_empty() => Choice::Update(live(rng)),
        41..69 if !pool.known.is_empty() => {
            // Mostly live posts; some deleted ones, whose 404s are checked too.
            let post = if rng.below(100) < 85 && !pool.live.is_empty() {
                live(rng)
            } else {
                pool.known[rng.below(pool.known.len())].clone()
            };
            Choice::Get(post, roll < 55)
        }
        69..87 => Choice::List(Feed::Tag, roll < 78),
        _ => {
            let author = if rng.below(2) == 0 {
                client
            } else {
                rng.below(shared.names.authors.len())
            };
            Choice::List(
                Feed::Author(shared.names.authors[author].clone()),
                roll < 94,
            )
        }
    }
}

async fn session(shared: Arc<Shared>, client: usize, mut stop: watch::Receiver<bool>) -> Vec<Op> {
    let mut rng = XorShift::new(shared.plan.seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9));
    let period = shared
        .plan
        .rate
        .map(|rate| Duration::from_secs_f64(shared.plan.clients as f64 / rate));
    let mut next = tokio::time::Instant::now();
    let mut token: Option<String> = None;
    let mut ops = Vec::new();
    while !*stop.borrow() {
        if let Some(period) = period {
            next += period;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => break,
            }
        }
        let choice = choose(&shared, &mut rng, client);
        let url = rng.below(shared.urls.len());
        let op = perform(&shared, client, url, choice, &mut token, ops.len()).await;
        ops.push(op);
    }
    ops
}

async fn perform(
    shared: &Shared,
    client: usize,
    url: usize,
    choice: Choice,
    token: &mut Option<String>,
    n: usize,
) -> Op {
    let base = shared.urls[url].as_str();
    let api = &shared.api;
    let invoked = shared.clock.now();
    let title = format!("check c{client} #{n}");
    let mut tier = None;
    let (kind, outcome) = match choice {
        Choice::Create => {
            shared.pool().in_play += 1;
            let author = &shared.names.authors[client];
            let (outcome, new) = api
                .create(base, author, &shared.names.tag, &title, token.as_deref())
                .await;
            *token = new.or(token.take());
            (OpKind::Create, outcome)
        }
        Choice::Update(post) => {
            let (outcome, new) = api.update(base, &post, &title, token.as_deref()).await;
            *token = new.or(token.take());
            (OpKind::Update { post }, outcome)
        }
        Choice::Delete(post) => {
            shared.pool().live.retain(|p| *p != post);
            shared
                .deleting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(post.clone());
            let (outcome, new) = api.delete(base, &post, token.as_deref()).await;
            *token = new.or(token.take());
            (OpKind::Delete { post }, outcome)
        }
        Choice::Get(post, with_token) => {
            let sent = token.as_deref().filter(|_| with_token);
            let (outcome, served_by) = api.get_tiered(base, &post, sent).await;
            tier = served_by;
            let token = sent.is_some();
            (OpKind::Get { post, token }, outcome)
        }
        Choice::List(feed, with_token) => {
            let sent = token.as_deref().filter(|_| with_token);
            let (outcome, served_by) = api.list_tiered(base, &shared.names.tag, &feed, sent).await;
            tier = served_by;
            let token = sent.is_some();
            (OpKind::List { feed, token }, outcome)
        }
    };
    let completed = shared.clock.now();
    account(shared, &kind, &outcome, completed);
    Op {
        client,
        url,
        invoked,
        completed,
        kind,
        outcome,
        tier,
    }
}

/// Updates the pool and samples a probe after a write.
fn account(shared: &Shared, kind: &OpKind, outcome: &Outcome, completed: Micros) {
    match (kind, outcome) {
        (OpKind::Create, Outcome::Written { post, version }) => {
            let mut pool = shared.pool();
            pool.live.push(post.clone());
            pool.known.push(post.clone());
            drop(pool);
            shared.sample(post, Expected::AtLeast(*version), completed);
        }
        (OpKind::Create, Outcome::Rejected { .. }) => shared.pool().in_play -= 1,
        (OpKind::Update { .. }, Outcome::Written { post, version }) => {
            shared.sample(post, Expected::AtLeast(*version), completed);
        }
        (OpKind::Delete { post }, Outcome::Deleted) => {
            let mut pool = shared.pool();
            pool.in_play = pool.in_play.saturating_sub(1);
            drop(pool);
            shared.sample(post, Expected::Gone, completed);
        }
        _ => {}
    }
}
