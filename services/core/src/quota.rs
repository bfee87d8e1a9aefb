//! Per-application quotas: what a tenant may do, and the pure decisions about them.
//!
//! An application stores the quotas it *asked for* (each optional); the api fills the gaps from
//! its configured defaults when it reads them, so changing a default reaches every application
//! that did not set its own. Enforcement lives in the api: the chat limit and the message rate in
//! one Redis script each (atomic across replicas), the body size before anything is published,
//! concurrent live subscriptions in a Redis lease set shared by every replica.

use serde::{Deserialize, Serialize};

/// The quotas in force for an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quotas {
    /// Most chats the application may create; 0 means no limit.
    pub max_chats: u64,
    /// Sustained message creations per second; 0 means no limit.
    pub messages_per_second: u32,
    /// Message creations allowed at once on top of an idle application (the bucket size); at
    /// least 1.
    pub message_burst: u32,
    /// Largest message body, in bytes of UTF-8.
    pub max_body_bytes: u32,
    /// Concurrent live subscriptions (SSE/WebSocket) across all replicas; 0 means no limit.
    pub max_subscriptions: u32,
}

impl Default for Quotas {
    /// The documented defaults for applications that set nothing (docs/api.md, "Quotas and the
    /// admin API").
    fn default() -> Self {
        Self {
            max_chats: 100_000,
            messages_per_second: 1_000,
            message_burst: 2_000,
            max_body_bytes: 64 * 1024,
            max_subscriptions: 1_000,
        }
    }
}

/// Quotas as requested: every field optional, a missing one takes the api's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QuotaRequest {
    /// Chats the application may have; 0: no limit; at most 2^53 - 1.
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9007199254740991_u64)
    )]
    pub max_chats: Option<u64>,
    /// Messages per second; 0: no limit; at most 10,000,000.
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10000000))]
    pub messages_per_second: Option<u32>,
    /// Messages at once after idling: 1 to 10,000,000.
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000000))]
    pub message_burst: Option<u32>,
    /// Largest message body in bytes: 1 to the server's `CONFAB_MAX_BODY_BYTES` (65,536 by
    /// default).
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65536))]
    pub max_body_bytes: Option<u32>,
    /// Concurrent live subscriptions (SSE/WebSocket) across all replicas; 0: no limit; at most
    /// 1,000,000.
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000000))]
    pub max_subscriptions: Option<u32>,
}

/// An optional unsigned integer, also written as a number with a zero fraction (`5.0`), which
/// JSON Schema counts as an integer too.
pub(crate) fn whole<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Float(f64),
    }
    let Some(number) = Option::<Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = match number {
        Number::Int(n) => Some(n),
        Number::Float(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => {
            Some(f as u64)
        }
        Number::Float(_) => None,
    };
    whole
        .and_then(|n| T::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("expected a whole number in range"))
}

/// The largest chat limit: the numbering script compares in Lua numbers, exact up to 2^53.
pub const MAX_CHATS_LIMIT: u64 = (1 << 53) - 1;
/// The largest message rate and burst an application may ask for.
pub const MAX_RATE: u32 = 10_000_000;
/// The largest subscription limit an application may ask for.
pub const MAX_SUBSCRIPTIONS_LIMIT: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("`message_burst` must be at least 1")]
    BurstBelowOne,
    #[error("`{field}` must be at most {max}")]
    TooLarge { field: &'static str, max: u64 },
    #[error("`max_body_bytes` must be between 1 and {max}")]
    BodyOutOfRange { max: u32 },
}

