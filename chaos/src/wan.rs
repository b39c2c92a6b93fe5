//! The emulated WAN between regions: for every node and every other region, a userspace
//! relay (`canopy_node::local::UdpRelay`) that nodes of that region dial instead of the
//! node (`[[dial_via]]` in their configs). Each direction of a region pair has one
//! `LinkShape` (delay, jitter, loss, bandwidth cap) shared by all its relays, so a partition
//! cuts the pair at once. Nodes of one region reach each other directly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canopy_node::local::{LinkShape, UdpRelay};

use crate::cluster::Cluster;
use crate::scenario::WanLink;

pub struct Wan {
    _relays: Vec<UdpRelay>,
    /// (from region, to region) to the shape of that direction.
    shapes: HashMap<(String, String), Arc<LinkShape>>,
}

/// Per node: the peers' addresses it dials through a relay.
pub type DialVia = HashMap<u64, Vec<(SocketAddr, SocketAddr)>>;

impl Wan {
    pub async fn start(links: &[WanLink], cluster: &Cluster) -> anyhow::Result<(Wan, DialVia)> {
        let mut regions: Vec<String> = cluster.nodes.iter().map(|n| n.region.clone()).collect();
        regions.sort();
        regions.dedup();
        let mut shapes = HashMap::new();
        for from in &regions {
            for to in regions.iter().filter(|r| *r != from) {
                let link = links.iter().find(|l| {
                    (l.between[0] == *from && l.between[1] == *to)
                        || (l.between[0] == *to && l.between[1] == *from)
                });
                let shape = match link {
                    Some(l) => LinkShape::new(
                        Duration::from_micros(l.rtt_ms * 500),
                        Duration::from_millis(l.jitter_ms),
                        l.loss,
                        (l.bandwidth_mbps * 125_000.0) as u64,
                    ),
                    None => LinkShape::new(Duration::ZERO, Duration::ZERO, 0.0, 0),
                };
                shapes.insert((from.clone(), to.clone()), shape);
            }
        }
        let mut relays = Vec::new();
        let mut dial_via = DialVia::new();
        if links.is_empty() {
            return Ok((
                Wan {
                    _relays: relays,
                    shapes,
                },
                dial_via,
            ));
        }
        for target in &cluster.nodes {
            for from in regions.iter().filter(|r| **r != target.region) {
                let there = shapes[&(from.clone(), target.region.clone())].clone();
                let back = shapes[&(target.region.clone(), from.clone())].clone();
                let relay = UdpRelay::shaped(target.tree_address(), there, back).await?;
                for dialler in cluster.nodes.iter().filter(|n| n.region == *from) {
                    dial_via
                        .entry(dialler.id)
                        .or_default()
                        .push((target.tree_address(), relay.address()));
                }
                relays.push(relay);
            }
        }
        Ok((
            Wan {
                _relays: relays,
                shapes,
            },
            dial_via,
        ))
    }

    /// Cuts (or heals) every link between `region` and the others, both ways.
    pub fn partition(&self, region: &str, cut: bool) -> anyhow::Result<()> {
        let mut found = false;
        for ((from, to), shape) in &self.shapes {
            if from == region || to == region {
                shape.cut(cut);
                found = true;
            }
        }
        anyhow::ensure!(found, "partition: no WAN link touches region {region:?}");
        Ok(())
    }
}
