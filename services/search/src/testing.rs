//! The behavioural suite every backend must pass. Each call uses application ids no other call
//! uses, so it can run against a shared Elasticsearch.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Hit, Scope, SearchBackend, SearchDoc, SearchRequest, Terms};

static NEXT_APP: AtomicU64 = AtomicU64::new(0);

struct Chat<'a> {
    backend: &'a dyn SearchBackend,
    app: u64,
    chat: u64,
}

impl Chat<'_> {
    async fn put(&self, number: u64, version: u64, body: &str) {
        let doc = SearchDoc {
            application_id: self.app,
            chat_number: self.chat,
            number,
            body: body.into(),
            version,
        };
        self.backend.index(&[doc]).await.expect("index");
    }

    async fn page(&self, query: &str, limit: u32, offset: u64) -> Vec<Hit> {
        let request = SearchRequest {
            application_id: self.app,
            chat_number: self.chat,
            terms: Terms::parse(query).expect("valid query"),
            limit,
            offset,
        };
        self.backend.search(&request).await.expect("search")
    }

    async fn numbers(&self, query: &str) -> Vec<u64> {
        self.page(query, 100, 0)
            .await
            .iter()
            .map(|h| h.number)
            .collect()
    }
}

/// Runs every behaviour against `backend`, panicking with the failing one.
pub async fn suite(backend: &dyn SearchBackend) {
    // A random base keeps repeated runs against a persistent backend apart.
    let base = 1_000_000_000
        + u64::from(std::process::id()) * 1000
        + NEXT_APP.fetch_add(10, Ordering::SeqCst);
    let c = Chat {
        backend,
        app: base,
        chat: 1,
    };
    c.put(1, 1, "Hello world").await;
    c.put(2, 2, "The quick brown fox, jumping!").await;
    c.put(3, 3, "Un café crème à Paris").await;
    c.put(4, 4, "日本語のテキスト").await;
    c.put(5, 5, "e-mail me at bob@example.com").await;

    // Partial matches inside words and across words, case-insensitive.
    assert_eq!(c.numbers("ell").await, vec![1], "substring inside a word");
    assert_eq!(c.numbers("wor hel").await, vec![1], "several partial words");
    assert_eq!(c.numbers("HELLO").await, vec![1], "case-insensitive query");
    assert_eq!(
        c.numbers("wor xyz").await,
        Vec::<u64>::new(),
        "every word must match"
    );
    assert_eq!(
        c.numbers("quick, FOX!").await,
        vec![2],
        "punctuation in the query"
    );
    assert_eq!(c.numbers("jump").await, vec![2], "punctuation in the body");
    assert_eq!(c.numbers("CAFÉ").await, vec![3], "unicode case folding");
    assert_eq!(c.numbers("crè").await, vec![3], "unicode substring");
    assert_eq!(c.numbers("日本").await, vec![4], "non-latin scripts");
    assert_eq!(c.numbers("mail").await, vec![5], "hyphenated words");
    assert_eq!(c.numbers("example.com").await, vec![5], "dotted words");

    // Ranking: a whole-word match ranks above a substring match.
    let r = Chat {
        backend,
        app: base + 1,
        chat: 1,
    };
    r.put(1, 1, "othello plays tonight and othello again").await;
    r.put(2, 2, "hello").await;
    r.put(3, 3, "nothing relevant").await;
    assert_eq!(r.numbers("hello").await, vec![2, 1], "whole word first");

    // Pagination: disjoint pages covering every hit.
    let p = Chat {
        backend,
        app: base + 2,
        chat: 1,
    };
    for n in 1..=25 {
        p.put(n, n, &format!("paged message {n}")).await;
    }
    let mut seen = Vec::new();
    for (offset, expected) in [(0, 10), (10, 10), (20, 5), (30, 0)] {
        let page = p.page("paged", 10, offset).await;
        assert_eq!(page.len(), expected, "page at offset {offset}");
        seen.extend(page.iter().map(|h| h.number));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=25).collect::<Vec<_>>(),
        "pages cover every hit once"
    );

    // Isolation between chats and applications.
    let other_chat = Chat { chat: 2, ..c };
    let other_app = Chat { app: base + 3, ..c };
    other_chat.put(1, 10, "Hello world").await;
    other_app.put(1, 11, "Hello world").await;
    assert_eq!(
        c.numbers("hello").await,
        vec![1],
        "only this chat's message"
    );
    assert_eq!(other_chat.numbers("hello").await, vec![1]);
    assert_eq!(other_app.numbers("hello").await, vec![1]);
    assert_eq!(
        Chat { app: base + 4, ..c }.numbers("hello").await,
        Vec::<u64>::new()
    );

    // Updates replace old text; an older version arriving late changes nothing.
    c.put(6, 20, "apple pie").await;
    c.put(6, 21, "banana split").await;
    assert_eq!(c.numbers("apple").await, Vec::<u64>::new(), "old text gone");
    assert_eq!(c.numbers("banana").await, vec![6], "new text found");
    c.put(6, 20, "apple pie").await;
    assert_eq!(
        c.numbers("apple").await,
        Vec::<u64>::new(),
        "stale version ignored"
    );
    assert_eq!(c.page("banana", 10, 0).await[0].body, "banana split");

    // Redelivery creates no duplicate.
    c.put(1, 1, "Hello world").await;
    c.put(1, 1, "Hello world").await;
    assert_eq!(c.numbers("hello").await, vec![1], "one hit per message");

    // Deleting an application removes its documents in every chat, and only its own; deleting
    // again is no error.
    let gone = Chat { app: base + 5, ..c };
    let gone_other_chat = Chat { chat: 2, ..gone };
    gone.put(1, 1, "Hello world").await;
    gone_other_chat.put(1, 2, "Hello world").await;
    assert_eq!(gone.numbers("hello").await, vec![1]);
    for _ in 0..2 {
        backend
            .delete(Scope::Application(base + 5))
            .await
            .expect("delete");
    }
    assert_eq!(gone.numbers("hello").await, Vec::<u64>::new(), "deleted");
    assert_eq!(gone_other_chat.numbers("hello").await, Vec::<u64>::new());
    assert_eq!(c.numbers("hello").await, vec![1], "other applications stay");

    // Deleting a chat removes its documents only: other chats of the application stay.
    let doomed = Chat { chat: 7, ..c };
    let neighbour = Chat { chat: 8, ..c };
    doomed.put(1, 1, "Hello world").await;
    neighbour.put(1, 1, "Hello world").await;
    for _ in 0..2 {
        backend
            .delete(Scope::Chat {
                application_id: c.app,
                chat_number: 7,
            })
            .await
            .expect("delete");
    }
    assert_eq!(doomed.numbers("hello").await, Vec::<u64>::new(), "deleted");
    assert_eq!(
        neighbour.numbers("hello").await,
        vec![1],
        "other chats stay"
    );

    // A deleted message is an empty body at a deletion's version: found by nothing, and no
    // update, however late in the stream, brings it back.
    let deletion = 1u64 << 62; // `confab_core::event::DELETION_VERSION`: outranks every update
    neighbour.put(2, 3, "tombstone candidate").await;
    neighbour.put(2, deletion + 4, "").await;
    neighbour.put(2, 9, "tombstone candidate again").await;
    assert_eq!(neighbour.numbers("tombstone").await, Vec::<u64>::new());
    assert_eq!(neighbour.numbers("hello").await, vec![1]);
}
