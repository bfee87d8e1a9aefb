-- One row the persister rewrites every 250 ms with the primary's clock. Read on a replica, its
-- age is the replica's lag; the api reads from a replica (`DATABASE_READ_URL`) only while that
-- age is below `CONFAB_READ_REPLICA_MAX_LAG_MS`.

CREATE TABLE replication_heartbeat (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    at DATETIME(6) NOT NULL
) ENGINE=InnoDB;
