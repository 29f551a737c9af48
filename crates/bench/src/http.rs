//! The HTTP load: seed, then a read / write / feed mix on `--concurrency` keep-alive
//! connections, closed loop or open loop; optionally the identical load against a second server.
//!
//! Each connection is one hyper HTTP/1.1 client connection with one request in flight, as wrk
//! drives a server: no pool, no per-request URL parsing, so one client core keeps up with a
//! server core. In open loop, request `i` is due at `start + i / rate`; its latency runs from
//! then, so when the server stalls the requests that pile up count (coordinated omission).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::args::{BenchArgs, BenchError};
use crate::keys::{Picker, describe};
use crate::report::{CompareReport, HttpReport, Ops, Ratio};
use crate::server::Window;
use crate::stats::OpStats;

/// Where requests go: `host:port` to connect to, the `Host` header, and the base path.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) addr: String,
    host: HeaderValue,
    base: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, BenchError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| BenchError::Invalid(format!("`{url}` is not a URL: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(BenchError::Invalid(format!(
                "`{url}`: bench speaks plain http (put it next to the server, not behind TLS)"
            )));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| BenchError::Invalid(format!("`{url}` names no host")))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = format!("{host}:{port}");
        Ok(Target {
            host: HeaderValue::from_str(&addr)
                .map_err(|e| BenchError::Invalid(format!("`{url}`: {e}")))?,
            addr,
            base: parsed.path().trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) fn path(&self, rest: &str) -> String {
        format!("{}{rest}", self.base)
    }

    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }
}

/// One keep-alive HTTP/1.1 connection.
pub(crate) async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(&target.addr)
        .await
        .map_err(|e| format!("connecting to {}: {e}", target.addr))?;
    let _ = stream.set_nodelay(true);
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(send)
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Feed,
}

/// What every connection of one run shares.
struct Run {
    target: Target,
    token: Option<HeaderValue>,
    ids: Arc<Vec<String>>,
    picker: Picker,
    read_ratio: f64,
    feed_ratio: f64,
    rate: Option<f64>,
    seconds: f64,
    seed: u64,
    start: Instant,
    next_slot: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// Per shard (connection % SHARDS): read, write, feed stats and read tiers.
    shards: Vec<Mutex<Shard>>,
}

const SHARDS: usize = 8;

struct Shard {
    ops: [OpStats; 3],
    tiers: BTreeMap<String, u64>,
}

impl Shard {
    fn new(seconds: f64) -> Shard {
        Shard {
            ops: std::array::from_fn(|_| OpStats::new(seconds)),
            tiers: BTreeMap::new(),
        }
    }

    /// All shards' figures in one.
    fn merged(shards: &[Mutex<Shard>], seconds: f64) -> Shard {
        let mut total = Shard::new(seconds);
        for shard in shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (all, part) in total.ops.iter_mut().zip(&shard.ops) {
                all.merge(part);
            }
            for (tier, n) in &shard.tiers {
                *total.tiers.entry(tier.clone()).or_insert(0) += n;
            }
        }
        total
    }
}

/// Seeds (unless `ids` are given), runs the load and returns the measured ops.
pub(crate) async fn run(args: &BenchArgs) -> Result<HttpReport, BenchError> {
    if !(0.0..=1.0).contains(&args.read_ratio)
        || !(0.0..=1.0).contains(&args.feed_ratio)
        || args.read_ratio + args.feed_ratio > 1.0 + 1e-9
    {
        return Err(BenchError::Invalid(
            "--read-ratio and --feed-ratio are fractions that add up to at most 1".into(),
        ));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Invalid("--rate must be above 0".into()));
    }
    if args.posts == 0 {
        return Err(BenchError::Invalid("--posts must be at least 1".into()));
    }
    if args.concurrency == 0 {
        return Err(BenchError::Invalid(
            "--concurrency must be at least 1".into(),
        ));
    }
    let target = Target::parse(&args.url)?;
    let compare = args.compare_url.as_deref().map(Target::parse).transpose()?;
    let token = args
        .token
        .as_deref()
        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
        .transpose()
        .map_err(|_| BenchError::Invalid("--token holds characters a header cannot".into()))?;
    let ids = Arc::new(seed(args).await?);
    if let Some(dir) = &args.mirror_dir {
        mirror(args, &ids, dir).await?;
    }
    let (ops, tiers, server) = load(args, &target, token.clone(), &ids, args.pid).await?;
    let compare = match (compare, &args.compare_url) {
        (Some(other), Some(url)) => {
            let (theirs, _, their_server) =
                load(args, &other, token, &ids, args.compare_pid).await?;
            Some(CompareReport {
                url: url.clone(),
                ratio: Ratio::of(&ops, &theirs),
                ops: theirs,
                server: their_server,
            })
        }
        _ => None,
    };
    Ok(HttpReport {
        mode: crate::args::Mode::Http,
        url: args.url.clone(),
        seconds: args.seconds,
        concurrency: args.concurrency,
        open_loop_rate: args.rate,
        keys: describe(args.keys, args.zipf_theta),
        posts: ids.len(),
        ops,
        read_tiers: tiers,
        server,
        compare,
    })
}

