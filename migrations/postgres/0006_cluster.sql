-- Cluster mode (src/cluster/): membership rows say whether a node is a cluster node and which
-- incarnation of it this is; each of the 256 shards has a lease row. A lease is held by a node
-- incarnation while that node's heartbeat is fresh; its epoch rises on every change of owner,
-- and every write-behind commit checks the epoch its changes were made under (fencing).
ALTER TABLE nodes ADD COLUMN cluster boolean NOT NULL DEFAULT false;
ALTER TABLE nodes ADD COLUMN incarnation bigint NOT NULL DEFAULT 0;

CREATE TABLE shards (
    shard             integer PRIMARY KEY,
    owner             uuid,
    owner_incarnation bigint NOT NULL DEFAULT 0,
    epoch             bigint NOT NULL DEFAULT 0,
    changed_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO shards (shard) SELECT generate_series(0, 255);
