-- Purging deleted applications from the search index.
--
-- The indexer removes a tombstoned application's documents and records when it last did so in
-- `search_purged_at`. It purges again until one purge began at least the grace period after the
-- deletion, so a batch that was already being indexed when the tombstone was written cannot leave
-- documents behind; later events of the application are dropped by the indexer itself.

ALTER TABLE applications
    ADD COLUMN search_purged_at DATETIME(6) NULL;
