//! `[metrics] listen`: a running node's `/metrics`, scraped over HTTP and read back with a
//! Prometheus text parser; and SIGTERM, which service managers send, leaves the tree.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;

use common::{canopy, free_port, issue, node_config, ok, root_and_client, Running};

/// `GET path` on `port`: the status code and the body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// Every sample of a scrape, by metric name and then by its labels.
type Samples = HashMap<String, Vec<(HashMap<String, String>, f64)>>;

fn scrape(port: u16) -> Option<Samples> {
    let (code, body) = get(port, "/metrics").ok()?;
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text exposition");
    let mut samples = Samples::new();
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("{}: unexpected {other:?}", s.metric),
        };
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        samples.entry(s.metric).or_default().push((labels, value));
    }
    Some(samples)
}

fn value(samples: &Samples, name: &str) -> f64 {
    match samples.get(name).map(Vec::as_slice) {
        Some([(_, v)]) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

/// Scrapes `port` until `done` holds (30 s at most).
fn scrape_until(port: u16, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(samples) = scrape(port).filter(|s| done(s)) {
            return samples;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_running_node_serves_metrics_and_sigterm_leaves_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    ok(canopy().args(["certs", "init", "--dir", certs_arg, "--cluster", "lab"]));
    issue(certs_arg, 1, "root-candidate");
    issue(certs_arg, 10_000, "client");
    let root_port = free_port();
    let (root_metrics, client_metrics) = (free_port(), free_port());
    let metrics = |port: u16| format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let root_config = node_config(dir.path(), 1, root_port, root_port, &metrics(root_metrics));
    let client_config = node_config(
        dir.path(),
        10_000,
        free_port(),
        root_port,
        &metrics(client_metrics),
    );
    let (_root, client, lines) = root_and_client(&root_config, &client_config);
    // Killed if the test fails before it exits.
    let mut client = Running(client);

    let client_view = scrape_until(client_metrics, "the client attached", |s| {
        s.get("canopy_attached").is_some_and(|v| v[0].1 == 1.0)
    });
    let root_view = scrape_until(root_metrics, "the root sees its child", |s| {
        s.get("canopy_children").is_some_and(|v| v[0].1 >= 1.0)
    });
    // The root candidate leads its one-member group and serves as root.
    assert_eq!(value(&root_view, "canopy_raft_is_leader"), 1.0);
    assert_eq!(value(&root_view, "canopy_raft_leader"), 1.0);
    assert!(value(&root_view, "canopy_raft_term") >= 1.0);
    assert!(value(&root_view, "canopy_raft_commit_index") >= 1.0);
    assert_eq!(value(&root_view, "canopy_serving_root"), 1.0);
    assert!(value(&root_view, "canopy_became_root_total") >= 1.0);
    assert!(value(&root_view, "canopy_links") >= 1.0);
    assert!(root_view.contains_key("canopy_send_queue_bytes"));
    // The root, the client below it.
    assert_eq!(value(&root_view, "canopy_tree_depth"), 1.0);
    assert!(root_view.contains_key("canopy_handshake_queue_depth"));
    let identity = &root_view["canopy_node"][0].0;
    assert_eq!(identity["id"], "1");
    assert_eq!(identity["region"], "lab");
    // A client has no Raft group, asked to join at least once, and counts its heartbeats.
    assert!(!client_view.contains_key("canopy_raft_term"));
    assert!(value(&client_view, "canopy_join_requests_total") >= 1.0);
    assert_eq!(value(&client_view, "canopy_parent"), 1.0);
    assert!(value(&client_view, "canopy_control_sent_total") >= 1.0);
    let reasons: Vec<&str> = client_view["canopy_rejections_total"]
        .iter()
        .map(|(labels, _)| labels["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"unauthorized") && reasons.contains(&"busy"),
        "{reasons:?}"
    );
    assert_eq!(get(client_metrics, "/").unwrap().0, 404);

    // SIGTERM: the client says goodbye, exits cleanly, and its parent drops it at once.
    let pid = client.0.id().to_string();
    ok(std::process::Command::new("kill").args(["-TERM", &pid]));
    let exited = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        client.0.try_wait().unwrap()
    });
    let status = exited.expect("the client did not exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let log: Vec<String> = lines.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("leaving the tree")),
        "{log:#?}"
    );
    let root_after = scrape_until(root_metrics, "the root dropped its child", |s| {
        s.get("canopy_children").is_some_and(|v| v[0].1 == 0.0)
    });
    // Dropped for its goodbye, not for falling silent.
    assert_eq!(value(&root_after, "canopy_heartbeat_timeouts_total"), 0.0);
}
