//! Client tokens: short-lived, scoped stand-ins for an application token, minted by the
//! application's own server for one end user's browser or app.
//!
//! A client token names its application, the chats it may touch (or all), its rights and when it
//! expires, and carries an HMAC-SHA256 of all that keyed by a secret derived from the
//! application's current token ([`ClientKey::of`]). Verifying one is a hash, no round trip; a
//! rotation of the application token changes the key, which invalidates every client token
//! minted before it. The text form fits a URL path segment (`EventSource` cannot send headers):
//!
//! `ct1.<application id>.<expiry, unix seconds>.<rights>.<chats: 1-2-7 or all>.<signature>`
//!
//! Like application tokens, it is a bearer secret: `Debug` and `Display` never print it.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::Token;

/// What every client token starts with.
pub const PREFIX: &str = "ct1.";
/// The longest lifetime a client token may be given (24 h).
pub const MAX_TTL_SECS: u64 = 86_400;
/// The default lifetime (1 h).
pub const DEFAULT_TTL_SECS: u64 = 3_600;
/// The most chats one client token may name.
pub const MAX_CHATS: usize = 100;
/// Bytes of the HMAC kept in the token (128 bits).
const SIGNATURE_BYTES: usize = 16;

/// One thing a client token may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Read chats and messages, search.
    Read,
    /// Create messages.
    Post,
    /// Update messages.
    Edit,
    /// Delete messages.
    Delete,
    /// Follow chats live (SSE, WebSocket).
    Subscribe,
}