impl QuotaRequest {
    /// Checks what was asked for against the server's hard limit on bodies.
    pub fn validate(&self, hard_max_body_bytes: u32) -> Result<(), QuotaError> {
        if self.message_burst == Some(0) {
            return Err(QuotaError::BurstBelowOne);
        }
        for (field, value, max) in [
            ("max_chats", self.max_chats, MAX_CHATS_LIMIT),
            (
                "messages_per_second",
                self.messages_per_second.map(u64::from),
                u64::from(MAX_RATE),
            ),
            (
                "message_burst",
                self.message_burst.map(u64::from),
                u64::from(MAX_RATE),
            ),
            (
                "max_subscriptions",
                self.max_subscriptions.map(u64::from),
                u64::from(MAX_SUBSCRIPTIONS_LIMIT),
            ),
        ] {
            if value.is_some_and(|v| v > max) {
                return Err(QuotaError::TooLarge { field, max });
            }
        }
        if let Some(bytes) = self.max_body_bytes {
            if bytes == 0 || bytes > hard_max_body_bytes {
                return Err(QuotaError::BodyOutOfRange {
                    max: hard_max_body_bytes,
                });
            }
        }
        Ok(())
    }

    /// The quotas in force: what was asked for, the defaults elsewhere. The body size never
    /// exceeds the server's hard limit, whatever a default says.
    pub fn resolve(&self, defaults: &Quotas, hard_max_body_bytes: u32) -> Quotas {
        Quotas {
            max_chats: self.max_chats.unwrap_or(defaults.max_chats),
            messages_per_second: self
                .messages_per_second
                .unwrap_or(defaults.messages_per_second),
            message_burst: self.message_burst.unwrap_or(defaults.message_burst).max(1),
            max_body_bytes: self
                .max_body_bytes
                .unwrap_or(defaults.max_body_bytes)
                .min(hard_max_body_bytes),
            max_subscriptions: self.max_subscriptions.unwrap_or(defaults.max_subscriptions),
        }
    }
}

/// The rate limiter's parameters in microseconds, for the GCRA script in the api: one message
/// "costs" `emission_us`, and an application may run up to `tolerance_us` ahead of the clock.
/// `None` when the rate is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateParams {
    pub emission_us: u64,
    pub tolerance_us: u64,
}

impl Quotas {
    pub fn rate(&self) -> Option<RateParams> {
        if self.messages_per_second == 0 {
            return None;
        }
        let emission_us = (1_000_000 / u64::from(self.messages_per_second)).max(1);
        Some(RateParams {
            emission_us,
            tolerance_us: emission_us * u64::from(self.message_burst.max(1) - 1),
        })
    }

    /// The chat-limit argument of the numbering script: 0 means none.
    pub fn chat_cap(&self) -> u64 {
        self.max_chats
    }
}

/// What the `RateLimit-Policy` and `RateLimit` headers (IETF httpapi draft) say about one
/// application's message rate: the burst is the quota (`q`), refilled over `w` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitState {
    /// The policy's name in the headers: `messages` (an application's message rate) or
    /// `applications` (a client's application creations).
    pub policy: &'static str,
    /// `q`: requests admitted back to back from a rested state (the burst).
    pub quota: u64,
    /// `w`: seconds for an emptied burst to refill.
    pub window_secs: u64,
    /// `r`: requests admitted now, back to back, after this one.
    pub remaining: u64,
    /// `t`: seconds until the whole burst is available again.
    pub reset_secs: u64,
}

impl RateParams {
    fn burst(&self) -> u64 {
        self.tolerance_us / self.emission_us + 1
    }

    /// The state after an admission that left the limiter `ahead_us` ahead of the clock (the
    /// GCRA's theoretical arrival time minus now): the next request is admitted while it stays
    /// within the tolerance, each one moving it an emission interval on.
    pub fn admitted(&self, policy: &'static str, ahead_us: u64) -> RateLimitState {
        let room = self.tolerance_us + self.emission_us;
        RateLimitState {
            policy,
            quota: self.burst(),
            window_secs: (self.burst() * self.emission_us).div_ceil(1_000_000).max(1),
            remaining: room.saturating_sub(ahead_us) / self.emission_us,
            reset_secs: ahead_us.div_ceil(1_000_000),
        }
    }

