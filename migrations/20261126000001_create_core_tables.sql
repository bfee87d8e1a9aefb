-- The seed's three tables. Works on MariaDB 10.11 and MySQL 8.
--
-- Numbers are per parent and come from Redis; the unique keys are what make the persister's
-- upserts idempotent under redelivery. `messages.version` is the JetStream stream sequence of the
-- last event applied to the row: creates and updates are one last-writer-wins upsert ordered by it.

CREATE TABLE applications (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    name        VARCHAR(255)    NOT NULL,
    token       CHAR(48) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    chats_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at  DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at  DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_applications_token (token)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE chats (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    application_id BIGINT UNSIGNED NOT NULL,
    number         BIGINT UNSIGNED NOT NULL,
    messages_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at     DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at     DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    -- Lookups by (application, number), MAX(number) per application, and lists ordered by number.
    UNIQUE KEY uq_chats_application_number (application_id, number),
    CONSTRAINT fk_chats_application FOREIGN KEY (application_id)
        REFERENCES applications (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE messages (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    chat_id    BIGINT UNSIGNED NOT NULL,
    number     BIGINT UNSIGNED NOT NULL,
    body       MEDIUMTEXT      NOT NULL,
    version    BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    -- Lookups by (chat, number), MAX(number) per chat, and lists ordered by number.
    UNIQUE KEY uq_messages_chat_number (chat_id, number),
    CONSTRAINT fk_messages_chat FOREIGN KEY (chat_id)
        REFERENCES chats (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
