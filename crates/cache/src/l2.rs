//! L2: posts, feed pages and tag generations in Redis, shared by every pod.
//!
//! ```text
//! write:  commit ─▶ WRITE script on {p<id>}: value if newer, floor = max(floor, v), void the lease
//! miss:   GET value ─hit─▶ done
//!                   └miss─▶ SET lease NX PX ─won─▶ L3 ─▶ FILL script: only with the lease still
//!                                         │                 ours and v >= floor and v > value
//!                                         └lost─▶ poll the value until the lease window ends
//! feeds:  GET gen:{tag}… ─▶ feed:{gens}:{query} ─miss─▶ L3 ─▶ SET PX  (a write INCRs the gens)
//! ```
//! The value, lease and floor keys of one post share the hash tag `{p<id>}`, so each script runs
//! on one Redis Cluster shard. A delete leaves a versioned tombstone; the floor outlives an evicted
//! or invalidated value long enough that a fill from a lagging replica cannot install an older
//! version (memcache's lease rule and a version compare-and-set close the stale-fill race).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;

use crate::l1::CachedPost;
use crate::model::{FeedQuery, PostId};
use crate::redisconn::{RedisCallError, RedisConn, failed};
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
if (not cur) or tonumber(string.match(cur, '^(%d+)')) < v then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
if floor < v then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4]) end
redis.call('DEL', KEYS[2])
return 1
";

/// A reader's fill: only while it still holds the lease, and only a version at or above the
/// floor and newer than the value. KEYS: value, lease, floor. ARGV: version, value, TTL ms, lease.
const FILL: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
redis.call('DEL', KEYS[2])
local v = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[3]) or '0') > v then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(string.match(cur, '^(%d+)')) >= v then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// The shared tier. Cheap to clone.
#[derive(Clone)]
pub struct L2 {
    conn: RedisConn,
    config: L2Config,
    write: Arc<redis::Script>,
    fill: Arc<redis::Script>,
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
    format!("pc:gen:{}", tag.name())
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

    /// Fills `entry` loaded from L3 under `lease`; `false` when a write voided the lease or a newer
    /// version is known.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn fill(&self, entry: &CachedPost, lease: &Lease) -> Result<bool, RedisCallError> {
        let filled = self
            .run(&self.fill, entry, &lease.0)
            .await
            .map_err(failed("fill a post"))?;
        Ok(filled == 1)
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

    /// Drops `id`'s cached value (its floor stays).
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn invalidate(&self, id: PostId) -> Result<(), RedisCallError> {
        let _: i64 = self
            .conn
            .clone()
            .del(value_key(id))
            .await
            .map_err(failed("DEL post"))?;
        Ok(())
    }

    /// Makes every feed page built on `tags` unreachable in every pod's view of L2.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn bump(&self, tags: &[TagKey]) -> Result<(), RedisCallError> {
        let mut conn = self.conn.clone();
        for tag in tags {
            let _: i64 = conn
                .incr(generation_key(tag), 1)
                .await
                .map_err(failed("INCR generation"))?;
        }
        Ok(())
    }

    /// The L2 key of a feed page now. Read before querying L3, like L1's (see `L1::feed_key`).
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn feed_key(&self, query: &FeedQuery) -> Result<String, RedisCallError> {
        let mut conn = self.conn.clone();
        let mut generations = Vec::with_capacity(2);
        for tag in query.tags() {
            let generation: Option<u64> = conn
                .get(generation_key(&tag))
                .await
                .map_err(failed("GET generation"))?;
            generations.push(generation.unwrap_or(0));
        }
        Ok(format!("pc:feed:{generations:?}:{}", query.cache_key()))
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
