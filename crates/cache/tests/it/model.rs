//! L2's WRITE and FILL scripts against a model, on real Redis and on Redis Cluster: random
//! sequences of write-throughs (versions sometimes going backwards, as from a late relay), fill
//! leases, fills under the held lease or a stale one, admin invalidations and Redis evicting only
//! a value; every post is read back after every step.
//!
//! ```text
//! per post:  floor  = max version ever written through (survives invalidate and evict)
//!            value  = WRITE v   if v >= floor and v > value
//!                     FILL v    if the lease is the current one, v >= floor and v > value
//!            lease  = LEASE     if none is held; voided by WRITE, INVALIDATE and every FILL under it
//! invariant: the value is never older than the floor (L2 never holds a version older than one
//!            written through)
//! ```

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use postcache_cache::{Filled, L2, L2Config, Lease, RedisConfig, RedisConn};
use postcache_testkit::{Redis, RedisCluster};

use crate::shared::post;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Posts per case (few, so that operations collide on them).
const POSTS: usize = 3;

/// One step of a case; `post` indexes the case's posts.
#[derive(Debug, Clone)]
enum Op {
    /// Write-through of `version` after a commit.
    Write { post: usize, version: i64 },
    /// A reader asks for the fill lease.
    Lease { post: usize },
    /// A reader fills `version` under a lease it took: the newest one (`None`) or any earlier.
    Fill {
        post: usize,
        lease: Option<Index>,
        version: i64,
    },
    /// Admin invalidation: value and lease go.
    Invalidate { post: usize },
    /// Redis evicts the value key alone.
    Evict { post: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let post = || 0..POSTS;
    let lease = prop_oneof![2 => Just(None), 1 => any::<Index>().prop_map(Some)];
    prop_oneof![
        3 => (post(), 1..7i64).prop_map(|(post, version)| Op::Write { post, version }),
        2 => post().prop_map(|post| Op::Lease { post }),
        3 => (post(), lease, 0..7i64)
            .prop_map(|(post, lease, version)| Op::Fill { post, lease, version }),
        1 => post().prop_map(|post| Op::Invalidate { post }),
        1 => post().prop_map(|post| Op::Evict { post }),
    ]
}

/// What L2 should hold for one post, and the leases the test's readers took on it.
#[derive(Debug, Default)]
struct Expected {
    /// Max version written through (0: none yet).
    floor: i64,
    value: Option<i64>,
    /// Index in `taken` of the lease Redis holds now.
    lease: Option<usize>,
    taken: Vec<Lease>,
}

/// Ids never used before in this process (the scripts' keys have no per-test prefix).
fn fresh_ids() -> [i64; POSTS] {
    static NEXT: AtomicI64 = AtomicI64::new(7_000_000_000);
    let base = NEXT.fetch_add(POSTS as i64, Ordering::Relaxed);
    std::array::from_fn(|i| base + i as i64)
}

/// Long enough that nothing expires during a case: expiry is not what is modelled.
fn l2_config() -> L2Config {
    L2Config {
        post_ttl: Duration::from_secs(600),
        feed_ttl: Duration::from_secs(600),
        lease: Duration::from_secs(600),
        floor_ttl: Duration::from_secs(600),
    }
}

/// A Redis call of the test that failed: the case fails with the step.
fn failed(op: &Op, e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{op:?}: {e}"))
}

/// Applies `op` to L2 and to the model, checking what L2 answered.
async fn step(
    l2: &L2,
    raw: &mut RedisConn,
    ids: &[i64; POSTS],
    model: &mut [Expected; POSTS],
    op: &Op,
) -> Result<(), TestCaseError> {
    match *op {
        Op::Write { post: p, version } => {
            l2.write(&post(ids[p], version))
                .await
                .map_err(|e| failed(op, e))?;
            let m = &mut model[p];
            if version >= m.floor && m.value.is_none_or(|v| v < version) {
                m.value = Some(version);
            }
            m.floor = m.floor.max(version);
            m.lease = None;
        }
        Op::Lease { post: p } => {
            let won = l2.lease(ids[p]).await.map_err(|e| failed(op, e))?;
            let m = &mut model[p];
            prop_assert_eq!(won.is_some(), m.lease.is_none(), "{:?}", op);
            if let Some(lease) = won {
                m.lease = Some(m.taken.len());
                m.taken.push(lease);
            }
        }
        Op::Fill {
            post: p,
            ref lease,
            version,
        } => {
            let m = &mut model[p];
            if m.taken.is_empty() {
                return Ok(());
            }
            let held = lease.map_or(m.taken.len() - 1, |i| i.index(m.taken.len()));
            let filled = l2
                .fill(&post(ids[p], version), &m.taken[held])
                .await
                .map_err(|e| failed(op, e))?;
            let expected = if m.lease != Some(held) {
                Filled::LeaseLost
            } else {
                m.lease = None;
                match m.value {
                    _ if version < m.floor => Filled::Stale,
                    Some(v) if v > version => Filled::Stale,
                    Some(v) if v == version => Filled::LeaseLost,
                    _ => {
                        m.value = Some(version);
                        Filled::Yes
                    }
                }
            };
            prop_assert_eq!(filled, expected, "{:?}", op);
        }
        Op::Invalidate { post: p } => {
            l2.invalidate(ids[p]).await.map_err(|e| failed(op, e))?;
            (model[p].value, model[p].lease) = (None, None);
        }
        Op::Evict { post: p } => {
            let key = format!("pc:{{p{}}}:post", ids[p]);
            let _: i64 = redis::cmd("DEL")
                .arg(key)
                .query_async(raw)
                .await
                .map_err(|e| failed(op, e))?;
            model[p].value = None;
        }
    }
    Ok(())
}

/// Runs `ops` on fresh posts, reading every post back after each step (the reads are the
/// checks: a GET step of its own would add nothing).
async fn follows_the_model(l2: &L2, raw: &RedisConn, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let ids = fresh_ids();
    let mut model: [Expected; POSTS] = Default::default();
    let mut raw = raw.clone();
    for (i, op) in ops.iter().enumerate() {
        step(l2, &mut raw, &ids, &mut model, op).await?;
        for (p, m) in model.iter().enumerate() {
            let got = l2.get(ids[p]).await.map_err(|e| failed(op, e))?;
            let version = got.as_ref().map(|c| c.version);
            prop_assert_eq!(version, m.value, "post {} after step {}: {:?}", p, i, op);
            if let Some(got) = got {
                prop_assert_eq!(got, post(ids[p], m.value.unwrap_or_default()));
            }
            prop_assert!(
                version.is_none_or(|v| v >= m.floor),
                "post {} holds v{:?} below the floor v{} after step {}: {:?}",
                p,
                version,
                m.floor,
                i,
                op
            );
        }
    }
    Ok(())
}

/// 32 random cases of up to 40 steps on the deployment at `nodes`.
fn l2_follows_the_model_on(nodes: Vec<String>, cluster: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let raw = RedisConn::open(&RedisConfig {
        nodes,
        cluster,
        timeout: Duration::from_secs(5),
        ca_pem: None,
    })
    .unwrap();
    let l2 = L2::new(raw.clone(), l2_config());
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let ops = proptest::collection::vec(op(), 1..=40);
    if let Err(e) = runner.run(&ops, |ops| rt.block_on(follows_the_model(&l2, &raw, ops))) {
        panic!("{e}\n{runner}");
    }
}

#[test]
fn l2_scripts_follow_the_model_on_standalone_redis() {
    let redis = Redis::shared();
    l2_follows_the_model_on(vec![redis.url()], false);
}

#[test]
fn l2_scripts_follow_the_model_on_redis_cluster() {
    let cluster = RedisCluster::shared();
    l2_follows_the_model_on(cluster.urls(), true);
}
