//! The embedded backend: a tantivy index on local disk (or in memory for tests).
//!
//! One writer per index: the indexer process owns it, and the api queries it through the
//! indexer's internal endpoint. Commits and searches run on the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value, STRING,
};
use tantivy::tokenizer::{LowerCaser, NgramTokenizer, SimpleTokenizer, TextAnalyzer};
use tantivy::{
    doc, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term,
    TERMINATED,
};

use crate::query::{NGRAM_MAX, NGRAM_MIN};
use crate::{newest_per_id, Error, Hit, Result, Scope, SearchBackend, SearchDoc, SearchRequest};

const NGRAM_TOKENIZER: &str = "confab_ngram";
const WORDS_TOKENIZER: &str = "confab_words";
/// Whole-word matches rank above substring matches.
const WORD_BOOST: f32 = 2.0;
const WRITER_MEMORY: usize = 64 * 1024 * 1024;
const VERSION: &str = "version";

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    application: Field,
    chat: Field,
    number: Field,
    version: Field,
    body: Field,
    words: Field,
}

pub struct Embedded {
    reader: IndexReader,
    writer: Arc<Mutex<IndexWriter>>,
    fields: Fields,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let filter = NumericOptions::default().set_indexed();
    let stored = NumericOptions::default().set_stored().set_fast();
    let text = |tokenizer: &str, stored: bool| {
        let o = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        if stored {
            o.set_stored()
        } else {
            o
        }
    };
    let fields = Fields {
        id: b.add_text_field("id", STRING),
        application: b.add_u64_field("application_id", filter.clone()),
        chat: b.add_u64_field("chat_number", filter),
        number: b.add_u64_field("number", stored.clone()),
        version: b.add_u64_field(VERSION, stored),
        body: b.add_text_field("body", text(NGRAM_TOKENIZER, true)),
        words: b.add_text_field("words", text(WORDS_TOKENIZER, false)),
    };
    (b.build(), fields)
}

fn backend_error(error: impl std::fmt::Display) -> Error {
    Error::Unavailable(error.to_string())
}

impl Embedded {
    /// Opens the index in `dir`, creating it if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(backend_error)?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(dir).map_err(backend_error)?;
        let index = Index::open_or_create(directory, schema).map_err(backend_error)?;
        Self::with_index(index, fields)
    }

    /// An in-memory index, for tests.
    pub fn in_memory() -> Result<Self> {
        let (schema, fields) = schema();
        Self::with_index(Index::create_in_ram(schema), fields)
    }

    fn with_index(index: Index, fields: Fields) -> Result<Self> {
        let ngrams = NgramTokenizer::new(NGRAM_MIN, NGRAM_MAX, false).map_err(backend_error)?;
        index.tokenizers().register(
            NGRAM_TOKENIZER,
            TextAnalyzer::builder(ngrams).filter(LowerCaser).build(),
        );
        index.tokenizers().register(
            WORDS_TOKENIZER,
            TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(LowerCaser)
                .build(),
        );
        // One indexing thread: every batch is committed, and each thread writes a segment of its
        // own per commit, whose term table alone is 4 MB to zero and walk. Two threads made two
        // small segments per batch, and twice the merging, for no gain: the indexer shares its
        // cores with the other services.
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(backend_error)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(backend_error)?;
        Ok(Self {
            reader,
            writer: Arc::new(Mutex::new(writer)),
            fields,
        })
    }

    /// Number of live documents, for tests and progress reports.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn index_blocking(&self, docs: &[SearchDoc]) -> Result<()> {
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| Error::Unavailable("writer poisoned".into()))?;
        let written = self.write_newer(&mut writer, docs);
        if written.is_err() {
            // Nothing of a failed batch may stay pending in the writer: the next batch's
            // lookups, which only see committed documents, would not know of it.
            if let Err(error) = writer.rollback() {
                tracing::error!(%error, "cannot roll back a failed index batch");
            }
        }
        written
    }

    /// Adds each document that is newer than the indexed one with its id (or has none), and
    /// commits. Holds the writer throughout, as every write does, and every write commits and
    /// reloads the reader before letting it go: so the searcher has every document written so
    /// far, and one it does not have needs no deletion.
    fn write_newer(&self, writer: &mut IndexWriter, docs: &[SearchDoc]) -> Result<()> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        for doc in newest_per_id(docs) {
            let id_text = doc.id();
            let id = Term::from_field_text(f.id, &id_text);
            match indexed_version(&searcher, f, &id)? {
                Some(version) if version >= doc.version => continue,
                Some(_) => {
                    writer.delete_term(id);
                }
                None => {}
            }
            writer
                .add_document(doc!(
                    f.id => id_text,
                    f.application => doc.application_id,
                    f.chat => doc.chat_number,
                    f.number => doc.number,
                    f.version => doc.version,
                    f.body => doc.body.as_str(),
                    f.words => doc.body.as_str(),
                ))
                .map_err(backend_error)?;
        }
        writer.commit().map_err(backend_error)?;
        self.reader.reload().map_err(backend_error)?;
        Ok(())
    }

    fn delete_blocking(&self, scope: Scope) -> Result<()> {
        let f = self.fields;
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| Error::Unavailable("writer poisoned".into()))?;
        match scope {
            Scope::Application(application_id) => {
                writer.delete_term(Term::from_field_u64(f.application, application_id));
            }
            Scope::Chat {
                application_id,
                chat_number,
            } => {
                let term = |t: Term| {
                    Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as Box<dyn Query>
                };
                writer
                    .delete_query(Box::new(BooleanQuery::new(vec![
                        (
                            Occur::Must,
                            term(Term::from_field_u64(f.application, application_id)),
                        ),
                        (Occur::Must, term(Term::from_field_u64(f.chat, chat_number))),
                    ])))
                    .map_err(backend_error)?;
            }
        }
        writer.commit().map_err(backend_error)?;
        self.reader.reload().map_err(backend_error)?;
        Ok(())
    }

    fn query(&self, request: &SearchRequest) -> Box<dyn Query> {
        let f = self.fields;
        let term =
            |t: Term| Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (
                Occur::Must,
                term(Term::from_field_u64(f.application, request.application_id)),
            ),
            (
                Occur::Must,
                term(Term::from_field_u64(f.chat, request.chat_number)),
            ),
        ];
        for gram in request.terms.required_grams() {
            clauses.push((Occur::Must, term(Term::from_field_text(f.body, &gram))));
        }
        for word in &request.terms.words {
            clauses.push((
                Occur::Should,
                Box::new(BoostQuery::new(
                    term(Term::from_field_text(f.words, word)),
                    WORD_BOOST,
                )),
            ));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    fn search_blocking(&self, request: &SearchRequest) -> Result<Vec<Hit>> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let collector = TopDocs::with_limit(request.limit.max(1) as usize)
            .and_offset(usize::try_from(request.offset).unwrap_or(usize::MAX))
            .order_by_score();
        let top = searcher
            .search(&*self.query(request), &collector)
            .map_err(backend_error)?;
        top.into_iter()
            .map(|(score, address)| {
                let doc: TantivyDocument = searcher.doc(address).map_err(backend_error)?;
                Ok(Hit {
                    number: doc
                        .get_first(f.number)
                        .and_then(|v| v.as_u64())
                        .unwrap_or_default(),
                    body: doc
                        .get_first(f.body)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    score,
                })
            })
            .collect()
    }
}

