//! What a search request means, independent of the backend: the user's text becomes words
//! (lowercased, split on anything that is not a letter or digit), and each word must match as a
//! substring of some word of the body. User text is never parsed as query syntax by any backend.

/// Deepest result a search may page to (`offset + limit`), as in Elasticsearch's default
/// `index.max_result_window`; deeper pages cost memory proportional to the depth.
pub const MAX_RESULT_WINDOW: u64 = 10_000;

/// Longest accepted query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// Shortest word that takes part in matching; shorter words are ignored.
pub const MIN_WORD_CHARS: usize = 2;
/// The n of the n-grams the backends index (both 2- and 3-grams are indexed).
pub const NGRAM_MIN: usize = 2;
pub const NGRAM_MAX: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("`query` is required and must contain a word of at least {MIN_WORD_CHARS} letters or digits")]
    Empty,
    #[error("`query` is longer than {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("search results can be paged to the first {MAX_RESULT_WINDOW} only")]
    TooDeep,
}

/// A validated search: the words to find, in order, deduplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub words: Vec<String>,
}

impl Terms {
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        if raw.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError::TooLong);
        }
        let mut words: Vec<String> = Vec::new();
        for word in raw
            .split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .filter(|w| w.chars().count() >= MIN_WORD_CHARS)
        {
            if !words.contains(&word) {
                words.push(word);
            }
        }
        if words.is_empty() {
            return Err(QueryError::Empty);
        }
        Ok(Self { words })
    }

    /// The n-grams every matching document must contain: for each word, its trigrams (or the
    /// word itself when it is a bigram).
    pub fn required_grams(&self) -> Vec<String> {
        let mut grams: Vec<String> = Vec::new();
        for word in &self.words {
            for gram in grams_of(word) {
                if !grams.contains(&gram) {
                    grams.push(gram);
                }
            }
        }
        grams
    }
}

/// The longest n-grams (n ≤ [`NGRAM_MAX`]) that cover `word`.
pub fn grams_of(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    let n = chars.len().min(NGRAM_MAX);
    chars.windows(n).map(|w| w.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_split_and_deduplicated() {
        let t = Terms::parse("Wor, HEL! wor a").unwrap();
        assert_eq!(t.words, vec!["wor", "hel"]);
    }

    #[test]
    fn empty_and_overlong_queries_are_rejected() {
        assert_eq!(Terms::parse(""), Err(QueryError::Empty));
        assert_eq!(Terms::parse(" ?! a "), Err(QueryError::Empty));
        assert_eq!(Terms::parse(&"a".repeat(201)), Err(QueryError::TooLong));
        assert!(Terms::parse(&"ab ".repeat(66)).is_ok());
    }

    #[test]
    fn grams_cover_each_word() {
        assert_eq!(grams_of("hello"), vec!["hel", "ell", "llo"]);
        assert_eq!(grams_of("he"), vec!["he"]);
        assert_eq!(grams_of("çaé"), vec!["çaé"]);
        let t = Terms::parse("ell wor").unwrap();
        assert_eq!(t.required_grams(), vec!["ell", "wor"]);
    }

    #[test]
    fn query_syntax_is_just_text() {
        let t = Terms::parse(r#"body:"x" OR (y* AND -z) \\ {"a":1}"#).unwrap();
        assert_eq!(t.words, vec!["body", "or", "and"]);
    }
}
