//! [`History`]: what the clients did and saw, one [`Op`] per request, with client-side invoke and
//! completion instants. The checks in [`crate::verify`] are pure functions of it.
//!
//! Instants are microseconds since the run started, measured at the client: a write is taken as
//! acknowledged when its answer arrived (no earlier than the server acknowledged it) and a read as
//! invoked when it was sent (no later than the server saw it), so every bound errs towards the
//! service.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

/// Microseconds since the run started.
pub type Micros = u64;

/// Microseconds since the run started; cheap to clone.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// Starts now.
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Microseconds since the start.
    pub fn now(&self) -> Micros {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Which feed a read asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feed {
    /// `?tag=<run tag>`: every post of the run.
    Tag,
    /// `?author_id=`: one client's posts.
    Author(String),
}

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum OpKind {
    /// `POST /v1/posts` (the id is in the outcome).
    Create,
    /// `PATCH /v1/posts/{id}` (title only, no `If-Match`).
    Update {
        /// The post.
        post: String,
    },
    /// `DELETE /v1/posts/{id}`.
    Delete {
        /// The post.
        post: String,
    },
    /// `GET /v1/posts/{id}`.
    Get {
        /// The post.
        post: String,
        /// Whether the session's token was sent.
        token: bool,
    },
    /// `GET /v1/posts?…&limit=100`.
    List {
        /// Which feed.
        feed: Feed,
        /// Whether the session's token was sent.
        token: bool,
    },
}

impl OpKind {
    /// Short name for counts: `create`, `update`, `delete`, `get`, `get_token`, `feed`, …
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Update { .. } => "update",
            OpKind::Delete { .. } => "delete",
            OpKind::Get { token: false, .. } => "get",
            OpKind::Get { token: true, .. } => "get_token",
            OpKind::List {
                feed: Feed::Tag,
                token: false,
            } => "feed_tag",
            OpKind::List {
                feed: Feed::Tag,
                token: true,
            } => "feed_tag_token",
            OpKind::List { token: false, .. } => "feed_author",
            OpKind::List { token: true, .. } => "feed_author_token",
        }
    }

    /// The post a write targets (`None` for creates and reads).
    pub fn written_post(&self) -> Option<&str> {
        match self {
            OpKind::Update { post } | OpKind::Delete { post } => Some(post),
            _ => None,
        }
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// A create or update was acknowledged at `version`.
    Written {
        /// The post.
        post: String,
        /// Its version after the write.
        version: i64,
    },
    /// A delete was acknowledged (204).
    Deleted,
    /// A read found the post at `version`.
    Found {
        /// The version served.
        version: i64,
    },
    /// A read answered 404.
    Absent,
    /// A feed page: `(id, version)` newest first.
    Page {
        /// The items.
        items: Vec<(String, i64)>,
    },
    /// A write answered 4xx: decided before anything was written, so it took no effect.
    Rejected {
        /// The status.
        status: u16,
    },
    /// A 5xx, a transport error or a timeout: a write may or may not have taken effect; a read
    /// saw nothing.
    Indeterminate {
        /// What happened.
        reason: String,
    },
}

/// One request.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// The session (client index).
    pub client: usize,
    /// Index into the run's URLs.
    pub url: usize,
    /// Sent at.
    pub invoked: Micros,
    /// Answer (or failure) at.
    pub completed: Micros,
    /// What was asked.
    #[serde(flatten)]
    pub kind: OpKind,
    /// What came back.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// For a read: the tier that answered (`l1`, `l2`, `l3`), when the service said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

impl Op {
    /// True for a write that may have taken effect (acknowledged or indeterminate).
    pub fn may_have_written(&self) -> bool {
        !matches!(self.outcome, Outcome::Rejected { .. })
            && matches!(
                self.kind,
                OpKind::Create | OpKind::Update { .. } | OpKind::Delete { .. }
            )
    }

