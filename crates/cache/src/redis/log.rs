//! The shared event log: a Redis Stream that every pod reads, so that all pods name events alike
//! and a subscriber can resume on any pod.
//!
//! ```text
//! outbox ──relay (one pod: the lease holder)──▶ XADD {postcache}:events (MAXLEN ~ retention)
//!   every pod: XREAD BLOCK ──▶ local EventLog::append_at(entry id) ──▶ its subscribers
//!                          └─▶ its L1 (version-guarded)
//!   relay leader, after each round that left the outbox empty: XADD a heartbeat entry
//! ```
//! Its keys carry the hash tag `{postcache}` so that they live on one shard of a Redis Cluster.
//! An outbox row is appended once: the writer appends it right after its commit, the relay appends
//! what writers could not, and the PUBLISH script skips a row whose outbox position it already
//! appended (an index beside the stream, trimmed with it).
//!
//! Every entry names the entry before it (`prev`, empty for the first entry of a stream), written
//! in the same script as the entry itself. A follower that reads an entry whose `prev` is not the
//! last entry it applied knows that the log lost entries (trimmed past it, deleted, flushed, or
//! rolled back by a failover) and never skips them silently (DESIGN §7).

use std::time::Duration;

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, Value};
use time::OffsetDateTime;

use crate::eventlog::{Change, Position};
use crate::model::PostId;
use crate::redis::conn::{RedisCallError, RedisConfig, RedisConn, failed};
use crate::store::OutboxEvent;

/// The stream every pod reads.
pub const STREAM_KEY: &str = "{postcache}:events";
/// The relay's leader lease.
pub const RELAY_LEASE_KEY: &str = "{postcache}:relay-lease";
/// Outbox position → stream id of every row appended (the PUBLISH script's memory).
const PUBLISHED_KEY: &str = "{postcache}:published";
/// The same positions in order, for trimming the index with the stream.
const PUBLISHED_ORDER_KEY: &str = "{postcache}:published-order";
/// How long one read waits for new entries.
const READ_BLOCK: Duration = Duration::from_millis(500);

/// The kind field of a heartbeat entry.
const HEARTBEAT: &str = "heartbeat";

/// The kind field of an admin invalidation entry.
const INVALIDATE: &str = "invalidate";

/// Appends an outbox row unless its position was appended before; returns the entry id and
/// whether this call appended it.
/// KEYS: stream, index, index order. ARGV: position, retention, then field/value pairs.
const PUBLISH: &str = r"
local known = redis.call('HGET', KEYS[2], ARGV[1])
if known then return {known, 0} end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local fields = {'prev', (last[1] and last[1][1]) or ''}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
redis.call('HSET', KEYS[2], ARGV[1], id)
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[1])
local excess = redis.call('ZCARD', KEYS[3]) - 2 * tonumber(ARGV[2])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[3], 0, excess - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
end
return {id, 1}
";

/// Appends an entry that is not an outbox row (heartbeat, invalidation), chained like PUBLISH's.
/// KEYS: stream. ARGV: retention, then field/value pairs.
const APPEND: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local fields = {'prev', (last[1] and last[1][1]) or ''}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
";

/// What the shared stream holds at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A committed change.
    Change {
        /// What changed.
        change: Box<Change>,
        /// An LSN at or after its commit (0 on SQLite).
        lsn: u64,
        /// Appended by the relay, not by its writer: later writes to the post may have been
        /// appended before it, so its content may be older than what the post is now.
        relayed: bool,
    },
    /// The relay leader found every outbox row published (and appended) when it wrote this.
    Heartbeat {
        /// The primary's WAL position after the outbox was found empty: every change the
        /// heartbeat covers committed at or before it (a read source this new reflects them).
        lsn: u64,
        /// The primary's WAL position before the outbox was read: every change committed at or
        /// before it is in the log before this heartbeat (a token up to here is covered).
        covered: u64,
        /// When the relay began the round (Unix ms, its clock): the heartbeat proves the log
        /// complete as of then, not as of when it reached Redis or a follower (a paused client,
        /// a `CLIENT PAUSE`, a slow follower can delay it by seconds).
        at_ms: u64,
    },
    /// An operator invalidated these posts and feeds (`/v1/cache/invalidate` on some pod).
    Invalidate {
        /// Posts to drop from every L1.
        ids: Vec<PostId>,
        /// Feeds (tag names, [`crate::tags::TagKey::name`]) to make unreachable in every L1.
        tags: Vec<String>,
    },
    /// An entry this version cannot read: a follower treats it as a gap (trusts nothing).
    Unreadable,
}

