//! Credentials changed under a running tree of real `canopy run` processes with the
//! `canopy certs` CLI: every certificate rotated while writes flow, a router revoked and
//! pushed through the root group, and a CA rollover with a node left behind on the old CA.

#[path = "../common/mod.rs"]
mod common;
mod lab;
mod workload;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lab::{links, nodes, peers, serial, Lab, ADMIN, CLIENTS, ROUTERS};
use serde_json::Value;
use workload::{Outcome, Workload};

/// Tree-level breaks: none may happen to a node whose credentials are only renewed.
const BREAKS: [&str; 3] = [
    "parent lost; rejoining",
    "child removed",
    "peer certificate no longer accepted",
];

fn assert_nothing_lost(outcome: &Outcome) {
    assert!(outcome.acknowledged > 20, "too few writes to show anything");
    assert!(
        outcome.failed.is_empty(),
        "writes failed: {:?}",
        outcome.failed
    );
    assert!(
        outcome.missing.is_empty(),
        "acknowledged writes never reached a watcher: {:?}",
        outcome.missing
    );
}

/// Every node of `ids` presents its current certificate on every live link, and every
/// peer presented the certificate it holds now.
fn every_link_renewed(statuses: &BTreeMap<u64, Value>) -> bool {
    statuses.values().all(|status| {
        links(status).iter().all(|link| {
            let peer = link["peer"].as_u64().unwrap_or_default();
            link["presented_current"] == true
                && statuses
                    .get(&peer)
                    .is_none_or(|p| link["peer_serial"] == serial(p).as_str())
        })
    })
}

