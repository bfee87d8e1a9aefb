//! Application tokens.
//!
//! A token is the only handle a client has on an application, so it is a bearer secret:
//! 24 random bytes (192 bits) from the OS-seeded CSPRNG, written as lowercase hex, and a
//! `Debug`/`Display` that never prints it. The only way to read the value is [`Token::expose`],
//! which makes every place that needs the raw value easy to find.

use std::fmt;

use rand::RngCore;

/// Length in bytes of the random part of a token.
pub const TOKEN_BYTES: usize = 24;
/// Length of a token's text form (hex of [`TOKEN_BYTES`]).
pub const TOKEN_LEN: usize = TOKEN_BYTES * 2;

/// An application token. Cloning is cheap enough; printing it is impossible.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// A new token with [`TOKEN_BYTES`] bytes of randomness.
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// Accepts a token from a path segment. Anything that cannot be a token is rejected early,
    /// so malformed input never costs a cache miss or a database query.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == TOKEN_LEN && raw.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self(raw.to_ascii_lowercase()))
    }

    /// The raw token text. Call only to store it, compare it, or hand it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_192_bits_and_parse_back() {
        let t = Token::generate();
        assert_eq!(t.expose().len(), TOKEN_LEN);
        const { assert!(TOKEN_BYTES * 8 >= 128) };
        assert_eq!(Token::parse(t.expose()), Some(t));
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::generate();
        assert!(!format!("{t:?} {t}").contains(t.expose()));
    }

    #[test]
    fn parse_rejects_wrong_shapes() {
        assert!(Token::parse("").is_none());
        assert!(Token::parse("abc").is_none());
        assert!(Token::parse(&"g".repeat(TOKEN_LEN)).is_none());
        assert!(Token::parse(&"a".repeat(TOKEN_LEN + 1)).is_none());
    }

    #[test]
    fn tokens_are_distinct() {
        let set: std::collections::HashSet<_> = (0..1000).map(|_| Token::generate()).collect();
        assert_eq!(set.len(), 1000);
    }
}