    /// The state of a refusal that must wait `wait_us` for one request: the state then runs
    /// `wait + tolerance` ahead of the clock, which is when the whole burst is back.
    pub fn refused(&self, policy: &'static str, wait_us: u64) -> RateLimitState {
        RateLimitState {
            policy,
            quota: self.burst(),
            window_secs: (self.burst() * self.emission_us).div_ceil(1_000_000).max(1),
            remaining: 0,
            reset_secs: (wait_us + self.tolerance_us).div_ceil(1_000_000),
        }
    }
}

impl RateLimitState {
    /// `RateLimit-Policy`: `"<policy>";q=<quota>;w=<window>`.
    pub fn policy_header(&self) -> String {
        self.field(("q", self.quota), ("w", self.window_secs))
    }

    /// `RateLimit`: `"<policy>";r=<remaining>;t=<reset>`.
    pub fn header(&self) -> String {
        self.field(("r", self.remaining), ("t", self.reset_secs))
    }

    /// `"<policy>";<a>=<x>;<b>=<y>`, written without `format!` (it is on every admitted post).
    fn field(&self, (a, x): (&str, u64), (b, y): (&str, u64)) -> String {
        let mut value = String::with_capacity(self.policy.len() + 48);
        let mut digits = itoa::Buffer::new();
        value.push('"');
        value.push_str(self.policy);
        value.push_str("\";");
        value.push_str(a);
        value.push('=');
        value.push_str(digits.format(x));
        value.push(';');
        value.push_str(b);
        value.push('=');
        value.push_str(digits.format(y));
        value
    }
}

