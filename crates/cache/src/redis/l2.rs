//! L2: posts, feed pages and tag generations in Redis, shared by every pod.
//!
//! ```text
//! write:  commit ─▶ WRITE script on {p<id>}: value if newer, floor = max(floor, v), void the lease
//! miss:   GET value ─hit─▶ done
//!                   └miss─▶ SET lease NX PX ─won─▶ L3 ─▶ FILL script: only with the lease still
//!                                         │                 ours and v >= floor and v > value
//!                                         └lost─▶ poll the value until the lease window ends
//! feeds:  GEN gen:{tag}… ─▶ feed:{gens}:{query} ─miss─▶ L3 at ≥ the gens' LSN ─▶ SET PX
//!         (a write bumps the gens: a new number, and the LSN its page sources must have replayed)
//! ```
//! The value, lease and floor keys of one post share the hash tag `{p<id>}`, so each script runs
//! on one Redis Cluster shard. A delete leaves a versioned tombstone; the floor outlives an evicted
//! or invalidated value long enough that a fill from a lagging replica cannot install an older
//! version (memcache's lease rule and a version compare-and-set close the stale-fill race). Nothing
//! below the floor is written either, so an event relayed late (v2 after v3) cannot bring v2 back.
//!
//! A generation is a hash: a random nonce drawn when it is created (so a generation lost to an
//! eviction or a restart never repeats an old one and never makes an old page reachable), a counter,
//! and the LSN of the newest write that bumped it. Generations expire a day after their last bump.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;

use crate::l1::CachedPost;
use crate::model::{FeedQuery, PostId};
use crate::redis::conn::{RedisCallError, RedisConn, failed};
use crate::tags::TagKey;

/// How long each kind of entry lives in Redis.
#[derive(Debug, Clone, Copy)]
pub struct L2Config {
    /// Posts (and tombstones).
    pub post_ttl: Duration,
    /// Feed pages.
    pub feed_ttl: Duration,
    /// A fill lease: other pods wait at most this long for the holder's fill.
    pub lease: Duration,
    /// How long a post's version floor outlives its value (cover the replica lag limit).
    pub floor_ttl: Duration,
}

/// Sets the value if its version is newer, raises the floor, voids any fill lease.
/// KEYS: value, lease, floor. ARGV: version, encoded value, value TTL ms, floor TTL ms.
const WRITE: &str = r"
local cur = redis.call('GET', KEYS[1])
local v = tonumber(ARGV[1])
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
if v >= floor and ((not cur) or tonumber(string.match(cur, '^(%d+)')) < v) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if floor < v then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4]) end
redis.call('DEL', KEYS[2])
return 1
";

/// A reader's fill: only while it still holds the lease, and only a version at or above the
/// floor and newer than the value. KEYS: value, lease, floor. ARGV: version, value, TTL ms, lease.
/// Returns 1 filled, 0 the lease was voided, -1 a newer version is known (floor or value).
const FILL: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
redis.call('DEL', KEYS[2])
local v = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[3]) or '0') > v then return -1 end
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(string.match(cur, '^(%d+)')) > v then return -1 end
if cur and tonumber(string.match(cur, '^(%d+)')) == v then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Drops the value and any fill lease, and raises the floor. KEYS: value, lease, floor. ARGV:
/// version, floor TTL ms.
const SUPERSEDE: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
if floor < tonumber(ARGV[1]) then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2]) end
return 1
";

