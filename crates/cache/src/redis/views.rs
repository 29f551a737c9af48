//! [`SharedViews`]: write-back view counters in Redis, flushed to L3 exactly once per batch.
//!
//! ```text
//! every pod: HINCRBY {postcache}:views <id> 1
//! leader:    BEGIN script: flushing batch exists? take it : RENAME views → flushing, id = new
//!            L3: INSERT view_batches(id) ON CONFLICT DO NOTHING + the increments, one transaction
//!            END script: DEL flushing, flushing-id (only if the id is still ours)
//! ```
//! A leader that dies after its commit leaves the batch in Redis; the next leader re-applies it,
//! the batch id is already in `view_batches`, nothing is counted twice. One that dies before its
//! commit leaves it for the next leader to apply. Batch ids are random, so a Redis that lost its
//! data cannot reuse an id.

use std::collections::HashMap;

use redis::AsyncCommands;

use crate::model::PostId;
use crate::redis::conn::{RedisCallError, RedisConn, failed};
use crate::redis::l2::rand_token;

const VIEWS_KEY: &str = "{postcache}:views";
const FLUSHING_KEY: &str = "{postcache}:views-flushing";
const FLUSHING_ID_KEY: &str = "{postcache}:views-flushing-id";

/// KEYS: views, flushing, flushing id. ARGV: a new batch id. Returns the batch id, or nil.
const BEGIN: &str = r"
local id = redis.call('GET', KEYS[3])
if id then return id end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1])
return ARGV[1]
";

/// KEYS: flushing, flushing id. ARGV: the batch id.
const END: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

/// A batch taken for flushing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewBatch {
    /// Its id (recorded in L3 with the increments).
    pub id: String,
    /// Views per post.
    pub counts: Vec<(PostId, i64)>,
}

/// The shared counters. Cheap to clone.
#[derive(Clone)]
pub struct SharedViews {
    conn: RedisConn,
}

impl SharedViews {
    /// Counters on `conn`'s Redis.
    pub fn new(conn: RedisConn) -> SharedViews {
        SharedViews { conn }
    }

    /// Counts one view.
    ///
    /// # Errors
    /// When Redis does not answer (the caller counts it locally instead).
    pub async fn count(&self, id: PostId) -> Result<(), RedisCallError> {
        let _: i64 = self
            .conn
            .clone()
            .hincr(VIEWS_KEY, id, 1)
            .await
            .map_err(failed("HINCRBY views"))?;
        Ok(())
    }

    /// Posts with views waiting in Redis.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn pending(&self) -> Result<usize, RedisCallError> {
        self.conn
            .clone()
            .hlen(VIEWS_KEY)
            .await
            .map_err(failed("HLEN views"))
    }

    /// The batch to flush: one left by a flusher that died, else everything counted so far.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn begin(&self) -> Result<Option<ViewBatch>, RedisCallError> {
        let mut conn = self.conn.clone();
        let id: Option<String> = redis::Script::new(BEGIN)
            .key(VIEWS_KEY)
            .key(FLUSHING_KEY)
            .key(FLUSHING_ID_KEY)
            .arg(format!("{:016x}{:016x}", rand_token(), rand_token()))
            .invoke_async(&mut conn)
            .await
            .map_err(failed("begin a view flush"))?;
        let Some(id) = id else {
            return Ok(None);
        };
        let counts: HashMap<PostId, i64> = conn
            .hgetall(FLUSHING_KEY)
            .await
            .map_err(failed("HGETALL views"))?;
        Ok(Some(ViewBatch {
            id,
            counts: counts.into_iter().collect(),
        }))
    }

    /// Drops a batch that L3 has (now or before) applied.
    ///
    /// # Errors
    /// When Redis does not answer (the next flush finds the batch applied and ends it then).
    pub async fn end(&self, batch: &ViewBatch) -> Result<(), RedisCallError> {
        let _: i64 = redis::Script::new(END)
            .key(FLUSHING_KEY)
            .key(FLUSHING_ID_KEY)
            .arg(&batch.id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(failed("end a view flush"))?;
        Ok(())
    }
}