/// The version of the live document with the id `id`, if there is one: read from the id's
/// postings and the version column segment by segment, without a query (a scored search per
/// document, and reading its stored fields, cost far more).
fn indexed_version(searcher: &Searcher, f: Fields, id: &Term) -> Result<Option<u64>> {
    for segment in searcher.segment_readers() {
        let postings = segment
            .inverted_index(f.id)
            .map_err(backend_error)?
            .read_postings(id, IndexRecordOption::Basic)
            .map_err(backend_error)?;
        let Some(mut postings) = postings else {
            continue;
        };
        let alive = segment.alive_bitset();
        let mut doc = postings.doc();
        while doc != TERMINATED {
            if alive.is_none_or(|alive| alive.is_alive(doc)) {
                let versions = segment.fast_fields().u64(VERSION).map_err(backend_error)?;
                return Ok(versions.first(doc));
            }
            doc = postings.advance();
        }
    }
    Ok(None)
}

/// Runs `work` on the blocking pool: tantivy commits and searches must not block the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Unavailable(format!("search task failed: {e}")))?
}

/// A cheaply clonable handle, so work can move to the blocking pool.
#[derive(Clone)]
pub struct Shared(pub Arc<Embedded>);

impl SearchBackend for Shared {
    fn index<'a>(&'a self, docs: &'a [SearchDoc]) -> BoxFuture<'a, Result<()>> {
        let (me, docs) = (self.0.clone(), docs.to_vec());
        Box::pin(blocking(move || me.index_blocking(&docs)))
    }

    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<Vec<Hit>>> {
        let (me, request) = (self.0.clone(), request.clone());
        Box::pin(blocking(move || me.search_blocking(&request)))
    }

    fn delete(&self, scope: Scope) -> BoxFuture<'_, Result<()>> {
        let me = self.0.clone();
        Box::pin(blocking(move || me.delete_blocking(scope)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_backend_passes_the_behavioural_suite() {
        let backend = Shared(Arc::new(Embedded::in_memory().unwrap()));
        crate::testing::suite(&backend).await;
    }

    #[tokio::test]
    async fn an_index_on_disk_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = Shared(Arc::new(Embedded::open(dir.path()).unwrap()));
            let doc = SearchDoc {
                application_id: 1,
                chat_number: 1,
                number: 1,
                body: "persisted".into(),
                version: 1,
            };
            backend.index(&[doc]).await.unwrap();
        }
        let reopened = Embedded::open(dir.path()).unwrap();
        assert_eq!(reopened.num_docs(), 1);
    }
}
