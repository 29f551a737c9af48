//! G1, G2 and G3 over the reads of a [`History`]: pure, so every rule is tested on a hand-made
//! history below.
//!
//! ```text
//! read r of post p ─▶ G1 (token): the session's own acknowledged writes to p
//!                  ─▶ G2 (token): no version below one the session already saw, once that
//!                                 version is the session's own or older than Δ (a token
//!                                 describes writes, not reads: another's write younger than Δ
//!                                 may show on one pod before another)
//!                  ─▶ G3 (all):   every write to p acknowledged more than Δ before r was sent
//! feed page        ─▶ the same, per post the feed must (or must not) list
//! ```
//! A 404 where a version was required is excused when a delete of the post (acknowledged or not)
//! was sent before the read completed: ids are never reused, so nothing else explains it.

use std::collections::BTreeMap;

use crate::history::{Expected, Feed, History, Micros, Op, OpKind, Outcome};
use crate::report::{Guarantee, Violation};

/// What the read checks need besides the history.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Base URLs, indexed by [`Op::url`].
    pub urls: &'a [String],
    /// Author id of each client.
    pub authors: &'a [String],
    /// Δ of G3.
    pub delta: Micros,
}

/// The life of one created post, precomputed once for the feed checks.
struct Life {
    created: Micros,
    first_delete: Option<Micros>,
    creator: usize,
}

/// The created posts, all of them and by author: a feed page is judged against the posts its
/// feed can list, not against every post (an author's page against that author's posts).
struct Lives<'h> {
    all: BTreeMap<&'h str, Life>,
    by_author: BTreeMap<&'h str, Vec<&'h str>>,
}

impl<'h> Lives<'h> {
    fn new(history: &'h History, cx: Context<'h>) -> Lives<'h> {
        let all = lives(history);
        let mut by_author: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (&post, life) in &all {
            if let Some(author) = cx.authors.get(life.creator) {
                by_author.entry(author.as_str()).or_default().push(post);
            }
        }
        Lives { all, by_author }
    }

    /// The posts `feed` may list, with their lives.
    fn of<'a>(&'a self, feed: &Feed) -> Box<dyn Iterator<Item = (&'h str, &'a Life)> + 'a> {
        match feed {
            Feed::Tag => Box::new(self.all.iter().map(|(&post, life)| (post, life))),
            Feed::Author(author) => Box::new(
                self.by_author
                    .get(author.as_str())
                    .into_iter()
                    .flatten()
                    .filter_map(|&post| Some((post, self.all.get(post)?))),
            ),
        }
    }
}

