//! Prometheus metrics of a running node, served over HTTP at `[metrics] listen` (`GET
//! /metrics`, OpenMetrics text from `prometheus-client`). Every scrape reads the node's status,
//! its endpoint's counters and, on a root candidate, its Raft group's status, so the figures
//! are the ones the node itself keeps; nothing is counted twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_net::{NetEndpoint, NetStats};
use canopy_raft::{GroupStatus, RootGroup};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::runtime::{NodeHandle, NodeStatus};

/// Scrapes served at once; more wait for a turn.
const CONCURRENT_SCRAPES: usize = 4;
/// How long one connection may take, request and response.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads.
#[derive(Clone)]
pub struct MetricsSources {
    pub node: NodeHandle,
    pub net: NetEndpoint,
    /// A root candidate's Raft group.
    pub group: Option<RootGroup>,
}

/// Binds `listen` and serves `/metrics` until the returned task is aborted; returns the bound
/// address (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    sources: MetricsSources,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let turns = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(turn) = turns.clone().acquire_owned().await else {
                return;
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let sources = sources.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(request, &sources).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %e, "metrics: connection failed"),
                    Err(_) => debug!(%peer, "metrics: connection took too long"),
                }
                drop(turn);
            });
        }
    });
    Ok((address, task))
}

async fn respond<B>(request: Request<B>, sources: &MetricsSources) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "only GET /metrics is served\n");
    }
    let Some(status) = sources.node.status().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "the node has stopped\n");
    };
    let group = match &sources.group {
        Some(group) => Some(group.status().await),
        None => None,
    };
    let queues = sources.net.send_queue_bytes();
    match render(&status, &sources.net.stats(), queues, group.as_ref()) {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            if let Ok(value) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            response
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}