type Measured = (
    Ops,
    BTreeMap<String, u64>,
    Option<crate::server::ServerUsage>,
);

async fn load(
    args: &BenchArgs,
    target: &Target,
    token: Option<HeaderValue>,
    ids: &Arc<Vec<String>>,
    pid: Option<i32>,
) -> Result<Measured, BenchError> {
    let picker = Picker::new(ids.len(), args.keys, args.zipf_theta).map_err(BenchError::Invalid)?;
    let run = Arc::new(Run {
        target: target.clone(),
        token,
        ids: Arc::clone(ids),
        picker,
        read_ratio: args.read_ratio,
        feed_ratio: args.feed_ratio,
        rate: args.rate,
        seconds: args.seconds,
        seed: args.seed,
        start: Instant::now(),
        next_slot: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        shards: (0..SHARDS)
            .map(|_| Mutex::new(Shard::new(args.seconds)))
            .collect(),
    });
    let window = Window::start(pid);
    let progress = (!args.quiet && args.seconds >= 10.0).then(|| {
        let run = Arc::clone(&run);
        let label = target.addr.clone();
        tokio::spawn(async move { progress(&run, &label).await })
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let run = Arc::clone(&run);
            tokio::spawn(async move { worker(&run, w).await })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let server = window.and_then(|w| w.end());
    let total = Shard::merged(&run.shards, args.seconds);
    let [read, write, feed] = &total.ops;
    Ok((
        Ops::of(read, write, feed, args.seconds),
        total.tiers,
        server,
    ))
}

async fn progress(run: &Run, label: &str) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let done = run.done.load(Ordering::Relaxed);
        eprintln!(
            "[{label} {:>4.0} s] {:>9.0} ok/s, {} failed so far",
            run.start.elapsed().as_secs_f64(),
            (done - last) as f64 / 5.0,
            run.failed.load(Ordering::Relaxed)
        );
        last = done;
    }
}