/// Bumps a generation (created with a fresh nonce if missing); its LSN only rises.
/// KEYS: generation. ARGV: a new nonce, the bumping write's LSN, TTL ms.
const BUMP: &str = r"
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then redis.call('HSET', KEYS[1], 'l', 0) end
redis.call('HINCRBY', KEYS[1], 'n', 1)
local l = tonumber(redis.call('HGET', KEYS[1], 'l') or '0')
if tonumber(ARGV[2]) > l then redis.call('HSET', KEYS[1], 'l', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Reads a generation, creating it with a fresh nonce if missing (then nothing older than now
/// can be reachable under it). KEYS: generation. ARGV: a new nonce, TTL ms. Returns e, n, l.
const GENERATION: &str = r"
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'n', 0, 'l', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('HMGET', KEYS[1], 'e', 'n', 'l')
";

/// How long a generation outlives its last bump (far longer than any feed page).
const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// The value is in L2.
    Yes,
    /// A write voided the lease (or the same version is there already).
    LeaseLost,
    /// A newer version is known: the loaded one is stale, read again from a newer source.
    Stale,
}

/// The shared tier. Cheap to clone.
#[derive(Clone)]
pub struct L2 {
    conn: RedisConn,
    config: L2Config,
    write: Arc<redis::Script>,
    fill: Arc<redis::Script>,
    bump: Arc<redis::Script>,
    generation: Arc<redis::Script>,
    supersede: Arc<redis::Script>,
}

/// A won fill lease: proof that this reader may fill the key (until a write voids it).
#[derive(Debug, Clone)]
pub struct Lease(String);

fn value_key(id: PostId) -> String {
    format!("pc:{{p{id}}}:post")
}

fn lease_key(id: PostId) -> String {
    format!("pc:{{p{id}}}:lease")
}

fn floor_key(id: PostId) -> String {
    format!("pc:{{p{id}}}:floor")
}

fn generation_key(tag: &TagKey) -> String {
    format!("pc:g:{}", tag.name())
}

/// `{version}\n{json}`; a tombstone or unknown id has nothing after the newline.
pub(crate) fn encode(entry: &CachedPost) -> Vec<u8> {
    let mut out = format!("{}\n", entry.version).into_bytes();
    out.extend_from_slice(&entry.json);
    out
}

/// The inverse of [`encode`]; `None` for anything malformed (treated as a miss).
pub(crate) fn decode(id: PostId, raw: &[u8]) -> Option<CachedPost> {
    let split = raw.iter().position(|&b| b == b'\n')?;
    let version = std::str::from_utf8(&raw[..split]).ok()?.parse().ok()?;
    let json = &raw[split + 1..];
    if json.is_empty() {
        return Some(CachedPost {
            id,
            version,
            post: None,
            json: Bytes::new(),
        });
    }
    let post: postcache_api::Post = serde_json::from_slice(json).ok()?;
    (post.version == version).then(|| CachedPost {
        id,
        version,
        post: Some(post),
        json: Bytes::copy_from_slice(json),
    })
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl L2 {
    /// The tier over `conn`.
    pub fn new(conn: RedisConn, config: L2Config) -> L2 {
        L2 {
            conn,
            config,
            write: Arc::new(redis::Script::new(WRITE)),
            fill: Arc::new(redis::Script::new(FILL)),
            bump: Arc::new(redis::Script::new(BUMP)),
            generation: Arc::new(redis::Script::new(GENERATION)),
            supersede: Arc::new(redis::Script::new(SUPERSEDE)),
        }
    }

    /// The configured lease window.
    pub fn lease_window(&self) -> Duration {
        self.config.lease
    }

    /// Whether Redis failed recently (skip it without waiting).
    pub fn is_down(&self) -> bool {
        self.conn.is_down()
    }

    /// The cached entry of `id`, if any.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn get(&self, id: PostId) -> Result<Option<CachedPost>, RedisCallError> {
        let raw: Option<Vec<u8>> = self
            .conn
            .clone()
            .get(value_key(id))
            .await
            .map_err(failed("GET post"))?;
        Ok(raw.and_then(|raw| decode(id, &raw)))
    }

    /// Write-through after a commit: newer versions replace older, the floor rises, and fills
    /// still running for the key lose their lease.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn write(&self, entry: &CachedPost) -> Result<(), RedisCallError> {
        let floor_ttl = millis(self.config.floor_ttl).to_string();
        self.run(&self.write, entry, &floor_ttl)
            .await
            .map_err(failed("write a post through"))?;
        Ok(())
    }

    /// Tries to become the one loader of `id` for the lease window.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn lease(&self, id: PostId) -> Result<Option<Lease>, RedisCallError> {
        let token = format!("{:016x}", rand_token());
        let won: Option<String> = redis::cmd("SET")
            .arg(lease_key(id))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.config.lease))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(failed("SET lease"))?;
        Ok(won.map(|_| Lease(token)))
    }

    /// Fills `entry` loaded from L3 under `lease`, unless a write voided the lease or a newer
    /// version is known.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn fill(&self, entry: &CachedPost, lease: &Lease) -> Result<Filled, RedisCallError> {
        let filled = self
            .run(&self.fill, entry, &lease.0)
            .await
            .map_err(failed("fill a post"))?;
        Ok(match filled {
            1 => Filled::Yes,
            -1 => Filled::Stale,
            _ => Filled::LeaseLost,
        })
    }

    /// Runs WRITE or FILL on `entry`'s keys: version, encoded value, value TTL, then `last`.
    async fn run(
        &self,
        script: &redis::Script,
        entry: &CachedPost,
        last: &str,
    ) -> redis::RedisResult<i64> {
        script
            .key(value_key(entry.id))
            .key(lease_key(entry.id))
            .key(floor_key(entry.id))
            .arg(entry.version)
            .arg(encode(entry))
            .arg(millis(self.config.post_ttl))
            .arg(last)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// Drops `id`'s cached value and voids fills in flight (its floor stays).
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn invalidate(&self, id: PostId) -> Result<(), RedisCallError> {
        let _: i64 = self
            .conn
            .clone()
            .del(&[value_key(id), lease_key(id)])
            .await
            .map_err(failed("DEL post"))?;
        Ok(())
    }

    /// A change relayed late (its writer could not write it through): drops the cached value
    /// rather than writing the change's content, which may be older than versions written since
    /// (whose floors a Redis that lost data no longer has), and raises the floor to `version`.
    ///
    /// # Errors
    /// When Redis does not answer or refuses the write.
    pub async fn supersede(&self, id: PostId, version: i64) -> Result<(), RedisCallError> {
        let _: i64 = self
            .supersede
            .key(value_key(id))
            .key(lease_key(id))
            .key(floor_key(id))
            .arg(version)
            .arg(millis(self.config.floor_ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed("supersede a post"))?;
        Ok(())
    }

    /// Makes every feed page built on `tags` unreachable in every pod's view of L2; the next pages
    /// need a source that has replayed `lsn`.
    ///
    /// # Errors
    /// When Redis does not answer or refuses the write.
    pub async fn bump(&self, tags: &[TagKey], lsn: u64) -> Result<(), RedisCallError> {
        let mut conn = self.conn.clone();
        for tag in tags {
            let _: i64 = self
                .bump
                .key(generation_key(tag))
                .arg(format!("{:016x}", rand_token()))
                .arg(lsn)
                .arg(millis(GENERATION_TTL))
                .invoke_async(&mut conn)
                .await
                .map_err(failed("bump a generation"))?;
        }
        Ok(())
    }

    /// The L2 key of a feed page now, and the LSN its source must have replayed. Read before
    /// querying L3, like L1's (see `L1::feed_key`).
    ///
    /// # Errors
    /// When Redis does not answer or refuses the write.
    pub async fn feed_key(&self, query: &FeedQuery) -> Result<(String, u64), RedisCallError> {
        let mut conn = self.conn.clone();
        let mut generations = Vec::with_capacity(2);
        let mut lsn = 0;
        for tag in query.tags() {
            let (nonce, number, tag_lsn): (Option<String>, Option<u64>, Option<u64>) = self
                .generation
                .key(generation_key(&tag))
                .arg(format!("{:016x}", rand_token()))
                .arg(millis(GENERATION_TTL))
                .invoke_async(&mut conn)
                .await
                .map_err(failed("read a generation"))?;
            let nonce = nonce.ok_or_else(|| RedisCallError::malformed("read a generation"))?;
            generations.push(format!("{nonce}.{}", number.unwrap_or(0)));
            lsn = lsn.max(tag_lsn.unwrap_or(0));
        }
        let key = format!("pc:feed:{}:{}", generations.join("|"), query.cache_key());
        Ok((key, lsn))
    }

    /// A cached feed page's ids.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn feed(&self, key: &str) -> Result<Option<Vec<PostId>>, RedisCallError> {
        let raw: Option<Vec<u8>> = self
            .conn
            .clone()
            .get(key)
            .await
            .map_err(failed("GET feed"))?;
        Ok(raw.and_then(|raw| serde_json::from_slice(&raw).ok()))
    }

    /// Drops a cached feed page.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn drop_feed(&self, key: &str) -> Result<(), RedisCallError> {
        let _: i64 = self
            .conn
            .clone()
            .del(key)
            .await
            .map_err(failed("DEL feed"))?;
        Ok(())
    }

    /// Caches a feed page's ids under `key`.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn set_feed(&self, key: &str, ids: &[PostId]) -> Result<(), RedisCallError> {
        let raw = serde_json::to_vec(ids).unwrap_or_default();
        let _: () = self
            .conn
            .clone()
            .pset_ex(key, raw, millis(self.config.feed_ttl))
            .await
            .map_err(failed("SET feed"))?;
        Ok(())
    }
}

/// A random value for lease ownership (not a secret: it only tells fillers apart).
pub(crate) fn rand_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_post_share_a_hash_tag() {
        for key in [value_key(42), lease_key(42), floor_key(42)] {
            assert!(key.contains("{p42}"), "{key}");
        }
    }

    #[test]
    fn values_round_trip_and_tombstones_have_no_body() {
        let tomb = CachedPost {
            id: 7,
            version: 3,
            post: None,
            json: Bytes::new(),
        };
        assert_eq!(decode(7, &encode(&tomb)), Some(tomb));
        assert_eq!(decode(7, b"garbage"), None);
        assert_eq!(decode(7, b"x\n"), None);
    }
}
