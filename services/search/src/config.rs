//! The search settings the api and the indexer share, parsed in one place.

use std::collections::HashMap;

/// Where Elasticsearch is: `ELASTICSEARCH_URL` (set and not empty selects Elasticsearch) and
/// `CONFAB_ELASTICSEARCH_INDEX` (default `confab-messages`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticsearchConfig {
    pub url: String,
    pub index: String,
}

/// The index name when `CONFAB_ELASTICSEARCH_INDEX` is unset.
pub const DEFAULT_INDEX: &str = "confab-messages";

impl ElasticsearchConfig {
    /// The Elasticsearch settings of `env`, or `None` when `ELASTICSEARCH_URL` is unset or empty
    /// (search is then the embedded index).
    pub fn from_env(env: &HashMap<String, String>) -> Option<Self> {
        let url = env.get("ELASTICSEARCH_URL").filter(|u| !u.is_empty())?;
        let index = env
            .get("CONFAB_ELASTICSEARCH_INDEX")
            .filter(|i| !i.is_empty())
            .map_or(DEFAULT_INDEX, String::as_str);
        Some(Self {
            url: url.clone(),
            index: index.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn elasticsearch_is_selected_by_a_non_empty_url() {
        assert_eq!(ElasticsearchConfig::from_env(&env(&[])), None);
        assert_eq!(
            ElasticsearchConfig::from_env(&env(&[("ELASTICSEARCH_URL", "")])),
            None
        );
        assert_eq!(
            ElasticsearchConfig::from_env(&env(&[("ELASTICSEARCH_URL", "http://es:9200")])),
            Some(ElasticsearchConfig {
                url: "http://es:9200".into(),
                index: DEFAULT_INDEX.into()
            })
        );
        let named = ElasticsearchConfig::from_env(&env(&[
            ("ELASTICSEARCH_URL", "http://es:9200"),
            ("CONFAB_ELASTICSEARCH_INDEX", "tenant-a"),
        ]));
        assert_eq!(named.map(|c| c.index), Some("tenant-a".into()));
    }
}
