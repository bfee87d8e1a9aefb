//! What valid input is. The api turns these errors into 4xx responses.

/// Limits on client input. Documented in docs/api.md; configurable where it says so.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum application name length, in characters.
    pub max_name_chars: usize,
    /// Maximum message body size, in bytes of UTF-8.
    pub max_body_bytes: usize,
    /// Largest `per_page` a list accepts.
    pub max_per_page: u32,
    /// `per_page` when none is given.
    pub default_per_page: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name_chars: 255,
            max_body_bytes: 64 * 1024,
            max_per_page: 500,
            default_per_page: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("`{field}` is required and must not be blank")]
    Blank { field: &'static str },
    #[error("`{field}` is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("`body` is larger than {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("`{field}` must be a whole number between 1 and {max}")]
    OutOfRange { field: &'static str, max: u64 },
}

/// What counts as blank in a name or body: Unicode white space, and the zero-width no-break space
/// (U+FEFF), which JavaScript's `\s` also counts. The OpenAPI document's `pattern` for them
/// (a character outside exactly this set, [`NON_BLANK_PATTERN`]) reads the same in any regex
/// dialect.
pub fn is_blank_char(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// At least one character that is not blank ([`is_blank_char`]), spelled out.
pub const NON_BLANK_PATTERN: &str =
    "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]";

impl Limits {
    /// A trimmed, non-blank name within the length limit (also before trimming).
    pub fn name(&self, raw: Option<&str>) -> Result<String, ValidationError> {
        if raw.is_some_and(|raw| raw.chars().count() > self.max_name_chars) {
            return Err(ValidationError::TooLong {
                field: "name",
                max: self.max_name_chars,
            });
        }
        let name = raw
            .map(|raw| raw.trim_matches(is_blank_char))
            .unwrap_or_default();
        if name.is_empty() {
            return Err(ValidationError::Blank { field: "name" });
        }
        if name.chars().count() > self.max_name_chars {
            return Err(ValidationError::TooLong {
                field: "name",
                max: self.max_name_chars,
            });
        }
        Ok(name.to_owned())
    }

    /// A non-blank body within the size limit. The body is stored as given (not trimmed).
    pub fn body(&self, raw: Option<&str>) -> Result<String, ValidationError> {
        let body = raw.unwrap_or_default();
        if body.chars().all(is_blank_char) {
            return Err(ValidationError::Blank { field: "body" });
        }
        if body.len() > self.max_body_bytes {
            return Err(ValidationError::BodyTooLarge {
                max: self.max_body_bytes,
            });
        }
        Ok(body.to_owned())
    }

    /// Resolves `page`/`per_page` into (limit, offset).
    pub fn page(
        &self,
        page: Option<u64>,
        per_page: Option<u64>,
    ) -> Result<(u32, u64), ValidationError> {
        const MAX_PAGE: u64 = 1_000_000;
        let page = page.unwrap_or(1);
        if !(1..=MAX_PAGE).contains(&page) {
            return Err(ValidationError::OutOfRange {
                field: "page",
                max: MAX_PAGE,
            });
        }
        let per_page = per_page.unwrap_or(u64::from(self.default_per_page));
        if !(1..=u64::from(self.max_per_page)).contains(&per_page) {
            return Err(ValidationError::OutOfRange {
                field: "per_page",
                max: u64::from(self.max_per_page),
            });
        }
        let per_page = u32::try_from(per_page).expect("bounded by max_per_page");
        Ok((per_page, (page - 1) * u64::from(per_page)))
    }
}

/// Parses a chat or message number from a path segment: a positive integer that fits MySQL's
/// signed BIGINT.
pub fn number(raw: &str) -> Option<u64> {
    let n: u64 = raw.parse().ok()?;
    (1..=i64::MAX as u64).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blank_pattern_names_exactly_the_blank_characters() {
        let listed = [
            '\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2028}',
            '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}', '\u{feff}',
        ];
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let in_pattern = listed.contains(&c) || ('\u{2000}'..='\u{200a}').contains(&c);
            assert_eq!(is_blank_char(c), in_pattern, "U+{:04X}", c as u32);
        }
        assert_eq!(
            NON_BLANK_PATTERN,
            r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
        );
        let l = Limits::default();
        assert!(l.name(Some("\u{feff}\u{85} ")).is_err());
        assert!(l.body(Some("\u{feff}")).is_err());
        assert_eq!(l.name(Some("\u{feff} a \u{85}")).unwrap(), "a");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        let l = Limits::default();
        assert_eq!(l.name(Some("  app ")).unwrap(), "app");
        assert_eq!(
            l.name(Some("   ")),
            Err(ValidationError::Blank { field: "name" })
        );
        assert_eq!(l.name(None), Err(ValidationError::Blank { field: "name" }));
        assert!(l.name(Some(&"é".repeat(255))).is_ok());
        assert!(matches!(
            l.name(Some(&"a".repeat(256))),
            Err(ValidationError::TooLong { .. })
        ));
    }

    #[test]
    fn bodies_are_kept_verbatim_and_bounded_in_bytes() {
        let l = Limits {
            max_body_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(l.body(Some(" hi ")).unwrap(), " hi ");
        assert!(matches!(
            l.body(Some("\n\t")),
            Err(ValidationError::Blank { .. })
        ));
        assert_eq!(
            l.body(Some("ééé")),
            Err(ValidationError::BodyTooLarge { max: 4 })
        );
    }

    #[test]
    fn pages_default_and_are_bounded() {
        let l = Limits::default();
        assert_eq!(l.page(None, None).unwrap(), (50, 0));
        assert_eq!(l.page(Some(3), Some(10)).unwrap(), (10, 20));
        assert!(l.page(Some(0), None).is_err());
        assert!(l.page(None, Some(0)).is_err());
        assert!(l.page(None, Some(501)).is_err());
    }

    #[test]
    fn numbers_are_positive_integers() {
        assert_eq!(number("1"), Some(1));
        assert_eq!(number("0"), None);
        assert_eq!(number("-1"), None);
        assert_eq!(number("abc"), None);
        assert_eq!(number("1.5"), None);
        assert_eq!(number("99999999999999999999"), None);
    }
}
