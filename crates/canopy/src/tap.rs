//! The demo's look at one record from both sides: what the routers that forwarded it saw
//! (a tag, clear sequence numbers and ciphertext) and what a subscriber applied.

use std::sync::{Arc, Mutex};

use canopy_kv::Change;
use canopy_node::local::LocalCluster;
use canopy_proto::prost::Message;
use canopy_proto::v1::{kv_envelope, KvEnvelope, Multicast, RecordHeader};
use canopy_tree::{NodeId, Role};

/// Multicasts a tap keeps; the demo needs only the first few.
const TAP_LIMIT: usize = 10_000;

/// Copies of the multicasts every router forwarded while installed.
#[derive(Clone, Default)]
pub struct RouterTap {
    seen: Arc<Mutex<Vec<(NodeId, Multicast)>>>,
}

impl RouterTap {
    /// Taps every router of `cluster` (the multicasts go on unchanged).
    pub fn install(cluster: &LocalCluster) -> RouterTap {
        let tap = RouterTap::default();
        for node in routers(cluster) {
            let (seen, router) = (tap.seen.clone(), node.identity.node_id);
            node.handle
                .set_multicast_tamper(Some(Box::new(move |_to, multicast: Multicast| {
                    if let Ok(mut seen) = seen.lock() {
                        if seen.len() < TAP_LIMIT {
                            seen.push((router, multicast.clone()));
                        }
                    }
                    vec![multicast]
                })));
        }
        tap
    }

    pub fn remove(&self, cluster: &LocalCluster) {
        for node in routers(cluster) {
            node.handle.set_multicast_tamper(None);
        }
    }

    /// The first copy a router forwarded of `origin`'s record number `origin_seq`, with its
    /// clear header (all a router can decode).
    fn find(&self, origin: NodeId, origin_seq: u64) -> Option<(NodeId, Multicast, RecordHeader)> {
        let seen = self.seen.lock().ok()?;
        seen.iter().find_map(|(router, multicast)| {
            let header = record_header(&multicast.payload)?;
            (header.origin == origin && header.origin_seq == origin_seq)
                .then(|| (*router, multicast.clone(), header))
        })
    }
}

fn routers(cluster: &LocalCluster) -> impl Iterator<Item = &canopy_node::local::LocalNode> {
    cluster
        .nodes()
        .iter()
        .filter(|n| canopy_node::tree_role(n.identity.role) == Some(Role::Router))
}

fn record_header(payload: &[u8]) -> Option<RecordHeader> {
    let envelope = KvEnvelope::decode(payload).ok()?;
    let Some(kv_envelope::Body::Record(record)) = envelope.body else {
        return None;
    };
    RecordHeader::decode(record.header.as_ref()).ok()
}

fn hex_prefix(bytes: &[u8], len: usize) -> String {
    let shown: String = bytes.iter().take(len).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > len {
        format!("{shown}…")
    } else {
        shown
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Prints the record `(origin, origin_seq)` as a router forwarded it and as `arrival` (a
/// subscriber other than the writer) applied it.
pub fn print_record_views(
    cluster: &LocalCluster,
    tap: &RouterTap,
    (origin, origin_seq, key, value): (NodeId, u64, &str, &str),
    arrival: Option<&(NodeId, Change)>,
) {
    println!("one write, seen from both sides:");
    println!("  client {origin} put {key:?} = {value:?} (record {origin_seq})");
    match tap.find(origin, origin_seq) {
        Some((router, multicast, header)) => {
            let leaks = contains(&multicast.payload, key.as_bytes())
                || contains(&multicast.payload, value.as_bytes());
            println!(
                "  router {router} forwarded: tag {:016x} (cluster key tag {:016x}), origin {}, \
                 tag seq {}, data key {}, {} sealed bytes {}; key or value in the clear: {}",
                multicast.key_tag,
                cluster.tag_of(key),
                header.origin,
                header.tag_seq,
                header.key_id,
                header.sealed_body.len(),
                hex_prefix(&header.sealed_body, 16),
                if leaks { "YES (a leak)" } else { "no" }
            );
        }
        None => println!("  (no router forwarded it: writer and subscribers share a parent)"),
    }
    match arrival {
        Some((receiver, change)) => println!(
            "  client {receiver} applied it, signature and hash chain checked, opened: {:?} = {:?}",
            change.key,
            change
                .value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
        ),
        None => println!("  no other subscriber applied it"),
    }
    println!();
}
