//! What the nodes say about themselves: their `/metrics`, scraped over HTTP and parsed as
//! Prometheus text. The harness judges roots and attachment from these, not from its own
//! belief.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape: each metric's value (labelled series summed).
#[derive(Debug, Clone, Default)]
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == 1.0
    }
}

/// Scrapes `address`; `None` if the node does not answer within a second.
pub async fn scrape(address: SocketAddr) -> Option<Metrics> {
    let body = tokio::time::timeout(Duration::from_secs(1), get(address))
        .await
        .ok()??;
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
    let mut values = HashMap::new();
    for sample in scrape.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        *values.entry(sample.metric).or_insert(0.0) += value;
    }
    Some(Metrics(values))
}

async fn get(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
