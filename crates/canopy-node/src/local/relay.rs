//! A userspace UDP relay that adds one-way delay, for emulating a WAN between nodes on
//! loopback (QUIC is UDP, so a relay per link direction suffices; these machines have no
//! kernel traffic shaping).
//!
//! A node dials the relay's address instead of the peer's. For each sender the relay opens
//! its own upstream socket to the target, so the target's answers come back through it to
//! the right sender. Every datagram, either way, is held for the one-way delay and passed
//! on in order.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest datagram relayed (QUIC's are at most 65,527 bytes).
const MAX_DATAGRAM: usize = 65_535;

/// A running relay; stops when dropped.
pub struct UdpRelay {
    address: SocketAddr,
    target: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    upstreams: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl UdpRelay {
    /// Listens on an ephemeral loopback port and relays to `target`, delaying each datagram
    /// by `one_way` in each direction.
    pub async fn start(target: SocketAddr, one_way: Duration) -> std::io::Result<UdpRelay> {
        let listen = Arc::new(UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?);
        let address = listen.local_addr()?;
        // Answers from the target, delayed, back to their sender through the listening socket.
        let (back_tx, back_rx) = mpsc::unbounded_channel::<(Instant, SocketAddr, Vec<u8>)>();
        let backward = tokio::spawn(deliver_back(listen.clone(), back_rx));
        let upstreams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let forward = tokio::spawn(forward(listen, target, one_way, back_tx, upstreams.clone()));
        Ok(UdpRelay {
            address,
            target,
            tasks: vec![forward, backward],
            upstreams,
        })
    }

    /// Where nodes send to reach the target through the relay.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where the relay delivers.
    pub fn target(&self) -> SocketAddr {
        self.target
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // The lock is only ever held to push a handle, never across an await.
        if let Ok(upstreams) = self.upstreams.lock() {
            for task in upstreams.iter() {
                task.abort();
            }
        }
    }
}

/// Reads from senders and passes each datagram, delayed, to the target through that
/// sender's own upstream socket.
async fn forward(
    listen: Arc<UdpSocket>,
    target: SocketAddr,
    one_way: Duration,
    back: mpsc::UnboundedSender<(Instant, SocketAddr, Vec<u8>)>,
    upstreams: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut senders: HashMap<SocketAddr, mpsc::UnboundedSender<(Instant, Vec<u8>)>> =
        HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, from)) = listen.recv_from(&mut buf).await else {
            continue;
        };
        let due = Instant::now() + one_way;
        if let std::collections::hash_map::Entry::Vacant(slot) = senders.entry(from) {
            let Some(socket) = upstream_socket(target).await else {
                continue;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let up = tokio::spawn(deliver_up(socket.clone(), rx));
            let answers = tokio::spawn(read_answers(socket, from, one_way, back.clone()));
            if let Ok(mut tasks) = upstreams.lock() {
                tasks.extend([up, answers]);
            }
            slot.insert(tx);
        }
        if let Some(tx) = senders.get(&from) {
            let _ = tx.send((due, buf[..len].to_vec()));
        }
    }
}

/// A socket of the relay's own, connected to the target, for one sender.
async fn upstream_socket(target: SocketAddr) -> Option<Arc<UdpSocket>> {
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .ok()?;
    socket.connect(target).await.ok()?;
    Some(Arc::new(socket))
}

async fn deliver_up(
    socket: Arc<UdpSocket>,
    mut queue: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
) {
    while let Some((due, datagram)) = queue.recv().await {
        tokio::time::sleep_until(due).await;
        let _ = socket.send(&datagram).await;
    }
}

async fn read_answers(
    socket: Arc<UdpSocket>,
    sender: SocketAddr,
    one_way: Duration,
    back: mpsc::UnboundedSender<(Instant, SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(len) => {
                let due = Instant::now() + one_way;
                if back.send((due, sender, buf[..len].to_vec())).is_err() {
                    return;
                }
            }
            // The target is gone for now (ICMP port unreachable): keep listening, it may
            // come back on the same address.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn deliver_back(
    listen: Arc<UdpSocket>,
    mut queue: mpsc::UnboundedReceiver<(Instant, SocketAddr, Vec<u8>)>,
) {
    while let Some((due, to, datagram)) = queue.recv().await {
        tokio::time::sleep_until(due).await;
        let _ = listen.send_to(&datagram, to).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_cross_both_ways_delayed_and_in_order() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((len, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..len], from).await;
            }
        });
        let one_way = Duration::from_millis(40);
        let relay = UdpRelay::start(echo_addr, one_way).await.expect("relay");
        assert_eq!(relay.target(), echo_addr);
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let started = Instant::now();
        for i in 0u8..5 {
            client.send_to(&[i], relay.address()).await.expect("send");
        }
        let mut buf = [0u8; 64];
        for i in 0u8..5 {
            let (len, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .expect("an answer")
                    .expect("recv");
            assert_eq!((&buf[..len], from), (&[i][..], relay.address()));
        }
        let rtt = started.elapsed();
        assert!(rtt >= one_way * 2, "round trip {rtt:?}");
        assert!(
            rtt < one_way * 2 + Duration::from_millis(500),
            "round trip {rtt:?}"
        );
    }
}
