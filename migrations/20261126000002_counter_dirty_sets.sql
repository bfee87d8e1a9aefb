-- Dirty sets for the counter reconciler: the persister marks, in the same transaction as the rows
-- it writes, every chat that got new messages and every application that got new chats. The
-- reconciler claims marks (FOR UPDATE SKIP LOCKED, so replicas split the work), recounts only
-- those parents, and deletes the marks in the same transaction. A crash anywhere leaves the marks,
-- so the next run converges; the work is proportional to what changed, not to the table sizes.

CREATE TABLE counter_dirty_chats (
    chat_id     BIGINT UNSIGNED NOT NULL,
    dirty_since DATETIME(6)     NOT NULL,
    PRIMARY KEY (chat_id),
    KEY ix_counter_dirty_chats_since (dirty_since)
) ENGINE = InnoDB;

CREATE TABLE counter_dirty_applications (
    application_id BIGINT UNSIGNED NOT NULL,
    dirty_since    DATETIME(6)     NOT NULL,
    PRIMARY KEY (application_id),
    KEY ix_counter_dirty_applications_since (dirty_since)
) ENGINE = InnoDB;

-- Every existing parent starts dirty, so counts converge after upgrading to this version.
INSERT INTO counter_dirty_chats (chat_id, dirty_since) SELECT id, CURRENT_TIMESTAMP(6) FROM chats;
INSERT INTO counter_dirty_applications (application_id, dirty_since)
    SELECT id, CURRENT_TIMESTAMP(6) FROM applications;
