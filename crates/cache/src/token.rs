//! Consistency tokens: what a client sends back so that its reads reflect its writes (G1, G2).
//!
//! A token names the event-log position of the write and the commit LSN on the primary
//! (0 on SQLite). A pod whose applied log position is at or past the token's may answer from L1;
//! otherwise the read goes to L2 (written through before the position was appended) or to an L3
//! replica that has replayed the LSN. Position `0-0` means the write's event was not appended at
//! once (Redis failed): such a token is only served from L3.

use std::fmt;

use crate::eventlog::Position;

/// `{position}.{lsn in hex}`, e.g. `1732600000000-3.16b3748`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConsistencyToken {
    /// Event-log position of the write (`0-0`: not known).
    pub position: Position,
    /// Commit LSN of the write on the primary (PostgreSQL), 0 on SQLite.
    pub lsn: u64,
}

impl Default for Position {
    fn default() -> Position {
        Position::ZERO
    }
}

impl ConsistencyToken {
    /// Parses the string form; `None` for anything else.
    pub fn parse(s: &str) -> Option<ConsistencyToken> {
        let (position, lsn) = s.split_once('.')?;
        // `<n>.<lsn>` is the form of earlier versions: its position means nothing to the shared
        // log, so it is read as "unknown" (served from L3 at its LSN).
        let legacy = !position.is_empty()
            && position.len() <= 20
            && position.bytes().all(|b| b.is_ascii_digit());
        let position = if legacy {
            Position::ZERO
        } else {
            Position::parse(position)?
        };
        if lsn.is_empty() || lsn.len() > 16 || !lsn.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let lsn = u64::from_str_radix(lsn, 16).ok()?;
        Some(ConsistencyToken { position, lsn })
    }

    /// The later of two tokens (a client keeps the newest it has seen: G2).
    pub fn max(self, other: ConsistencyToken) -> ConsistencyToken {
        ConsistencyToken {
            position: self.position.max(other.position),
            lsn: self.lsn.max(other.lsn),
        }
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.position, self.lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, seq: u64) -> Position {
        Position { epoch, seq }
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = ConsistencyToken {
            position: at(1732600000000, 3),
            lsn: 0x16b3748,
        };
        assert_eq!(t.to_string(), "1732600000000-3.16b3748");
        assert_eq!(ConsistencyToken::parse("1732600000000-3.16b3748"), Some(t));
        assert_eq!(
            ConsistencyToken::parse("42.ff"),
            Some(ConsistencyToken {
                position: Position::ZERO,
                lsn: 0xff
            }),
            "an earlier version's token is honoured from L3"
        );
        for bad in [
            "",
            "42",
            "1-2",
            "1-2.",
            ".1",
            "-1-0.0",
            "x-1.0",
            "1-1.g",
            "1-1.00000000000000001",
        ] {
            assert_eq!(ConsistencyToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn max_keeps_the_newest_of_each_part() {
        let a = ConsistencyToken {
            position: at(1, 5),
            lsn: 1,
        };
        let b = ConsistencyToken {
            position: at(1, 3),
            lsn: 9,
        };
        assert_eq!(
            a.max(b),
            ConsistencyToken {
                position: at(1, 5),
                lsn: 9
            }
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Positions and LSNs over the whole range, and small ones so that ties and zeros occur.
    fn token() -> impl Strategy<Value = ConsistencyToken> {
        let wide = (any::<u64>(), any::<u64>(), any::<u64>());
        let small = (0..3u64, 0..3u64, 0..3u64);
        prop_oneof![wide, small].prop_map(|(epoch, seq, lsn)| ConsistencyToken {
            position: Position { epoch, seq },
            lsn,
        })
    }

    /// Strings near the grammar (with overlong fields, leading zeros, upper-case hex), the
    /// legacy form, a token's alphabet in any order, and anything at all.
    fn token_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,22}-[0-9]{1,22}\\.[0-9a-fA-F]{1,18}",
            "[0-9]{1,22}\\.[0-9a-fA-F]{1,18}",
            "[0-9a-gA-G.+ -]{0,30}",
            any::<String>(),
        ]
    }

    /// Display's spelling of the number `digits` names in `radix`: no leading zeros, lower case.
    fn canonical(digits: &str, radix: u32) -> String {
        let trimmed = digits.trim_start_matches('0');
        let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
        if radix == 16 {
            trimmed.to_ascii_lowercase()
        } else {
            trimmed.to_owned()
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_is_the_identity(t in token()) {
            prop_assert_eq!(ConsistencyToken::parse(&t.to_string()), Some(t));
        }

        /// `parse` never panics, and what it accepts is Display's output (or the legacy
        /// `<n>.<lsn>`, read as position unknown) up to leading zeros and the case of hex digits.
        #[test]
        fn parse_accepts_only_displayed_or_legacy_tokens(s in token_like()) {
            let Some(t) = ConsistencyToken::parse(&s) else {
                return Ok(());
            };
            let (position, lsn) = s.split_once('.').expect("an accepted token has a dot");
            prop_assert_eq!(canonical(lsn, 16), format!("{:x}", t.lsn), "{:?}", s);
            match position.split_once('-') {
                Some((epoch, seq)) => prop_assert_eq!(
                    format!("{}-{}.{}", canonical(epoch, 10), canonical(seq, 10), canonical(lsn, 16)),
                    t.to_string()
                ),
                None => {
                    prop_assert!(
                        !position.is_empty()
                            && position.len() <= 20
                            && position.bytes().all(|b| b.is_ascii_digit()),
                        "{:?} is neither displayed nor legacy",
                        s
                    );
                    prop_assert_eq!(t.position, Position::ZERO);
                }
            }
        }

        #[test]
        fn max_is_a_join(a in token(), b in token(), c in token()) {
            let m = a.max(b);
            prop_assert_eq!(m, b.max(a));
            prop_assert_eq!(a.max(b.max(c)), m.max(c));
            prop_assert_eq!(a.max(a), a);
            for t in [a, b] {
                prop_assert!(m.position >= t.position && m.lsn >= t.lsn, "{} < {}", m, t);
            }
            // The least such token: each part is one of the inputs', nothing newer is invented.
            prop_assert!([a.position, b.position].contains(&m.position));
            prop_assert!([a.lsn, b.lsn].contains(&m.lsn));
        }
    }
}