impl Right {
    pub const ALL: [Self; 5] = [
        Self::Read,
        Self::Post,
        Self::Edit,
        Self::Delete,
        Self::Subscribe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Post => "post",
            Self::Edit => "edit",
            Self::Delete => "delete",
            Self::Subscribe => "subscribe",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|right| right.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Right`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    pub fn with(self, right: Right) -> Self {
        Self(self.0 | right.bit())
    }

    pub fn allows(self, right: Right) -> bool {
        self.0 & right.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Right::ALL
            .into_iter()
            .filter(|right| self.allows(*right))
            .map(Right::name)
            .collect()
    }
}

/// What a client token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub application_id: u64,
    /// Unix seconds.
    pub expires_at: i64,
    pub rights: Rights,
    /// The chats it may touch, ascending; `None`: every chat of the application.
    pub chats: Option<Vec<u64>>,
}

impl Claims {
    /// Whether it may touch `chat` (`None`: the application's chat list itself, which only a
    /// token for every chat may read).
    pub fn covers(&self, chat: Option<u64>) -> bool {
        match (&self.chats, chat) {
            (None, _) => true,
            (Some(chats), Some(chat)) => chats.binary_search(&chat).is_ok(),
            (Some(_), None) => false,
        }
    }

    /// The signed text of these claims (everything but the signature).
    fn body(&self) -> String {
        let chats = match &self.chats {
            None => "all".to_owned(),
            Some(chats) => chats
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("-"),
        };
        format!(
            "{PREFIX}{}.{}.{}.{chats}",
            self.application_id, self.expires_at, self.rights.0
        )
    }

    /// The client token for these claims, signed with `key`.
    pub fn sign(&self, key: &ClientKey) -> ClientToken {
        let body = self.body();
        let signature = key.sign(body.as_bytes());
        ClientToken(format!("{body}.{}", hex::encode(signature)))
    }
}

/// The key an application's client tokens are signed with: derived from its current token, so
/// rotating the token retires every client token signed before.
#[derive(Clone)]
pub struct ClientKey([u8; 32]);

impl ClientKey {
    pub fn of(token: &Token) -> Self {
        Self(
            Sha256::new()
                .chain_update(b"confab client tokens v1\0")
                .chain_update(token.expose().as_bytes())
                .finalize()
                .into(),
        )
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    fn sign(&self, body: &[u8]) -> [u8; SIGNATURE_BYTES] {
        let full = self.mac().chain_update(body).finalize().into_bytes();
        let mut signature = [0; SIGNATURE_BYTES];
        signature.copy_from_slice(&full[..SIGNATURE_BYTES]);
        signature
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

/// A client token's text.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientToken(String);

impl ClientToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientToken(<redacted>)")
    }
}

/// A client token read from a request, not verified yet: its application is known, so the
/// caller can find that application's key.
#[derive(Debug)]
pub struct Unverified {
    claims: Claims,
    body_len: usize,
    signature: [u8; SIGNATURE_BYTES],
}

/// Why a client token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the client token is not valid")]
    Invalid,
    #[error("the client token has expired")]
    Expired,
}

impl Unverified {
    /// Reads `raw` if it is shaped like a client token (`None` otherwise: it may be an
    /// application token).
    pub fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(PREFIX)?;
        let mut parts = rest.split('.');
        let (app, expiry, rights, chats, signature) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() {
            return None;
        }
        let number = |text: &str| {
            (!text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())
                .flatten()
        };
        let chats = if chats == "all" {
            None
        } else {
            let list: Option<Vec<u64>> = chats.split('-').map(number).collect();
            let list = list?;
            if list.len() > MAX_CHATS || list.windows(2).any(|w| w[0] >= w[1]) {
                return None;
            }
            Some(list)
        };
        let rights = u8::try_from(number(rights)?).ok()?;
        let mut bytes = [0; SIGNATURE_BYTES];
        hex::decode_to_slice(signature, &mut bytes).ok()?;
        Some(Self {
            claims: Claims {
                application_id: number(app)?,
                expires_at: i64::try_from(number(expiry)?).ok()?,
                rights: Rights(rights),
                chats,
            },
            body_len: raw.len() - signature.len() - 1,
            signature: bytes,
        })
        .filter(|token| token.claims.body().len() == token.body_len)
    }

    pub fn application_id(&self) -> u64 {
        self.claims.application_id
    }

    /// The claims, if `key` signed them and they have not expired at `now` (unix seconds).
    pub fn verify(self, key: &ClientKey, now: i64) -> Result<Claims, Refused> {
        let body = self.claims.body();
        key.mac()
            .chain_update(body.as_bytes())
            .verify_truncated_left(&self.signature)
            .map_err(|_| Refused::Invalid)?;
        if now >= self.claims.expires_at {
            return Err(Refused::Expired);
        }
        Ok(self.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(chats: Option<Vec<u64>>) -> Claims {
        Claims {
            application_id: 42,
            expires_at: 2_000,
            rights: Rights::default().with(Right::Read).with(Right::Post),
            chats,
        }
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_until_it_expires() {
        let token = Token::generate();
        let key = ClientKey::of(&token);
        let signed = claims(Some(vec![1, 2, 7])).sign(&key);
        assert!(signed.expose().starts_with("ct1.42.2000.3.1-2-7."));
        let read = Unverified::parse(signed.expose()).unwrap();
        assert_eq!(read.application_id(), 42);
        let verified = read.verify(&key, 1_999).unwrap();
        assert_eq!(verified, claims(Some(vec![1, 2, 7])));
        assert!(verified.rights.allows(Right::Post) && !verified.rights.allows(Right::Delete));
        assert!(verified.covers(Some(7)) && !verified.covers(Some(3)) && !verified.covers(None));
        assert_eq!(
            Unverified::parse(signed.expose())
                .unwrap()
                .verify(&key, 2_000),
            Err(Refused::Expired)
        );
    }

    #[test]
    fn another_key_or_any_changed_character_is_refused() {
        let key = ClientKey::of(&Token::generate());
        let signed = claims(None).sign(&key);
        let rotated = ClientKey::of(&Token::generate());
        assert_eq!(
            Unverified::parse(signed.expose())
                .unwrap()
                .verify(&rotated, 0),
            Err(Refused::Invalid)
        );
        // Widening the chats or the rights, or moving the expiry, breaks the signature.
        for (from, to) in [(".all.", ".1."), (".3.", ".31."), (".2000.", ".9000.")] {
            let forged = signed.expose().replacen(from, to, 1);
            let refused = Unverified::parse(&forged).map(|t| t.verify(&key, 0));
            assert!(
                matches!(refused, None | Some(Err(Refused::Invalid))),
                "{from} → {to}"
            );
        }
    }

    #[test]
    fn only_well_formed_tokens_parse() {
        let key = ClientKey::of(&Token::generate());
        let good = claims(Some(vec![5])).sign(&key);
        assert!(Unverified::parse(good.expose()).is_some());
        for bad in [
            "",
            "ct1.",
            "ct1.42.2000.3.all",
            "ct1.42.2000.3.2-1.00000000000000000000000000000000",
            "ct1.42.2000.3.1-1.00000000000000000000000000000000",
            "ct1.x.2000.3.all.00000000000000000000000000000000",
            "ct1.42.2000.3.all.zz",
            "ct1.042.2000.3.all.00000000000000000000000000000000",
        ] {
            assert!(Unverified::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Unverified::parse(Token::generate().expose()).is_none());
        assert_eq!(format!("{good:?}"), "ClientToken(<redacted>)");
    }
}
