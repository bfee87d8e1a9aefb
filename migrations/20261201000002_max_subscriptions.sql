-- The `max_subscriptions` quota: concurrent live subscriptions (SSE/WebSocket) of an application
-- across every api replica. Like the other quota columns it holds what was *asked for*; NULL
-- means "the api's default" (`CONFAB_DEFAULT_MAX_SUBSCRIPTIONS`), 0 means no limit.

ALTER TABLE applications
    ADD COLUMN max_subscriptions INT UNSIGNED NULL;