    /// True for a write that was acknowledged.
    pub fn acked(&self) -> bool {
        matches!(self.outcome, Outcome::Written { .. } | Outcome::Deleted)
    }
}

/// Every request of a run, with indexes the checks share.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// All requests, ordered by invocation.
    pub ops: Vec<Op>,
    /// Per post, the indexes (into `ops`) of the writes that may have taken effect, create first.
    pub writes: BTreeMap<String, Vec<usize>>,
    /// Per post, the client whose create was acknowledged.
    pub creator: BTreeMap<String, usize>,
}

impl History {
    /// Indexes `ops`.
    pub fn new(mut ops: Vec<Op>) -> History {
        ops.sort_by_key(|op| (op.invoked, op.client));
        let mut writes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut creator = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let post = match (&op.kind, &op.outcome) {
                (OpKind::Create, Outcome::Written { post, .. }) => {
                    creator.insert(post.clone(), op.client);
                    post
                }
                (kind, _) if op.may_have_written() => match kind.written_post() {
                    Some(post) => post,
                    None => continue,
                },
                _ => continue,
            };
            writes.entry(post.to_owned()).or_default().push(i);
        }
        History {
            ops,
            writes,
            creator,
        }
    }

    /// The writes to `post` that may have taken effect.
    pub fn writes_to<'a>(&'a self, post: &str) -> impl Iterator<Item = &'a Op> + 'a {
        self.writes
            .get(post)
            .into_iter()
            .flatten()
            .map(|&i| &self.ops[i])
    }

    /// Posts whose create was acknowledged.
    pub fn created(&self) -> BTreeSet<&str> {
        self.creator.keys().map(String::as_str).collect()
    }

    /// True if a delete of `post` (acknowledged or indeterminate) was sent before `at`.
    pub fn delete_invoked_before(&self, post: &str, at: Micros) -> bool {
        self.writes_to(post)
            .any(|w| matches!(w.kind, OpKind::Delete { .. }) && w.invoked < at)
    }

    /// The freshest state every read invoked at `at` must reflect under a bound of `delta`:
    /// acknowledged writes to `post` that completed before `at - delta`.
    pub fn settled_state(&self, post: &str, at: Micros, delta: Micros) -> Expected {
        let acked = self
            .writes_to(post)
            .filter(|w| w.acked() && w.completed.saturating_add(delta) < at);
        Expected::from_writes(acked)
    }
}

/// What a read must reflect of one post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expected {
    /// Nothing yet.
    #[default]
    Nothing,
    /// At least this version.
    AtLeast(i64),
    /// Deleted: 404, absent from feeds.
    Gone,
}

impl Expected {
    /// The strongest expectation among acknowledged writes (a delete is final).
    pub fn from_writes<'a>(writes: impl Iterator<Item = &'a Op>) -> Expected {
        writes.fold(Expected::Nothing, |acc, w| match (&w.outcome, acc) {
            (_, Expected::Gone) | (Outcome::Deleted, _) => Expected::Gone,
            (Outcome::Written { version, .. }, Expected::AtLeast(v)) => {
                Expected::AtLeast(v.max(*version))
            }
            (Outcome::Written { version, .. }, Expected::Nothing) => Expected::AtLeast(*version),
            (_, acc) => acc,
        })
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Nothing => f.write_str("anything"),
            Expected::AtLeast(v) => write!(f, "version >= {v}"),
            Expected::Gone => f.write_str("404 (deleted)"),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Written { version, .. } => write!(f, "written at version {version}"),
            Outcome::Deleted => f.write_str("deleted"),
            Outcome::Found { version } => write!(f, "version {version}"),
            Outcome::Absent => f.write_str("404"),
            Outcome::Page { items } => write!(f, "page of {} posts", items.len()),
            Outcome::Rejected { status } => write!(f, "rejected with {status}"),
            Outcome::Indeterminate { reason } => write!(f, "indeterminate: {reason}"),
        }
    }
}
