-- The membership table (src/membership.rs): one row per running server, its heartbeat in unix
-- milliseconds (the servers sharing a SQLite file share a machine and its clock).
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY NOT NULL,
    address      TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
