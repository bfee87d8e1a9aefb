//! A wrapper that keeps secrets (connection URLs with passwords, credentials) out of `Debug` output.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl Secret<String> {
    /// Whether `headers` carry this secret as `Authorization: Bearer <secret>`, compared in
    /// constant time (only the length can leak, which says nothing about the content).
    pub fn is_bearer_of(&self, headers: &http::HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .is_some_and(|presented| bool::from(self.0.as_bytes().ct_eq(presented.as_bytes())))
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_credential_matches() {
        let secret = Secret::new("s3cret".to_owned());
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(secret.is_bearer_of(&with("Bearer s3cret")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret!",
            "Bearer ",
            "s3cret",
            "Basic s3cret",
        ] {
            assert!(!secret.is_bearer_of(&with(wrong)), "{wrong}");
        }
        assert!(!secret.is_bearer_of(&http::HeaderMap::new()));
    }

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("mysql://u:hunter2@h/db".to_string());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "mysql://u:hunter2@h/db");
    }
}
