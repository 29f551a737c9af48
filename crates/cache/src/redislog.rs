//! The shared event log: a Redis Stream that every pod reads, so that all pods name events alike
//! and a subscriber can resume on any pod.
//!
//! ```text
//! outbox ──relay (one pod: the lease holder)──▶ XADD {postcache}:events (MAXLEN ~ retention)
//!   every pod: XREAD BLOCK ──▶ local EventLog::append_at(entry id) ──▶ its subscribers
//!                          └─▶ its L1 (version-guarded)
//! ```
//! The stream key carries a hash tag so that it lives on one shard of a Redis Cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, Value};
use time::OffsetDateTime;

use crate::eventlog::{Change, Position};
use crate::store::OutboxEvent;

/// The stream every pod reads.
pub const STREAM_KEY: &str = "{postcache}:events";
/// The relay's leader lease.
pub const RELAY_LEASE_KEY: &str = "{postcache}:relay-lease";
/// How long one read waits for new entries.
const READ_BLOCK: Duration = Duration::from_secs(2);

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
#[error("redis: {step} failed")]
pub struct RedisLogError {
    step: &'static str,
    #[source]
    source: redis::RedisError,
}

fn failed(step: &'static str) -> impl FnOnce(redis::RedisError) -> RedisLogError {
    move |source| RedisLogError { step, source }
}

/// A handle on the shared stream (cheap to clone; reconnects by itself).
#[derive(Clone)]
pub struct RedisLog {
    conn: ConnectionManager,
    /// A connection of its own for blocking reads, which would hold up every other command.
    reader: ConnectionManager,
    retention: usize,
    owner: String,
}

impl RedisLog {
    /// Connects to a standalone Redis at `url`; the stream keeps about `retention` entries.
    ///
    /// # Errors
    /// A bad URL or an unreachable server.
    pub async fn connect(url: &str, retention: usize) -> Result<RedisLog, RedisLogError> {
        let client = redis::Client::open(url).map_err(failed("parse the Redis URL"))?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(failed("connect"))?;
        let blocking = ConnectionManagerConfig::new()
            .set_response_timeout(Some(READ_BLOCK + Duration::from_secs(5)));
        let reader = ConnectionManager::new_with_config(client, blocking)
            .await
            .map_err(failed("connect"))?;
        let owner = format!(
            "{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        Ok(RedisLog {
            conn,
            reader,
            retention: retention.max(1),
            owner,
        })
    }

    /// Takes or renews the relay lease for `ttl`; `true` while this process holds it.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn hold_lease(&self, ttl: Duration) -> Result<bool, RedisLogError> {
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

    /// Appends one outbox row to the stream; returns its entry id.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn publish(&self, row: &OutboxEvent) -> Result<String, RedisLogError> {
        let committed = row.created_at.unix_timestamp_nanos().to_string();
        let fields = [
            ("kind", row.kind.clone()),
            ("post_id", row.post_id.to_string()),
            ("author_id", row.author_id.clone()),
            ("version", row.version.to_string()),
            ("payload", row.payload.clone().unwrap_or_default()),
            ("committed_at", committed),
        ];
        let maxlen = redis::streams::StreamMaxlen::Approx(self.retention);
        self.conn
            .clone()
            .xadd_maxlen(STREAM_KEY, maxlen, "*", &fields)
            .await
            .map_err(failed("XADD"))
    }

    /// The newest `retention` entries, oldest first, and the floor from which they are complete.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn tail(&self) -> Result<(Position, Vec<(Position, Change)>), RedisLogError> {
        let mut conn = self.conn.clone();
        let length: usize = conn.xlen(STREAM_KEY).await.map_err(failed("XLEN"))?;
        let reply: StreamRangeReply = conn
            .xrevrange_count(STREAM_KEY, "+", "-", self.retention)
            .await
            .map_err(failed("XREVRANGE"))?;
        let mut entries: Vec<(Position, Change)> = reply.ids.iter().filter_map(decode).collect();
        entries.reverse();
        // A stream shorter than the retention was never trimmed: everything since its start is
        // known. Otherwise only what was loaded is.
        let floor = match entries.first() {
            Some((first, _)) if length >= self.retention => *first,
            _ => Position { epoch: 0, seq: 0 },
        };
        Ok((floor, entries))
    }

    /// Entries after `last`, waiting up to two seconds for one.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn read_after(
        &self,
        last: Position,
    ) -> Result<Vec<(Position, Change)>, RedisLogError> {
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

fn decode(entry: &StreamId) -> Option<(Position, Change)> {
    let position = Position::parse(&entry.id)?;
    let text = |name: &str| -> Option<String> {
        match entry.map.get(name)? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    };
    let row = OutboxEvent {
        position: 0,
        post_id: text("post_id")?.parse().ok()?,
        author_id: text("author_id")?,
        kind: text("kind")?,
        version: text("version")?.parse().ok()?,
        payload: text("payload").filter(|p| !p.is_empty()),
        created_at: OffsetDateTime::from_unix_timestamp_nanos(text("committed_at")?.parse().ok()?)
            .ok()?,
    };
    Some((position, row.change()?))
}
