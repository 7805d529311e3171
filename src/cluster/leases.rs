//! The shard lease table, as the cluster sees it (PostgreSQL implements it: `storage::postgres`).
//!
//! A lease row names its owner (a node and the incarnation of it) and an epoch. The owner holds
//! the lease while its heartbeat in the membership table is younger than the TTL; once it is
//! older the node is dead for good (its heartbeat is refused from then on, and it must enter
//! the table again as its next incarnation). Taking a lease over, or handing it over, raises
//! its epoch, and every write-behind commit checks the epoch it was made under
//! (`MetadataStore::apply`), so a node that lost a lease can no longer change its chats.

use std::time::Duration;

use arbor_actors::ports::StoreError;
use async_trait::async_trait;
use uuid::Uuid;

use crate::membership::{NodeRecord, NodeSeen};

/// One shard's lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub shard: u16,
    /// The node holding it, and which incarnation of that node; `None`: nobody.
    pub owner: Option<(Uuid, i64)>,
    pub epoch: i64,
}

/// What a node learns each time it renews: the membership table and every lease.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub nodes: Vec<NodeSeen>,
    pub leases: Vec<Lease>,
}

#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Refreshes `me`'s heartbeat, which renews every lease it holds, and reads the table and
    /// the leases. `None`: the heartbeat was refused (`me` was declared dead).
    async fn renew(&self, me: &NodeRecord, ttl: Duration) -> Result<Option<Snapshot>, StoreError>;
    /// Takes the leases of `shards` that no live node incarnation holds, raising their epochs.
    /// Answers the leases taken, with their new epochs.
    async fn claim(
        &self,
        me: &NodeRecord,
        shards: &[u16],
        ttl: Duration,
    ) -> Result<Vec<(u16, i64)>, StoreError>;
    /// Moves the leases of `shards` that `me` still holds to `to` (or to nobody), raising
    /// their epochs. Answers the leases moved, with their new epochs.
    async fn hand_over(
        &self,
        me: &NodeRecord,
        shards: &[u16],
        to: Option<&NodeRecord>,
    ) -> Result<Vec<(u16, i64)>, StoreError>;
}