/// One entry read from the stream: where it is, the entry before it, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Its position (stream entry id).
    pub position: Position,
    /// The entry before it when it was appended (`None`: it was the stream's first).
    pub prev: Option<Position>,
    /// Its content.
    pub entry: Entry,
}

/// A handle on the shared stream (cheap to clone; reconnects by itself).
#[derive(Clone)]
pub struct RedisLog {
    conn: RedisConn,
    /// A connection of its own for blocking reads, which would hold up every other command.
    reader: RedisConn,
    publish: std::sync::Arc<redis::Script>,
    append: std::sync::Arc<redis::Script>,
    retention: usize,
    owner: String,
}

impl RedisLog {
    /// The log on `conn`'s Redis (`config` opens the blocking reader's own connection); the
    /// stream keeps about `retention` entries.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(
        conn: RedisConn,
        config: &RedisConfig,
        retention: usize,
    ) -> Result<RedisLog, RedisCallError> {
        let reader = RedisConn::blocking(config, READ_BLOCK)?;
        let owner = format!(
            "{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        Ok(RedisLog {
            conn,
            reader,
            publish: std::sync::Arc::new(redis::Script::new(PUBLISH)),
            append: std::sync::Arc::new(redis::Script::new(APPEND)),
            retention: retention.max(1),
            owner,
        })
    }

    /// The connection (shared with L2 and the view counters).
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// Takes or renews the relay lease for `ttl`; `true` while this process holds it.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn hold_lease(&self, ttl: Duration) -> Result<bool, RedisCallError> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
             elseif redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 else return 0 end",
        );
        let held: i64 = script
            .key(RELAY_LEASE_KEY)
            .arg(&self.owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed("hold the relay lease"))?;
        Ok(held == 1)
    }

    /// Appends one outbox row to the stream (once, whoever calls); returns its entry id and
    /// whether this call appended it (`false`: appended before).
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn publish(
        &self,
        row: &OutboxEvent,
        lsn: u64,
        relayed: bool,
    ) -> Result<(Position, bool), RedisCallError> {
        let committed = row.created_at.unix_timestamp_nanos().to_string();
        let fields = [
            ("kind", row.kind.clone()),
            ("post_id", row.post_id.to_string()),
            ("author_id", row.author_id.clone()),
            ("version", row.version.to_string()),
            ("payload", row.payload.clone().unwrap_or_default()),
            ("committed_at", committed),
            (
                "previous_tags",
                row.previous_tags.clone().unwrap_or_default(),
            ),
            ("lsn", lsn.to_string()),
            ("relayed", u8::from(relayed).to_string()),
        ];
        let mut call = self.publish.prepare_invoke();
        call.key(STREAM_KEY)
            .key(PUBLISHED_KEY)
            .key(PUBLISHED_ORDER_KEY)
            .arg(row.position)
            .arg(self.retention);
        for (name, value) in &fields {
            call.arg(*name).arg(value);
        }
        let (id, appended): (String, i64) = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed("append an event"))?;
        let position =
            Position::parse(&id).ok_or_else(|| RedisCallError::malformed("append an event"))?;
        Ok((position, appended == 1))
    }

    /// Whether the outbox row at `position` was appended already (by its writer).
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn appended(&self, position: i64) -> Result<bool, RedisCallError> {
        self.conn
            .clone()
            .hexists(PUBLISHED_KEY, position)
            .await
            .map_err(failed("HEXISTS published"))
    }

    /// Appends a heartbeat: call only after a relay round that left no outbox row unpublished,
    /// with the primary's WAL position read after that round found the outbox empty.
    ///
    /// # Errors
    /// When Redis does not answer or refuses the write.
    pub async fn heartbeat(
        &self,
        lsn: u64,
        covered: u64,
        at_ms: u64,
    ) -> Result<(), RedisCallError> {
        self.append_entry(&[
            ("kind", HEARTBEAT.to_owned()),
            ("lsn", lsn.to_string()),
            ("covered", covered.to_string()),
            ("at", at_ms.to_string()),
        ])
        .await
        .map_err(failed("append a heartbeat"))
    }

    async fn append_entry(&self, fields: &[(&str, String)]) -> redis::RedisResult<()> {
        let mut call = self.append.prepare_invoke();
        call.key(STREAM_KEY).arg(self.retention);
        for (name, value) in fields {
            call.arg(*name).arg(value);
        }
        let _: String = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Tells every pod to drop `ids` and the feeds of `tags` from its L1.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn invalidate(&self, ids: &[PostId], tags: &[String]) -> Result<(), RedisCallError> {
        let fields = [
            ("kind", INVALIDATE.to_owned()),
            ("ids", serde_json::to_string(ids).unwrap_or_default()),
            ("tags", serde_json::to_string(tags).unwrap_or_default()),
        ];
        self.append_entry(&fields)
            .await
            .map_err(failed("append an invalidation"))
    }

    /// The newest entry's position (`None`: the stream is empty or gone).
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn newest(&self) -> Result<Option<Position>, RedisCallError> {
        let reply: StreamRangeReply = self
            .conn
            .clone()
            .xrevrange_count(STREAM_KEY, "+", "-", 1)
            .await
            .map_err(failed("XREVRANGE"))?;
        Ok(reply.ids.first().and_then(|e| Position::parse(&e.id)))
    }

    /// The newest `retention` entries, oldest first.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn tail(&self) -> Result<Vec<Logged>, RedisCallError> {
        let reply: StreamRangeReply = self
            .conn
            .clone()
            .xrevrange_count(STREAM_KEY, "+", "-", self.retention)
            .await
            .map_err(failed("XREVRANGE"))?;
        let mut entries: Vec<Logged> = reply.ids.iter().filter_map(decode).collect();
        entries.reverse();
        Ok(entries)
    }

    /// Entries after `last`, waiting up to half a second for one.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn read_after(&self, last: Position) -> Result<Vec<Logged>, RedisCallError> {
        let options = redis::streams::StreamReadOptions::default()
            .count(500)
            .block(READ_BLOCK.as_millis() as usize);
        let reply: Option<StreamReadReply> = self
            .reader
            .clone()
            .xread_options(&[STREAM_KEY], &[last.to_string()], &options)
            .await
            .map_err(failed("XREAD"))?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .filter_map(|id| decode(&id))
            .collect())
    }
}