/// Every G1, G2 and G3 violation among the reads of `history`.
pub fn check_reads(history: &History, cx: Context<'_>) -> Vec<Violation> {
    let lives = Lives::new(history, cx);
    let mut out = Vec::new();
    let mut highest: BTreeMap<(usize, &str), i64> = BTreeMap::new();
    for op in &history.ops {
        match (&op.kind, &op.outcome) {
            (OpKind::Get { post, token }, Outcome::Found { .. } | Outcome::Absent) => {
                let deletable = history.delete_invoked_before(post, op.completed);
                if *token {
                    let own = own_state(history, op, post);
                    if !allows(own, &op.outcome, deletable) {
                        out.push(violation(
                            cx,
                            Guarantee::ReadYourWrites,
                            op,
                            post,
                            own,
                            &op.outcome,
                        ));
                    }
                    if let Outcome::Found { version } = op.outcome {
                        monotonic(history, &mut highest, cx, op, post, version, &mut out);
                    }
                }
                let settled = history.settled_state(post, op.invoked, cx.delta);
                if !allows(settled, &op.outcome, deletable) {
                    out.push(violation(
                        cx,
                        Guarantee::BoundedStaleness,
                        op,
                        post,
                        settled,
                        &op.outcome,
                    ));
                }
            }
            (OpKind::List { feed, token }, Outcome::Page { items }) => {
                check_page(history, &lives, cx, op, feed, *token, items, &mut out);
                if *token {
                    for (post, version) in items {
                        monotonic(history, &mut highest, cx, op, post, *version, &mut out);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn lives(history: &History) -> BTreeMap<&str, Life> {
    history
        .creator
        .iter()
        .filter_map(|(post, &creator)| {
            let writes: Vec<&Op> = history.writes_to(post).collect();
            let created = writes
                .iter()
                .find(|w| w.kind == OpKind::Create)
                .map(|w| w.completed)?;
            let first_delete = writes
                .iter()
                .filter(|w| matches!(w.kind, OpKind::Delete { .. }))
                .map(|w| w.invoked)
                .min();
            Some((
                post.as_str(),
                Life {
                    created,
                    first_delete,
                    creator,
                },
            ))
        })
        .collect()
}

/// What the session's own acknowledged writes to `post` (all completed before `read`: a session
/// is sequential) require.
fn own_state(history: &History, read: &Op, post: &str) -> Expected {
    Expected::from_writes(
        history
            .writes_to(post)
            .filter(|w| w.client == read.client && w.acked() && w.completed <= read.invoked),
    )
}

/// Whether a single-post read's `outcome` satisfies `expected`.
fn allows(expected: Expected, outcome: &Outcome, deletable: bool) -> bool {
    match (expected, outcome) {
        (Expected::AtLeast(v), Outcome::Found { version }) => *version >= v,
        (Expected::AtLeast(_), Outcome::Absent) => deletable,
        (Expected::Gone, Outcome::Found { .. }) => false,
        _ => true,
    }
}

#[allow(clippy::too_many_arguments)] // one feed read's whole context; splitting it hides nothing
fn check_page(
    history: &History,
    lives: &Lives<'_>,
    cx: Context<'_>,
    op: &Op,
    feed: &Feed,
    token: bool,
    items: &[(String, i64)],
    out: &mut Vec<Violation>,
) {
    let listed: BTreeMap<&str, i64> = items.iter().map(|(p, v)| (p.as_str(), *v)).collect();
    for (post, life) in lives.of(feed) {
        if life.created > op.invoked {
            continue;
        }
        let deletable = life.first_delete.is_some_and(|d| d < op.completed);
        let seen = listed.get(post).copied();
        let mut judge = |guarantee, expected: Expected| {
            let ok = match (expected, seen) {
                (Expected::Gone, Some(_)) => false,
                (Expected::AtLeast(v), Some(version)) => version >= v,
                (Expected::AtLeast(_), None) => deletable,
                _ => true,
            };
            if !ok {
                let shown = seen.map_or(Outcome::Absent, |version| Outcome::Found { version });
                let mut v = violation(cx, guarantee, op, post, expected, &shown);
                v.seen = match seen {
                    Some(version) => format!("listed at version {version}"),
                    None => format!("not listed ({} items)", items.len()),
                };
                out.push(v);
            }
        };
        if token {
            judge(Guarantee::ReadYourWrites, own_state(history, op, post));
        }
        judge(
            Guarantee::BoundedStaleness,
            history.settled_state(post, op.invoked, cx.delta),
        );
    }
}

fn monotonic<'h>(
    history: &History,
    highest: &mut BTreeMap<(usize, &'h str), i64>,
    cx: Context<'_>,
    op: &Op,
    post: &'h str,
    version: i64,
    out: &mut Vec<Violation>,
) {
    let top = highest.entry((op.client, post)).or_insert(version);
    // The server orders reads by the token, which covers the session's writes; a version
    // someone else wrote less than Δ ago may be on one pod and not yet on another.
    let binding = history.writes_to(post).any(|w| {
        matches!(w.outcome, Outcome::Written { version: v, .. } if v == *top)
            && (w.client == op.client || w.completed + cx.delta < op.invoked)
    });
    if version < *top && binding {
        let expected = Expected::AtLeast(*top);
        out.push(violation(
            cx,
            Guarantee::MonotonicReads,
            op,
            post,
            expected,
            &Outcome::Found { version },
        ));
    } else {
        *top = version;
    }
}

fn violation(
    cx: Context<'_>,
    guarantee: Guarantee,
    op: &Op,
    post: &str,
    expected: Expected,
    seen: &Outcome,
) -> Violation {
    Violation {
        guarantee,
        client: Some(op.client),
        url: cx.urls.get(op.url).cloned().unwrap_or_default(),
        post: post.to_owned(),
        op: op.kind.name().to_owned(),
        expected: expected.to_string(),
        seen: match &op.tier {
            Some(tier) => format!("{seen} (served by {tier})"),
            None => seen.to_string(),
        },
        invoked_ms: op.invoked as f64 / 1000.0,
        completed_ms: op.completed as f64 / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Micros = 1000;

    fn op(client: usize, at_ms: u64, kind: OpKind, outcome: Outcome) -> Op {
        Op {
            client,
            url: 0,
            invoked: at_ms * MS,
            completed: at_ms * MS + MS,
            kind,
            outcome,
            tier: None,
        }
    }

    fn create(client: usize, at: u64, post: &str) -> Op {
        let written = Outcome::Written {
            post: post.into(),
            version: 1,
        };
        op(client, at, OpKind::Create, written)
    }

    fn update(client: usize, at: u64, post: &str, version: i64) -> Op {
        let kind = OpKind::Update { post: post.into() };
        let written = Outcome::Written {
            post: post.into(),
            version,
        };
        op(client, at, kind, written)
    }

    fn get(client: usize, at: u64, post: &str, token: bool, outcome: Outcome) -> Op {
        let kind = OpKind::Get {
            post: post.into(),
            token,
        };
        op(client, at, kind, outcome)
    }

    fn check(ops: Vec<Op>) -> Vec<(Guarantee, String)> {
        let urls = ["http://a".to_owned()];
        let authors = ["c0".to_owned(), "c1".to_owned()];
        let cx = Context {
            urls: &urls,
            authors: &authors,
            delta: 100 * MS,
        };
        check_reads(&History::new(ops), cx)
            .into_iter()
            .map(|v| (v.guarantee, v.seen))
            .collect()
    }

    #[test]
    fn a_token_read_below_the_sessions_write_breaks_g1_only_within_delta() {
        let stale = Outcome::Found { version: 1 };
        let found = check(vec![
            create(0, 0, "p"),
            update(0, 10, "p", 2),
            get(0, 20, "p", true, stale.clone()),
            get(1, 20, "p", false, stale.clone()),
        ]);
        assert_eq!(found, [(Guarantee::ReadYourWrites, "version 1".into())]);
        let late = check(vec![
            create(0, 0, "p"),
            update(0, 10, "p", 2),
            get(1, 500, "p", false, stale),
        ]);
        assert_eq!(late, [(Guarantee::BoundedStaleness, "version 1".into())]);
    }

    #[test]
    fn a_404_is_excused_only_by_a_delete_sent_before_the_read_completed() {
        let delete = |at| {
            let kind = OpKind::Delete { post: "p".into() };
            let outcome = Outcome::Indeterminate {
                reason: "timeout".into(),
            };
            op(1, at, kind, outcome)
        };
        let excused = check(vec![
            create(0, 0, "p"),
            delete(400),
            get(0, 400, "p", true, Outcome::Absent),
        ]);
        assert!(excused.is_empty(), "{excused:?}");
        let broken = check(vec![
            create(0, 0, "p"),
            get(0, 400, "p", true, Outcome::Absent),
            delete(600),
        ]);
        assert_eq!(broken.len(), 2, "G1 and G3: {broken:?}");
    }

    #[test]
    fn versions_going_down_for_a_session_break_g2() {
        let found = check(vec![
            create(0, 0, "p"),
            update(0, 10, "p", 2),
            get(0, 20, "p", true, Outcome::Found { version: 2 }),
            get(0, 30, "p", true, Outcome::Found { version: 1 }),
        ]);
        assert!(
            found.contains(&(Guarantee::MonotonicReads, "version 1".into())),
            "its own write: {found:?}"
        );
        // Another session's write younger than Δ may show on one pod before another.
        let young = check(vec![
            create(0, 0, "p"),
            update(1, 10, "p", 2),
            get(0, 20, "p", true, Outcome::Found { version: 2 }),
            get(0, 30, "p", true, Outcome::Found { version: 1 }),
        ]);
        assert!(young.is_empty(), "{young:?}");
        let old = check(vec![
            create(0, 0, "p"),
            update(1, 10, "p", 2),
            get(0, 20, "p", true, Outcome::Found { version: 2 }),
            get(0, 200, "p", true, Outcome::Found { version: 1 }),
        ]);
        assert!(
            old.contains(&(Guarantee::MonotonicReads, "version 1".into())),
            "older than Δ: {old:?}"
        );
    }

    #[test]
    fn feeds_must_list_settled_posts_and_drop_settled_deletes() {
        let page = |items: &[(&str, i64)]| Outcome::Page {
            items: items.iter().map(|(p, v)| ((*p).to_owned(), *v)).collect(),
        };
        let list = |client, at, feed, token, outcome| {
            op(client, at, OpKind::List { feed, token }, outcome)
        };
        let deleted = op(0, 5, OpKind::Delete { post: "q".into() }, Outcome::Deleted);
        let found = check(vec![
            create(0, 0, "p"),
            create(1, 0, "q"),
            deleted,
            create(0, 450, "r"),
            // Own delete still listed (G1, and G3: it settled); own fresh post missing (G1 only).
            list(0, 500, Feed::Tag, true, page(&[("q", 1), ("p", 1)])),
            // Another author's feed need not list p; r is younger than Δ.
            list(1, 500, Feed::Author("c1".into()), false, page(&[])),
        ]);
        assert_eq!(
            found,
            [
                (Guarantee::ReadYourWrites, "listed at version 1".into()),
                (Guarantee::BoundedStaleness, "listed at version 1".into()),
                (Guarantee::ReadYourWrites, "not listed (2 items)".into()),
            ]
        );
    }
}