/// The `Retry-After` value, in whole seconds (rounded up, at least 1), for a wait in µs.
pub fn retry_after_secs(wait_us: u64) -> u64 {
    wait_us.div_ceil(1_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_requests_take_whole_numbers_also_written_as_floats_and_refuse_too_large_ones() {
        let request: QuotaRequest =
            serde_json::from_str(r#"{"messages_per_second": 434312.0, "max_chats": 3}"#).unwrap();
        assert_eq!(request.messages_per_second, Some(434_312));
        assert_eq!(request.max_chats, Some(3));
        for bad in [
            r#"{"messages_per_second": 1.5}"#,
            r#"{"messages_per_second": -1}"#,
            r#"{"message_burst": 4294967296}"#,
        ] {
            assert!(serde_json::from_str::<QuotaRequest>(bad).is_err(), "{bad}");
        }
        let too_fast = QuotaRequest {
            messages_per_second: Some(MAX_RATE + 1),
            ..QuotaRequest::default()
        };
        assert_eq!(
            too_fast.validate(65536),
            Err(QuotaError::TooLarge {
                field: "messages_per_second",
                max: 10_000_000
            })
        );
    }

    #[test]
    fn rate_limit_headers_count_down_the_burst_and_say_when_it_is_whole_again() {
        // 1 per second, burst 10.
        let params = RateParams {
            emission_us: 1_000_000,
            tolerance_us: 9_000_000,
        };
        let first = params.admitted("messages", 1_000_000);
        assert_eq!(
            first,
            RateLimitState {
                policy: "messages",
                quota: 10,
                window_secs: 10,
                remaining: 9,
                reset_secs: 1
            }
        );
        assert_eq!(first.policy_header(), r#""messages";q=10;w=10"#);
        assert_eq!(first.header(), r#""messages";r=9;t=1"#);
        // The tenth back to back leaves nothing; half a second later still nothing.
        assert_eq!(params.admitted("messages", 10_000_000).remaining, 0);
        assert_eq!(params.admitted("messages", 10_000_000).reset_secs, 10);
        assert_eq!(params.admitted("messages", 9_500_000).remaining, 0);
        assert_eq!(params.admitted("messages", 8_500_000).remaining, 1);
        // Refused, one request 0.4 s away: the whole burst is back 9.4 s after that.
        let refused = params.refused("messages", 400_000);
        assert_eq!((refused.remaining, refused.reset_secs), (0, 10));
        // No burst: 100 per second, one at a time.
        let strict = RateParams {
            emission_us: 10_000,
            tolerance_us: 0,
        };
        assert_eq!(strict.admitted("messages", 10_000).remaining, 0);
        assert_eq!(strict.admitted("messages", 10_000).window_secs, 1);
    }

    #[test]
    fn missing_fields_take_defaults_and_body_is_capped() {
        let defaults = Quotas::default();
        let asked = QuotaRequest {
            max_chats: Some(3),
            ..QuotaRequest::default()
        };
        let q = asked.resolve(&defaults, 1000);
        assert_eq!(q.max_chats, 3);
        assert_eq!(q.messages_per_second, defaults.messages_per_second);
        assert_eq!(q.max_body_bytes, 1000, "the hard limit wins over a default");
        assert_eq!(q.max_subscriptions, 1_000);
    }

    #[test]
    fn subscriptions_default_to_1000_zero_means_no_limit_and_more_than_a_million_is_refused() {
        let defaults = Quotas {
            max_subscriptions: 7,
            ..Quotas::default()
        };
        assert_eq!(Quotas::default().max_subscriptions, 1_000);
        assert_eq!(
            QuotaRequest::default()
                .resolve(&defaults, 10)
                .max_subscriptions,
            7,
            "a missing limit follows the default"
        );
        let unlimited: QuotaRequest =
            serde_json::from_str(r#"{"max_subscriptions": 0.0}"#).unwrap();
        assert_eq!(unlimited.max_subscriptions, Some(0));
        assert_eq!(unlimited.validate(10), Ok(()));
        assert_eq!(unlimited.resolve(&defaults, 10).max_subscriptions, 0);
        let most = QuotaRequest {
            max_subscriptions: Some(MAX_SUBSCRIPTIONS_LIMIT),
            ..QuotaRequest::default()
        };
        assert_eq!(most.validate(10), Ok(()));
        let too_many = QuotaRequest {
            max_subscriptions: Some(MAX_SUBSCRIPTIONS_LIMIT + 1),
            ..QuotaRequest::default()
        };
        assert_eq!(
            too_many.validate(10),
            Err(QuotaError::TooLarge {
                field: "max_subscriptions",
                max: 1_000_000
            })
        );
        assert!(serde_json::from_str::<QuotaRequest>(r#"{"max_subscriptions": -1}"#).is_err());
        assert_eq!(
            serde_json::to_value(most).unwrap(),
            serde_json::json!({"max_subscriptions": 1_000_000}),
            "only what was asked for is shown"
        );
    }

    #[test]
    fn bad_requests_are_named() {
        let zero_burst = QuotaRequest {
            message_burst: Some(0),
            ..QuotaRequest::default()
        };
        assert_eq!(zero_burst.validate(10), Err(QuotaError::BurstBelowOne));
        let huge = QuotaRequest {
            max_body_bytes: Some(11),
            ..QuotaRequest::default()
        };
        assert_eq!(
            huge.validate(10),
            Err(QuotaError::BodyOutOfRange { max: 10 })
        );
        assert_eq!(QuotaRequest::default().validate(10), Ok(()));
    }

    #[test]
    fn rate_parameters_follow_rate_and_burst() {
        let q = Quotas {
            messages_per_second: 10,
            message_burst: 5,
            ..Quotas::default()
        };
        let p = q.rate().unwrap();
        assert_eq!(p.emission_us, 100_000);
        assert_eq!(
            p.tolerance_us, 400_000,
            "five at once: the first plus four ahead"
        );
        let unlimited = Quotas {
            messages_per_second: 0,
            ..q
        };
        assert_eq!(unlimited.rate(), None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_000_000), 1);
        assert_eq!(retry_after_secs(1_000_001), 2);
    }
}
