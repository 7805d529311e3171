-- The membership table (src/membership.rs): one row per running server. Heartbeats are stamped
-- and aged by the database's clock, so the servers' clocks never have to agree.
CREATE TABLE nodes (
    id           uuid PRIMARY KEY,
    address      text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
