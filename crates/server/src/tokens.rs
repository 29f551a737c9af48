//! Signed consistency tokens: `{position}.{lsn}.{signature}`, the signature an HMAC-SHA256 of the
//! first two parts (128 bits, hex).
//!
//! A token steers a read to a tier that has what it names; unsigned, anyone could name positions
//! far past the log and turn every read into a database read. A token whose signature no key
//! verifies is read as no token (and counted in `postcache_tokens_rejected_total`).

use hmac::{Hmac, KeyInit, Mac};
use postcache_cache::ConsistencyToken;
use sha2::Sha256;

use crate::metrics::TOKENS_REJECTED;

/// Bytes of the signature kept (of HMAC-SHA256's 32).
const SIGNATURE_BYTES: usize = 16;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// The keys that sign and verify tokens: the first signs, every one verifies (rotation).
#[derive(Clone)]
pub struct TokenKeys {
    keys: std::sync::Arc<[Hmac<Sha256>]>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKeys({} keys)", self.keys.len())
    }
}

impl TokenKeys {
    /// Keys from their secrets, the signing one first.
    ///
    /// # Errors
    /// No key, or one shorter than `MIN_KEY_BYTES` (the message says which, not what it is).
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<TokenKeys, String> {
        if secrets.is_empty() {
            return Err("no token key".to_owned());
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                let secret = secret.as_ref();
                if secret.len() < MIN_KEY_BYTES {
                    return Err(format!(
                        "token key {} is {} bytes; at least {MIN_KEY_BYTES} are needed",
                        i + 1,
                        secret.len()
                    ));
                }
                Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenKeys { keys: keys.into() })
    }

    /// The token's string form, signed with the first key.
    pub fn sign(&self, token: ConsistencyToken) -> String {
        let payload = token.to_string();
        let mut mac = self.keys[0].clone();
        mac.update(payload.as_bytes());
        let signature: [u8; 32] = mac.finalize().into_bytes().into();
        let mut out = String::with_capacity(payload.len() + 1 + 2 * SIGNATURE_BYTES);
        out.push_str(&payload);
        out.push('.');
        for byte in &signature[..SIGNATURE_BYTES] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// What a client sent back: `Ok(Some)` for a token one of the keys signed, `Ok(None)` for a
    /// well-formed token none did (forged, or signed by a key since retired), `Err` for
    /// something that is not a token at all.
    #[allow(clippy::result_unit_err)] // the caller words its own error
    pub fn verify(&self, text: &str) -> Result<Option<ConsistencyToken>, ()> {
        if ConsistencyToken::parse(text).is_some() {
            // Unsigned: an earlier version's token (or a forgery of one).
            metrics::counter!(TOKENS_REJECTED).increment(1);
            return Ok(None);
        }
        let (payload, signature) = text.rsplit_once('.').ok_or(())?;
        let token = ConsistencyToken::parse(payload).ok_or(())?;
        let signature = decode_hex(signature).ok_or(())?;
        let signed = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(payload.as_bytes());
            // Constant time, over the truncated length.
            mac.verify_truncated_left(&signature).is_ok()
        });
        if signed {
            Ok(Some(token))
        } else {
            metrics::counter!(TOKENS_REJECTED).increment(1);
            Ok(None)
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 2 * SIGNATURE_BYTES {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postcache_cache::Position;

    fn token(seq: u64, lsn: u64) -> ConsistencyToken {
        ConsistencyToken {
            position: Position {
                epoch: 1_732_600_000_000,
                seq,
            },
            lsn,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_any_change_to_it_does_not() {
        let keys = TokenKeys::new(&["0123456789abcdef-one"]).unwrap();
        let signed = keys.sign(token(3, 0x16b3748));
        assert_eq!(keys.verify(&signed), Ok(Some(token(3, 0x16b3748))));
        let forged_position = signed.replacen("-3.", "-4.", 1);
        assert_eq!(keys.verify(&forged_position), Ok(None));
        let (payload, _) = signed.rsplit_once('.').unwrap();
        assert_eq!(
            keys.verify(&format!("{payload}.{}", "0".repeat(32))),
            Ok(None)
        );
        assert_eq!(
            keys.verify(payload),
            Ok(None),
            "an unsigned token (an earlier version's) is no token"
        );
        for garbage in ["", "1-2", "1-2.3.xyz", &format!("{payload}.abc")] {
            assert_eq!(keys.verify(garbage), Err(()), "{garbage:?}");
        }
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_accepts_the_others() {
        let old = TokenKeys::new(&["old-key-0123456789"]).unwrap();
        let rotated = TokenKeys::new(&["new-key-0123456789", "old-key-0123456789"]).unwrap();
        let from_old = old.sign(token(1, 1));
        assert_eq!(rotated.verify(&from_old), Ok(Some(token(1, 1))));
        let from_new = rotated.sign(token(2, 2));
        assert_eq!(
            old.verify(&from_new),
            Ok(None),
            "the old key never signed it"
        );
        assert!(TokenKeys::new(&["short"]).is_err());
        assert!(TokenKeys::new::<&str>(&[]).is_err());
    }
}