async fn worker(run: &Run, index: usize) {
    // The same seed and connection index give the same sequence of operations.
    let mut rng =
        SmallRng::seed_from_u64(run.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    let shard = &run.shards[index % SHARDS];
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    let mut answered = run.start;
    while let Some(start) = run.next_start(answered).await {
        let (op, request) = run.draw(&mut rng);
        let outcome = send(&mut connection, &run.target, request).await;
        answered = Instant::now();
        run.record(shard, op, start, answered, outcome);
    }
}

impl Run {
    /// When the next request's latency starts, `None` once the run is over. Closed loop: now.
    /// Open loop: the next slot's due time, waited for; if the server held this connection
    /// (`answered`) past it, the wait counts, otherwise the timer's millisecond grain is ours,
    /// not the server's, and the clock starts now.
    async fn next_start(&self, answered: Instant) -> Option<Instant> {
        let end = self.start + Duration::from_secs_f64(self.seconds);
        let Some(rate) = self.rate else {
            let now = Instant::now();
            return (now < end).then_some(now);
        };
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let due = self.start + Duration::from_secs_f64(slot as f64 / rate);
        if due >= end {
            return None;
        }
        tokio::time::sleep_until(due.into()).await;
        Some(if answered > due { due } else { Instant::now() })
    }

    /// The next operation of the mix, and its request.
    fn draw(&self, rng: &mut SmallRng) -> (Op, Request<Full<Bytes>>) {
        let draw: f64 = rng.random();
        if draw < self.read_ratio {
            let id = &self.ids[self.picker.pick(rng)];
            let path = format!("/v1/posts/{id}");
            (Op::Read, request(self, Method::GET, &path, None))
        } else if draw < self.read_ratio + self.feed_ratio {
            let path = "/v1/posts?limit=20";
            (Op::Feed, request(self, Method::GET, path, None))
        } else {
            let id = &self.ids[self.picker.pick(rng)];
            let body = format!(r#"{{"body":"edited by bench, draw {draw}"}}"#);
            let path = format!("/v1/posts/{id}");
            (Op::Write, request(self, Method::PATCH, &path, Some(body)))
        }
    }

    /// Records one outcome (`Some(tier)`: a 2xx answer) of a request started at `start`.
    fn record(
        &self,
        shard: &Mutex<Shard>,
        op: Op,
        start: Instant,
        answered: Instant,
        outcome: Option<Option<String>>,
    ) {
        let at = start.duration_since(self.start).as_secs_f64();
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = &mut shard.ops[op as usize];
        match outcome {
            Some(tier) => {
                stats.record(at, answered.duration_since(start).as_micros() as u64);
                if let (Op::Read, Some(tier)) = (op, tier) {
                    *shard.tiers.entry(tier).or_insert(0) += 1;
                }
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                stats.error(at);
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn request(run: &Run, method: Method, path: &str, body: Option<String>) -> Request<Full<Bytes>> {
    let has_body = body.is_some();
    let mut request = Request::new(Full::new(body.map(Bytes::from).unwrap_or_default()));
    *request.method_mut() = method;
    *request.uri_mut() = run.target.path(path).parse().unwrap_or_default();
    let headers = request.headers_mut();
    headers.insert(HOST, run.target.host.clone());
    if has_body {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(token) = &run.token {
            headers.insert(AUTHORIZATION, token.clone());
        }
    }
    request
}

/// Sends on the connection (reconnecting when it broke): `Some(tier header)` on a 2xx answer
/// whose body arrived whole, `None` otherwise.
async fn send(
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    target: &Target,
    request: Request<Full<Bytes>>,
) -> Option<Option<String>> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = connect(target).await.ok();
    }
    let sender = connection.as_mut()?;
    if sender.ready().await.is_err() {
        *connection = None;
        return None;
    }
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => {
            *connection = None;
            return None;
        }
    };
    let ok = response.status().is_success();
    let tier = response
        .headers()
        .get("x-postcache-tier")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if response.into_body().collect().await.is_err() {
        *connection = None;
        return None;
    }
    ok.then_some(tier)
}

/// Creates `--posts` posts (16 at a time) and returns their ids in creation order.
async fn seed(args: &BenchArgs) -> Result<Vec<String>, BenchError> {
    let client = reqwest::Client::new();
    let posts = futures_util::stream::iter(0..args.posts)
        .map(|i| {
            let client = client.clone();
            async move {
                let body = serde_json::json!({
                    "author_id": format!("bench{}", i % 50),
                    "title": format!("benchmark post {i}"),
                    "body": "x".repeat(400),
                    "tags": [format!("t{}", i % 20)],
                });
                let response = create_post(&client, args, &body)
                    .send()
                    .await
                    .map_err(|e| BenchError::Seed(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(BenchError::Seed(format!(
                        "POST /v1/posts answered {}",
                        response.status()
                    )));
                }
                let post: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|e| BenchError::Seed(e.to_string()))?;
                Ok((i, post["id"].as_str().unwrap_or_default().to_owned()))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut ids = posts.into_iter().collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}

/// `POST /v1/posts` of `post` to the target, with the bearer token when there is one.
pub(crate) fn create_post(
    client: &reqwest::Client,
    args: &BenchArgs,
    post: &serde_json::Value,
) -> reqwest::RequestBuilder {
    let request = client.post(format!("{}/v1/posts", args.url)).json(post);
    match &args.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Writes each post's body, as the target serves it, to `dir/v1/posts/{id}`.
async fn mirror(args: &BenchArgs, ids: &[String], dir: &Path) -> Result<(), BenchError> {
    let posts = dir.join("v1").join("posts");
    let failed = |e: &dyn std::fmt::Display| BenchError::Invalid(format!("--mirror-dir: {e}"));
    std::fs::create_dir_all(&posts).map_err(|e| failed(&e))?;
    let client = reqwest::Client::new();
    for id in ids {
        let body = client
            .get(format!("{}/v1/posts/{id}", args.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| failed(&e))?
            .bytes()
            .await
            .map_err(|e| failed(&e))?;
        std::fs::write(posts.join(id), &body).map_err(|e| failed(&e))?;
    }
    Ok(())
}