#[test]
fn rotating_every_certificate_moves_every_link_without_a_break() {
    let mut lab = Lab::new(200);
    lab.start_all();
    let ids: Vec<u64> = nodes().collect();
    let before = lab.wait_statuses(&ids, "every node linked", |s| {
        s.values().all(|status| !links(status).is_empty())
    });
    let workload = Workload::start(&lab, CLIENTS[0], &CLIENTS[1..], "rotation");
    let started = Instant::now();
    // Routers and clients first, the root candidates (the leader among them) last.
    for id in ROUTERS.into_iter().chain(CLIENTS).chain(lab::CANDIDATES) {
        lab.certs(&["rotate", "--id", &id.to_string()]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let after = lab.wait_statuses(&ids, "every link on the new certificates", |s| {
        s.iter()
            .all(|(id, status)| serial(status) != serial(&before[id]))
            && every_link_renewed(s)
    });
    let outcome = workload.finish(Duration::from_secs(20));
    assert_nothing_lost(&outcome);
    let breaks: Vec<(u64, String)> = BREAKS
        .iter()
        .flat_map(|b| lab.all_lines(started, &[b]))
        .collect();
    assert!(breaks.is_empty(), "the tree broke: {breaks:#?}");
    let moved = lab.all_lines(started, &["peer moves its link to a renewed certificate"]);
    assert!(
        !moved.is_empty(),
        "no link was moved, so the test shows nothing"
    );

    // No link is left on an old certificate: revoking them all closes nothing.
    let revoked_at = Instant::now();
    for id in &ids {
        lab.certs(&["revoke", "--serial", &serial(&before[id])]);
    }
    lab.deploy_crl();
    lab.wait_statuses(&ids, "the revocations loaded everywhere", |s| {
        s.iter().all(|(id, status)| {
            status["tls"]["generation"].as_u64() > after[id]["tls"]["generation"].as_u64()
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let closed = lab.all_lines(revoked_at, &["no longer accepted"]);
    assert!(
        closed.is_empty(),
        "a link still used an old certificate: {closed:#?}"
    );
    lab.wait_tree("the tree whole after the revocations", |t| {
        t["clients"] == CLIENTS.len()
    });
    println!(
        "rotation: {} writes, 0 lost, {} link moves",
        outcome.acknowledged,
        moved.len()
    );
}

#[test]
fn a_revoked_router_is_cut_off_within_a_heartbeat_and_refused() {
    let mut lab = Lab::new(500);
    lab.start_all();
    // The router with children is the one worth revoking.
    let statuses = lab.wait_statuses(&ROUTERS, "a router with a child", |s| {
        s.values()
            .any(|status| status["children"].as_u64() > Some(0))
    });
    let (&router, router_status) = statuses
        .iter()
        .max_by_key(|(_, s)| s["children"].as_u64())
        .unwrap();
    let router_peers = peers(router_status);
    let clients = lab.wait_statuses(&CLIENTS, "every client attached", |s| {
        s.values().all(|status| status["parent"].is_u64())
    });
    let children: Vec<u64> = clients
        .iter()
        .filter(|(_, s)| s["parent"] == router)
        .map(|(id, _)| *id)
        .collect();
    assert!(!children.is_empty(), "router {router} has no client child");

    let others: Vec<u64> = nodes().filter(|&id| id != router).collect();
    let generations = lab.generations(&others);
    let revoking = Instant::now();
    let out = lab.revoke_and_push(router);
    let committed = Instant::now();
    assert!(out.contains("revocation committed"), "{out}");
    std::thread::sleep(Duration::from_millis(lab.heartbeat_ms * 2));
    // Every peer the router had closed its link, counted from the commit.
    let heartbeat = Duration::from_millis(lab.heartbeat_ms);
    let mut last_close = revoking;
    for peer in &router_peers {
        let peer_text = format!("peer={router}");
        let closes = lab.lines(*peer, revoking, &["no longer accepted", &peer_text]);
        let Some((at, _)) = closes.first() else {
            panic!("node {peer} kept its link with revoked router {router}");
        };
        last_close = last_close.max(*at);
    }
    let slowest = last_close.saturating_duration_since(committed);
    // The nodes' own revocation file is untouched: these closes are the push's doing.
    println!(
        "revocation: {} links of router {router} closed; the last {:?} after `revoke --push` \
         started (the command took {:?} in all; heartbeat {heartbeat:?})",
        router_peers.len(),
        last_close - revoking,
        committed - revoking,
    );
    assert!(
        slowest <= heartbeat,
        "links closed {slowest:?} after the commit"
    );

    // Its children attach elsewhere; it stays out, refused at every attempt.
    // From when every node holds the list on, the router may never link again.
    let settled = lab.wait_trust_changed(&generations, "the list in force everywhere");
    lab.wait_statuses(&children, "the router's children reattached", |s| {
        s.values()
            .all(|status| status["parent"].as_u64().is_some_and(|p| p != router))
    });
    std::thread::sleep(Duration::from_millis(lab.heartbeat_ms * 6));
    let router_now = lab.status(router).expect("the revoked router still runs");
    assert!(
        links(&router_now).is_empty(),
        "the revoked router has links: {router_now}"
    );
    let back = lab.all_lines(settled, &["link up", &format!("peer={router} ")]);
    assert!(back.is_empty(), "the revoked router came back: {back:#?}");
    // TLS 1.3: the dialler finishes its side first, then the acceptor's verdict arrives.
    let refused = lab.lines(router, committed, &["invalid peer certificate: Revoked"]);
    assert!(
        !refused.is_empty(),
        "the revoked router never tried to come back"
    );
    let tree = lab.tree();
    assert_eq!(tree["clients"], CLIENTS.len(), "{tree}");
}

#[test]
fn ca_rollover_keeps_the_tree_serving_and_refuses_a_node_left_on_the_old_ca() {
    let mut lab = Lab::new(200);
    let straggler = CLIENTS[2];
    lab.freeze_credentials(straggler);
    lab.start_all();
    let ids: Vec<u64> = nodes().collect();
    let before = lab.wait_statuses(&ids, "every node linked", |s| {
        s.values().all(|status| !links(status).is_empty())
    });
    let workload = Workload::start(&lab, CLIENTS[0], &CLIENTS[1..2], "rollover");
    let started = Instant::now();

    lab.certs(&["rotate-ca"]);
    // Every node trusts both CAs before any certificate from the new one is deployed.
    lab.wait_statuses(&ids, "the two-CA bundle loaded everywhere", |s| {
        s.iter().all(|(id, status)| {
            status["tls"]["generation"].as_u64() > before[id]["tls"]["generation"].as_u64()
        })
    });
    for id in ids.iter().copied().chain([ADMIN]) {
        lab.certs(&["rotate", "--id", &id.to_string()]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != straggler).collect();
    lab.wait_statuses(
        &others,
        "every deployed node on a new-CA certificate",
        |s| {
            s.iter()
                .all(|(id, status)| serial(status) != serial(&before[id]))
                && every_link_renewed(s)
        },
    );
    // Up to here nothing may have broken anywhere; afterwards the straggler's links go, by
    // design.
    let breaks: Vec<(u64, String)> = BREAKS
        .iter()
        .flat_map(|b| lab.all_lines(started, &[b]))
        .collect();
    assert!(breaks.is_empty(), "the tree broke: {breaks:#?}");
    // The registry believes every node rotated; the straggler never loaded its new files.
    let generations = lab.generations(&others);
    let finishing = Instant::now();
    lab.certs(&["finish-ca-rotation"]);
    lab.deploy_crl();
    let outcome = workload.finish(Duration::from_secs(20));
    assert_nothing_lost(&outcome);

    // The straggler is cut off and cannot come back; nobody else noticed a thing.
    lab.wait_statuses(&[straggler], "the straggler cut off", |s| {
        links(&s[&straggler]).is_empty()
    });
    let cut = lab.all_lines(
        finishing,
        &["no longer accepted", &format!("peer={straggler}")],
    );
    assert!(!cut.is_empty(), "nobody closed the straggler's link");
    // From when every other node has loaded the one-CA bundle on, it may never link again.
    let settled = lab.wait_trust_changed(&generations, "the one-CA bundle everywhere");
    std::thread::sleep(Duration::from_millis(lab.heartbeat_ms * 10));
    assert!(links(&lab.status(straggler).unwrap()).is_empty());
    let back = lab.all_lines(settled, &["link up", &format!("peer={straggler} ")]);
    assert!(back.is_empty(), "the straggler came back: {back:#?}");
    let untrusted: Vec<(u64, String)> = lab
        .all_lines(finishing, &["no longer accepted"])
        .into_iter()
        .filter(|(id, line)| *id != straggler && !line.contains(&format!("peer={straggler}")))
        .collect();
    assert!(
        untrusted.is_empty(),
        "links other than the straggler's closed: {untrusted:#?}"
    );
    let tree = lab.wait_tree("the tree without the straggler", |t| {
        t["clients"] == CLIENTS.len() - 1
    });
    println!(
        "CA rollover: {} writes, 0 lost; straggler {straggler} refused; view {tree}",
        outcome.acknowledged
    );
}
