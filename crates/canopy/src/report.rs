//! Printing a cluster: the tree's shape and a per-node message table.

use std::collections::HashMap;
use std::fmt::Write as _;

use canopy_node::{NodeCounters, NodeStatus};
use canopy_tree::{NodeId, Role};

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Root => "root",
        Role::Router => "router",
        Role::Client => "client",
    }
}

/// The tree drawn with box characters; a router's clients are listed on one line.
pub fn tree_shape(statuses: &[NodeStatus], root: NodeId) -> String {
    let by_id: HashMap<NodeId, &NodeStatus> = statuses.iter().map(|s| (s.id, s)).collect();
    let mut out = String::new();
    fn draw(
        out: &mut String,
        by_id: &HashMap<NodeId, &NodeStatus>,
        id: NodeId,
        prefix: &str,
        depth: usize,
    ) {
        let Some(status) = by_id.get(&id) else {
            return;
        };
        let mut routers: Vec<NodeId> = Vec::new();
        let mut clients: Vec<NodeId> = Vec::new();
        for child in status.children.iter().filter(|c| c.attached) {
            match child.role {
                Role::Client => clients.push(child.id),
                _ => routers.push(child.id),
            }
        }
        let _ = writeln!(
            out,
            "{} {id} ({} clients, {} routers below)",
            role_name(status.role),
            clients.len(),
            routers.len()
        );
        let total = routers.len() + usize::from(!clients.is_empty());
        for (i, router) in routers.iter().enumerate() {
            let last = i + 1 == total;
            out.push_str(prefix);
            out.push_str(if last { "└── " } else { "├── " });
            let next = format!("{prefix}{}", if last { "    " } else { "│   " });
            if depth < 64 {
                draw(out, by_id, *router, &next, depth + 1);
            }
        }
        if !clients.is_empty() {
            let list: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(out, "{prefix}└── clients: {}", list.join(" "));
        }
    }
    draw(&mut out, &by_id, root, "", 0);
    out
}

/// One row per node: where it sits and what it sent and received since `before`.
pub fn message_table(
    statuses: &[NodeStatus],
    before: &HashMap<NodeId, NodeCounters>,
    multicasts: u64,
) -> String {
    let mut out = String::from(
        "node    role    parent  children  ctl-sent  ctl-recv  mc-sent  mc-recv  delivered  mc-msgs/multicast\n",
    );
    let mut rows: Vec<&NodeStatus> = statuses.iter().collect();
    rows.sort_by_key(|s| (s.role, s.id));
    for s in rows {
        let c = diff(&s.counters, before.get(&s.id));
        let per = (c.multicast_sent + c.multicast_received) as f64 / multicasts.max(1) as f64;
        let _ = writeln!(
            out,
            "{:<7} {:<7} {:<7} {:>8}  {:>8}  {:>8}  {:>7}  {:>7}  {:>9}  {:>17.2}",
            s.id,
            role_name(s.role),
            s.parent.map_or("-".to_string(), |p| p.to_string()),
            s.children.len(),
            c.control_sent,
            c.control_received,
            c.multicast_sent,
            c.multicast_received,
            c.delivered,
            per
        );
    }
    out
}

/// Counters gained since `before`.
pub fn diff(now: &NodeCounters, before: Option<&NodeCounters>) -> NodeCounters {
    let b = before.copied().unwrap_or_default();
    let d = |now: u64, before: u64| now.saturating_sub(before);
    NodeCounters {
        control_sent: d(now.control_sent, b.control_sent),
        control_received: d(now.control_received, b.control_received),
        multicast_sent: d(now.multicast_sent, b.multicast_sent),
        multicast_received: d(now.multicast_received, b.multicast_received),
        delivered: d(now.delivered, b.delivered),
        refused: d(now.refused, b.refused),
        rate_limited: d(now.rate_limited, b.rate_limited),
        grants_refused: d(now.grants_refused, b.grants_refused),
        over_limit: d(now.over_limit, b.over_limit),
        dropped: d(now.dropped, b.dropped),
        heartbeat_timeouts: d(now.heartbeat_timeouts, b.heartbeat_timeouts),
        deliveries_dropped: d(now.deliveries_dropped, b.deliveries_dropped),
        send_failures: d(now.send_failures, b.send_failures),
        proposals: d(now.proposals, b.proposals),
        root_actions_released: d(now.root_actions_released, b.root_actions_released),
        elections_asked: d(now.elections_asked, b.elections_asked),
        became_root: d(now.became_root, b.became_root),
        stepped_down: d(now.stepped_down, b.stepped_down),
        join_requests: d(now.join_requests, b.join_requests),
    }
}
