-- The admin API and quotas.
--
-- `external_key` (case-insensitive) names an application for the admin API (the operator uses its custom resource's
-- UID), so creates are idempotent. Quota columns hold what was *asked for*; NULL means "the api's
-- default", so changing a default reaches every application that did not set its own.
-- A rotation moves the old token to `previous_token`, valid until `previous_token_expires_at`;
-- `rotation_id` makes a repeated rotation request a no-op. A deleted application keeps its row as
-- a tombstone (`deleted_at`, no tokens, no key): events still in flight for it find their parent
-- and are dropped instead of failing forever, and the counter reconciler purges its chats and
-- messages (found through `ix_applications_deleted_at`).

ALTER TABLE applications
    ADD COLUMN external_key              VARCHAR(128) CHARACTER SET ascii COLLATE ascii_general_ci NULL,
    ADD COLUMN max_chats                 BIGINT UNSIGNED NULL,
    ADD COLUMN messages_per_second       INT UNSIGNED    NULL,
    ADD COLUMN message_burst             INT UNSIGNED    NULL,
    ADD COLUMN max_body_bytes            INT UNSIGNED    NULL,
    ADD COLUMN previous_token            CHAR(48) CHARACTER SET ascii COLLATE ascii_general_ci NULL,
    ADD COLUMN previous_token_expires_at DATETIME(6)     NULL,
    ADD COLUMN rotation_id               VARCHAR(128)    NULL,
    ADD COLUMN deleted_at                DATETIME(6)     NULL,
    ADD UNIQUE KEY uq_applications_external_key (external_key),
    ADD UNIQUE KEY uq_applications_previous_token (previous_token),
    ADD KEY ix_applications_deleted_at (deleted_at);
