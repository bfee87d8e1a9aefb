-- Which creation event made each chat and message row.
--
-- The stream stores at most one creation event per (parent, number), so two creation events for
-- one number should never reach the persister. If one ever does (a number handed out twice),
-- the second must not overwrite the first row: the persister compares this id, leaves the row
-- as its creator wrote it, and dead-letters the other event with reason `number_conflict`.
-- NULL: a row written before this column existed, or by an update whose creation has not been
-- applied yet; the first creation event applied claims it.

ALTER TABLE chats
    ADD COLUMN creation_event_id BINARY(16) NULL;

ALTER TABLE messages
    ADD COLUMN creation_event_id BINARY(16) NULL;
