//! Shards, and which node nginx sends a shard's requests to.
//!
//! A chat's shard is the last byte of its id: the low bits of a UUIDv7's random part, so chats
//! spread evenly over the [`SHARDS`] shards, and a load balancer can read the shard from a URL
//! with a regular expression (the last two hex digits of the id). Arbor makes new chat ids in a
//! shard the creating node holds ([`new_chat_id`]): the new chat needs no forwarding.
//!
//! [`Ring`] is nginx's `hash $key consistent` (ngx_http_upstream_hash_module, ketama: 160
//! points per server at `crc32(HOST \0 PORT PREV_HASH)`, a key goes to the first point at or
//! after `crc32(key)`). With the shipped nginx configuration the key is the shard's two hex
//! digits, so each node knows which shards nginx sends it, and claims exactly those: in steady
//! state a request reaches its chat's owner first.

use arbor_actors::model::ChatId;
use uuid::Uuid;

/// Shards in a cluster: fixed, the values of a chat id's last byte.
pub const SHARDS: u16 = 256;

/// The shard of a chat: its id's last byte.
pub fn shard_of(chat: ChatId) -> u16 {
    u16::from(chat.as_uuid().as_bytes()[15])
}

/// The shard as the load balancer's key: two lower-case hex digits, the end of the chat id.
pub fn shard_key(shard: u16) -> String {
    format!("{:02x}", shard & 0xff)
}

/// A new chat id (UUIDv7: time-ordered like every other) in `shard`.
pub fn new_chat_id(shard: u16) -> ChatId {
    let mut bytes = *Uuid::now_v7().as_bytes();
    bytes[15] = (shard & 0xff) as u8;
    ChatId::from_uuid(Uuid::from_bytes(bytes))
}

/// nginx's consistent-hash ring over a set of servers, named as in its `server` lines.
pub struct Ring {
    /// (point, index into the servers), sorted by point, one entry per point.
    points: Vec<(u32, usize)>,
}

impl Ring {
    pub fn new(servers: &[&str]) -> Self {
        let mut points = Vec::with_capacity(servers.len() * 160);
        for (index, server) in servers.iter().enumerate() {
            let (host, port) = split_server(server);
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(b"\0");
            base.update(port.as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..160 {
                let mut point = base.clone();
                point.update(&prev.to_le_bytes());
                let hash = point.finalize();
                points.push((hash, index));
                prev = hash;
            }
        }
        // nginx sorts by point alone (qsort: equal points in no set order) and keeps the first
        // of equal points; a tie between servers is a 1 in 2^32 event per pair of points.
        points.sort_by_key(|&(hash, index)| (hash, index));
        points.dedup_by_key(|&mut (hash, _)| hash);
        Self { points }
    }

    /// The index of the server nginx sends `key` to, when every server is up.
    pub fn server_for(&self, key: &str) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let hash = crc32fast::hash(key.as_bytes());
        let at = self.points.partition_point(|&(point, _)| point < hash);
        Some(self.points[at % self.points.len()].1)
    }
}

/// nginx's split of a `server` name into host and port: the port is the digits after the last
/// `:`, if any; `unix:` paths have none.
fn split_server(server: &str) -> (&str, &str) {
    if server.len() >= 5 && server[..5].eq_ignore_ascii_case("unix:") {
        return (&server[5..], "");
    }
    match server.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, port),
        _ => (server, ""),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_created_in_a_shard_is_in_that_shard() {
        for shard in [0, 1, 0x7f, 0xff] {
            let id = new_chat_id(shard);
            assert_eq!(shard_of(id), shard);
            assert!(id.to_string().ends_with(&shard_key(shard)));
            assert_eq!(id.as_uuid().get_version_num(), 7);
        }
    }

    #[test]
    fn the_ring_splits_shards_among_servers_and_moves_few_when_one_joins() {
        let two = Ring::new(&["127.0.0.1:8081", "127.0.0.1:8082"]);
        let three = Ring::new(&["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]);
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for shard in 0..SHARDS {
            let key = shard_key(shard);
            let before = two.server_for(&key).unwrap();
            let after = three.server_for(&key).unwrap();
            counts[after] += 1;
            // Consistent hashing: a shard moves only to the new server.
            if before != after {
                assert_eq!(after, 2, "shard {key} moved between old servers");
                moved += 1;
            }
        }
        assert!(counts.iter().all(|&c| c > 40), "uneven split: {counts:?}");
        assert_eq!(moved, counts[2]);
    }

    #[test]
    fn server_names_split_as_nginx_splits_them() {
        assert_eq!(split_server("127.0.0.1:8081"), ("127.0.0.1", "8081"));
        assert_eq!(split_server("backend"), ("backend", ""));
        assert_eq!(split_server("unix:/tmp/a.sock"), ("/tmp/a.sock", ""));
        assert_eq!(split_server("[::1]:80"), ("[::1]", "80"));
    }
}
