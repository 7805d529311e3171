-- Cluster mode needs PostgreSQL (src/cluster/); SQLite's membership rows carry the same
-- columns so both stores read one row shape.
ALTER TABLE nodes ADD COLUMN cluster INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
