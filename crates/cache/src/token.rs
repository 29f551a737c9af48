//! Consistency tokens: what a client sends back so that its reads reflect its writes (G1, G2).
//!
//! A token names the event-log position of the write and the commit LSN on the primary
//! (0 on SQLite). Reads holding a token must be served from a tier that has caught up with both.

use std::fmt;

/// `{position}.{lsn in hex}`, e.g. `42.16b3748`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConsistencyToken {
    /// Event-log position of the write.
    pub position: i64,
    /// Commit LSN of the write on the primary (PostgreSQL), 0 on SQLite.
    pub lsn: u64,
}

impl ConsistencyToken {
    /// Parses the string form; `None` for anything else.
    pub fn parse(s: &str) -> Option<ConsistencyToken> {
        let (position, lsn) = s.split_once('.')?;
        let position = position.parse::<i64>().ok().filter(|p| *p >= 0)?;
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

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = ConsistencyToken {
            position: 42,
            lsn: 0x16b3748,
        };
        assert_eq!(t.to_string(), "42.16b3748");
        assert_eq!(ConsistencyToken::parse("42.16b3748"), Some(t));
        for bad in [
            "",
            "42",
            "42.",
            ".1",
            "-1.0",
            "x.0",
            "1.g",
            "1.00000000000000001",
        ] {
            assert_eq!(ConsistencyToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn max_keeps_the_newest_of_each_part() {
        let a = ConsistencyToken {
            position: 5,
            lsn: 1,
        };
        let b = ConsistencyToken {
            position: 3,
            lsn: 9,
        };
        assert_eq!(
            a.max(b),
            ConsistencyToken {
                position: 5,
                lsn: 9
            }
        );
    }
}
