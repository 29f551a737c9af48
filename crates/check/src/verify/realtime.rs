//! G5 over the subscribers' [`StreamLog`]s: per post, versions strictly increase on each stream
//! (no duplicate, no reordering), and every acknowledged write's event arrives.
//!
//! A `resync` says "events before me may be missing": it resets the order check, and excuses any
//! write sent before it arrived. An event overtaken by a newer version of its post is superseded
//! (DESIGN G5: the newer event carries the whole post). Only a subscriber connected at the end is held to completeness
//! (one whose pod went away did not "stay connected"), and only for writes sent after its first
//! stream opened.

use std::collections::{BTreeMap, BTreeSet};

use crate::events::{Change, Delivered, StreamLog};
use crate::history::{History, Op, OpKind, Outcome};
use crate::report::{Guarantee, Violation};

/// Events that arrived twice or out of version order.
pub fn out_of_order(logs: &[StreamLog], urls: &[String]) -> Vec<Violation> {
    let mut out = Vec::new();
    for log in logs {
        // Per post, the highest version received since the last resync.
        let mut last: BTreeMap<&str, i64> = BTreeMap::new();
        for delivered in &log.delivered {
            match delivered {
                Delivered::Resync { .. } => last.clear(),
                Delivered::Event {
                    at,
                    id,
                    change,
                    post,
                    version,
                } => {
                    if let Some(&before) = last.get(post.as_str())
                        && *version <= before
                    {
                        let what = if *version == before {
                            "duplicate"
                        } else {
                            "reordered"
                        };
                        out.push(Violation {
                            guarantee: Guarantee::Realtime,
                            client: None,
                            url: urls.get(log.url).cloned().unwrap_or_default(),
                            post: post.clone(),
                            op: "event".into(),
                            expected: format!("a version above {before}"),
                            seen: format!("{change:?} at version {version}, event {id} ({what})"),
                            invoked_ms: *at as f64 / 1000.0,
                            completed_ms: *at as f64 / 1000.0,
                        });
                    }
                    let top = last.entry(post).or_insert(*version);
                    *top = (*top).max(*version);
                }
            }
        }
    }
    out
}

/// Acknowledged writes whose event a subscriber held to completeness has not received.
pub fn missing(history: &History, logs: &[StreamLog], urls: &[String]) -> Vec<Violation> {
    let mut out = Vec::new();
    for log in logs.iter().filter(|l| l.open) {
        let Some(connected) = log.connected else {
            continue;
        };
        let mut received: BTreeSet<(Change, &str, Option<i64>)> = BTreeSet::new();
        // Per post, the newest version delivered: an event overtaken by a newer version of its
        // post (racing writers, a late relay) is superseded, and the newer one carries the post.
        let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
        let mut last_resync = None;
        for delivered in &log.delivered {
            match delivered {
                Delivered::Resync { at } => last_resync = Some(*at),
                Delivered::Event {
                    change,
                    post,
                    version,
                    ..
                } => {
                    let newest = newest.entry(post.as_str()).or_insert(*version);
                    *newest = (*newest).max(*version);
                    let version = (*change != Change::Deleted).then_some(*version);
                    received.insert((*change, post, version));
                }
            }
        }
        for op in history.ops.iter().filter(|op| op.acked()) {
            let Some((change, post, version)) = expected_event(op) else {
                continue;
            };
            let superseded = version.is_some_and(|v| newest.get(post).is_some_and(|&n| n > v));
            let excused = last_resync.is_some_and(|r| r >= op.invoked) || superseded;
            if op.invoked < connected || excused || received.contains(&(change, post, version)) {
                continue;
            }
            out.push(Violation {
                guarantee: Guarantee::Realtime,
                client: Some(op.client),
                url: urls.get(log.url).cloned().unwrap_or_default(),
                post: post.to_owned(),
                op: op.kind.name().to_owned(),
                expected: match version {
                    Some(v) => format!("{change:?} event at version {v}"),
                    None => format!("{change:?} event"),
                },
                seen: "never received".into(),
                invoked_ms: op.invoked as f64 / 1000.0,
                completed_ms: op.completed as f64 / 1000.0,
            });
        }
    }
    out
}

/// The event an acknowledged write must produce (a delete's version is not in its answer).
fn expected_event(op: &Op) -> Option<(Change, &str, Option<i64>)> {
    match (&op.kind, &op.outcome) {
        (OpKind::Create, Outcome::Written { post, version }) => {
            Some((Change::Created, post, Some(*version)))
        }
        (OpKind::Update { post }, Outcome::Written { version, .. }) => {
            Some((Change::Updated, post, Some(*version)))
        }
        (OpKind::Delete { post }, Outcome::Deleted) => Some((Change::Deleted, post, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: u64, change: Change, post: &str, version: i64) -> Delivered {
        Delivered::Event {
            at,
            id: at.to_string(),
            change,
            post: post.into(),
            version,
        }
    }

    fn log(delivered: Vec<Delivered>) -> StreamLog {
        StreamLog {
            url: 0,
            connected: Some(0),
            open: true,
            reconnects: 0,
            delivered,
        }
    }

    fn write(at: u64, kind: OpKind, outcome: Outcome) -> Op {
        Op {
            client: 0,
            url: 0,
            invoked: at,
            completed: at + 1,
            kind,
            outcome,
            tier: None,
        }
    }

    #[test]
    fn duplicates_and_reorders_are_caught_but_a_resync_resets() {
        let urls = ["http://a".to_owned()];
        let logs = [log(vec![
            event(1, Change::Created, "p", 1),
            event(2, Change::Updated, "p", 3),
            event(3, Change::Updated, "p", 2),
            event(4, Change::Updated, "p", 3),
            Delivered::Resync { at: 5 },
            event(6, Change::Updated, "p", 3),
        ])];
        let found: Vec<String> = out_of_order(&logs, &urls)
            .into_iter()
            .map(|v| v.seen)
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("reordered") && found[1].contains("duplicate"));
    }

    #[test]
    fn a_missing_event_counts_unless_a_later_resync_excuses_it() {
        let urls = ["http://a".to_owned()];
        let written = |post: &str, version| Outcome::Written {
            post: post.into(),
            version,
        };
        let history = History::new(vec![
            write(10, OpKind::Create, written("p", 1)),
            write(20, OpKind::Update { post: "p".into() }, written("p", 2)),
            write(30, OpKind::Delete { post: "p".into() }, Outcome::Deleted),
        ]);
        let complete = log(vec![
            event(11, Change::Created, "p", 1),
            event(21, Change::Updated, "p", 2),
            event(31, Change::Deleted, "p", 3),
        ]);
        assert!(missing(&history, &[complete], &urls).is_empty());
        let gap = log(vec![
            event(11, Change::Created, "p", 1),
            Delivered::Resync { at: 25 },
        ]);
        let found = missing(&history, &[gap], &urls);
        assert_eq!(found.len(), 1, "only the delete, sent after the resync");
        assert_eq!(found[0].op, "delete");
        let mut gone = log(vec![]);
        gone.open = false;
        assert!(missing(&history, &[gone], &urls).is_empty());
    }
}
