-- Deleting a chat or a message (`DELETE …/chats/{n}`, `DELETE …/messages/{n}`).
--
-- Both stay as tombstones: the row keeps its number (numbers are never reused) and `deleted_at`,
-- so an event still in flight for the item (an update, a message of the deleted chat) finds it
-- deleted and cannot bring it back. A deleted message's body is erased at once (and its
-- `version` is a deletion's, above every update's); a deleted chat's messages are removed by the
-- counter reconciler's purge, and its search documents by the indexer, which records when it last
-- did so in `search_purged_at` exactly as for applications. Counts exclude deleted rows; the
-- (parent, deleted_at) keys keep the reconciler's recounts index-only.

ALTER TABLE chats
    ADD COLUMN deleted_at DATETIME(6) NULL,
    ADD COLUMN search_purged_at DATETIME(6) NULL,
    ADD KEY ix_chats_deleted_at (deleted_at),
    ADD KEY ix_chats_application_live (application_id, deleted_at);

ALTER TABLE messages
    ADD COLUMN deleted_at DATETIME(6) NULL,
    ADD KEY ix_messages_chat_live (chat_id, deleted_at);