/// An entry as a follower sees it; `None` only for an id that is not a stream id. Content this
/// version cannot read is [`Entry::Unreadable`], never dropped: the follower must know.
fn decode(entry: &StreamId) -> Option<Logged> {
    let position = Position::parse(&entry.id)?;
    let text = |name: &str| -> Option<String> {
        match entry.map.get(name)? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    };
    let prev = text("prev").and_then(|p| Position::parse(&p));
    let lsn = || text("lsn").and_then(|l| l.parse().ok()).unwrap_or(0);
    let content = || -> Option<Entry> {
        match text("kind")?.as_str() {
            HEARTBEAT => {
                let number = |name: &str| text(name).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Some(Entry::Heartbeat {
                    lsn: lsn(),
                    covered: number("covered"),
                    at_ms: number("at"),
                });
            }
            INVALIDATE => {
                let ids = serde_json::from_str(&text("ids")?).ok()?;
                let tags = serde_json::from_str(&text("tags")?).ok()?;
                return Some(Entry::Invalidate { ids, tags });
            }
            _ => {}
        }
        let row = OutboxEvent {
            position: 0,
            post_id: text("post_id")?.parse().ok()?,
            author_id: text("author_id")?,
            kind: text("kind")?,
            version: text("version")?.parse().ok()?,
            payload: text("payload").filter(|p| !p.is_empty()),
            created_at: OffsetDateTime::from_unix_timestamp_nanos(
                text("committed_at")?.parse().ok()?,
            )
            .ok()?,
            previous_tags: text("previous_tags").filter(|t| !t.is_empty()),
        };
        Some(Entry::Change {
            change: Box::new(row.change()?),
            lsn: lsn(),
            relayed: text("relayed").is_some_and(|r| r == "1"),
        })
    };
    Some(Logged {
        position,
        prev,
        entry: content().unwrap_or(Entry::Unreadable),
    })
}