/// The exposition of one scrape.
pub fn render(
    status: &NodeStatus,
    net: &NetStats,
    (queued_bytes, fullest_link_bytes): (u64, u64),
    group: Option<&GroupStatus>,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("canopy");
    let info: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    info.get_or_create(&vec![
        ("id", status.id.to_string()),
        ("role", format!("{:?}", status.role).to_lowercase()),
        ("region", status.region.clone()),
    ])
    .set(1);
    registry.register("node", "The node's identity (always 1)", info);
    let attached = status.parent.is_some() || status.serving_root;
    gauge(
        &mut registry,
        "attached",
        "1 while the node has a parent or serves as root",
        attached.into(),
    );
    gauge(
        &mut registry,
        "links",
        "Established connections",
        net.connections,
    );
    gauge(
        &mut registry,
        "children",
        "Child links",
        status.children.len() as u64,
    );
    gauge(
        &mut registry,
        "parent",
        "The node's parent (0: none)",
        status.parent.unwrap_or(0),
    );
    gauge(
        &mut registry,
        "serving_root",
        "1 while the node serves as root",
        status.serving_root.into(),
    );
    gauge(
        &mut registry,
        "topology_epoch",
        "The topology epoch the node knows",
        status.epoch,
    );
    if let Some(nodes) = status.view_size {
        gauge(
            &mut registry,
            "view_nodes",
            "Nodes in the root's view (root only)",
            nodes as u64,
        );
    }
    if let Some(depth) = status.view_depth {
        gauge(
            &mut registry,
            "tree_depth",
            "The deepest node's distance from the root, in the root's view (root only)",
            u64::from(depth),
        );
    }
    gauge(
        &mut registry,
        "handshakes_in_progress",
        "Inbound handshakes under way",
        net.handshakes,
    );
    gauge(
        &mut registry,
        "handshake_queue_depth",
        "Inbound connections waiting for a handshake turn",
        net.handshakes_waiting,
    );
    gauge(
        &mut registry,
        "held_root_actions",
        "Root actions waiting for their decision to commit",
        status.held_actions as u64,
    );

    gauge(
        &mut registry,
        "send_queue_bytes",
        "Bytes waiting in every link's send queues",
        queued_bytes,
    );
    gauge(
        &mut registry,
        "send_queue_fullest_link_bytes",
        "Bytes waiting in the fullest link's send queues",
        fullest_link_bytes,
    );
    let c = &status.counters;
    counter(
        &mut registry,
        "multicasts_received",
        "Multicasts received",
        c.multicast_received,
    );
    counter(
        &mut registry,
        "multicasts_sent",
        "Multicast copies sent",
        c.multicast_sent,
    );
    counter(
        &mut registry,
        "control_received",
        "Control messages received",
        c.control_received,
    );
    counter(
        &mut registry,
        "control_sent",
        "Control messages sent",
        c.control_sent,
    );
    counter(
        &mut registry,
        "deliveries",
        "Multicasts delivered to this node's application",
        c.delivered,
    );
    counter(
        &mut registry,
        "deliveries_dropped",
        "Deliveries dropped because the application did not keep up",
        c.deliveries_dropped,
    );
    counter(
        &mut registry,
        "send_failures",
        "Sends that failed (slow peer, no address)",
        c.send_failures,
    );
    counter(
        &mut registry,
        "heartbeat_timeouts",
        "Links given up for silence",
        c.heartbeat_timeouts,
    );
    counter(
        &mut registry,
        "join_requests",
        "Join requests sent",
        c.join_requests,
    );
    counter(
        &mut registry,
        "became_root",
        "Times this candidate began serving as root (failovers it took)",
        c.became_root,
    );
    counter(
        &mut registry,
        "stepped_down",
        "Times it stopped serving as root",
        c.stepped_down,
    );
    counter(
        &mut registry,
        "elections_asked",
        "Elections asked because the leader was silent",
        c.elections_asked,
    );
    counter(
        &mut registry,
        "proposals",
        "Structural decisions proposed for commit",
        c.proposals,
    );

    let rejections: Family<Vec<(&'static str, &'static str)>, Counter> = Family::default();
    for (reason, count) in [
        ("unauthorized", c.refused),
        ("rate_limited", c.rate_limited),
        ("grant_refused", c.grants_refused),
        ("over_limit", c.over_limit),
        ("ignored", c.dropped),
        ("over_connection_limit", net.refused_over_limit),
        ("identity", net.refused_identity),
        ("handshake_failed", net.handshakes_failed),
        ("banned", net.refused_banned),
        ("busy", net.refused_busy),
        ("protocol", net.closed_protocol),
        ("control_rate", net.closed_control_rate),
        ("certificate_expired", net.closed_expired),
        ("certificate_untrusted", net.closed_untrusted),
        ("send_queue_full", net.closed_queue_full),
    ] {
        rejections
            .get_or_create(&vec![("reason", reason)])
            .inc_by(count);
    }
    registry.register(
        "rejections",
        "Messages, links and connections refused or closed, by reason",
        rejections,
    );

    if let Some(g) = group {
        gauge(
            &mut registry,
            "raft_term",
            "The Raft term this candidate is in",
            g.term,
        );
        gauge(
            &mut registry,
            "raft_leader",
            "The leader this candidate knows (0: none)",
            g.leader.unwrap_or(0),
        );
        let leading = g.leader == Some(g.id);
        gauge(
            &mut registry,
            "raft_is_leader",
            "1 while this candidate leads",
            leading.into(),
        );
        let commit = g.commit_index.unwrap_or(0);
        gauge(
            &mut registry,
            "raft_commit_index",
            "The last committed log index",
            commit,
        );
        gauge(
            &mut registry,
            "raft_applied_index",
            "The last applied log index",
            g.applied_index.unwrap_or(0),
        );
        let lag = g.last_log_index.unwrap_or(0).saturating_sub(commit);
        gauge(
            &mut registry,
            "raft_commit_lag",
            "Log entries written here and not yet committed",
            lag,
        );
    }
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge: Gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, gauge);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter: Counter = Counter::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}
