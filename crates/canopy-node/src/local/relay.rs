//! A userspace UDP relay that emulates a WAN link between nodes on loopback (QUIC is UDP, so
//! a relay per link direction suffices; these machines have no kernel traffic shaping): per
//! direction a one-way delay, jitter, loss, a bandwidth cap, and a switch that cuts the link
//! (a partition), all changeable while it runs through the shared [`LinkShape`].
//!
//! A node dials the relay's address instead of the peer's. For each sender the relay opens
//! its own upstream socket to the target, so the target's answers come back through it to
//! the right sender. Every datagram, either way, is held for its delay and passed on in
//! order (jitter delays, it never reorders).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest datagram relayed (QUIC's are at most 65,527 bytes).
const MAX_DATAGRAM: usize = 65_535;
/// Under a bandwidth cap, datagrams that would wait longer than this to be sent are dropped
/// (a router's queue is finite too).
const MAX_QUEUEING: Duration = Duration::from_millis(200);

/// How one direction of an emulated link treats datagrams. Shared by every relay of a region
/// pair, so a partition or a new delay applies to all of them at once.
#[derive(Debug, Default)]
pub struct LinkShape {
    one_way_us: AtomicU64,
    jitter_us: AtomicU64,
    /// Loss probability in parts per million.
    loss_ppm: AtomicU64,
    /// 0: no cap.
    bytes_per_sec: AtomicU64,
    cut: AtomicBool,
    /// When the capped link is next free to send, and the randomness for jitter and loss.
    state: Mutex<ShapeState>,
}

#[derive(Debug)]
struct ShapeState {
    next_free: Instant,
    random: u64,
}

impl Default for ShapeState {
    fn default() -> Self {
        ShapeState {
            next_free: Instant::now(),
            random: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl LinkShape {
    /// A link with this delay, jitter (added uniformly in [0, jitter)), loss probability
    /// and bandwidth cap (bytes per second; 0 for none).
    pub fn new(one_way: Duration, jitter: Duration, loss: f64, bytes_per_sec: u64) -> Arc<Self> {
        let shape = LinkShape::default();
        shape.set(one_way, jitter, loss, bytes_per_sec);
        Arc::new(shape)
    }

    pub fn set(&self, one_way: Duration, jitter: Duration, loss: f64, bytes_per_sec: u64) {
        self.one_way_us
            .store(one_way.as_micros() as u64, Ordering::Relaxed);
        self.jitter_us
            .store(jitter.as_micros() as u64, Ordering::Relaxed);
        let ppm = (loss.clamp(0.0, 1.0) * 1e6) as u64;
        self.loss_ppm.store(ppm, Ordering::Relaxed);
        self.bytes_per_sec.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Cuts the link (every datagram dropped) or heals it.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// When a datagram of `len` bytes arriving now is due at the other end, or `None` if it
    /// is dropped.
    fn schedule(&self, len: usize) -> Option<Instant> {
        if self.cut.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // xorshift64*: jitter and loss need no more than this.
        state.random ^= state.random >> 12;
        state.random ^= state.random << 25;
        state.random ^= state.random >> 27;
        let random = state.random.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if random % 1_000_000 < self.loss_ppm.load(Ordering::Relaxed) {
            return None;
        }
        let mut sent = now;
        let rate = self.bytes_per_sec.load(Ordering::Relaxed);
        if rate > 0 {
            let start = state.next_free.max(now);
            if start.duration_since(now) > MAX_QUEUEING {
                return None;
            }
            state.next_free = start + Duration::from_secs_f64(len as f64 / rate as f64);
            sent = state.next_free;
        }
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        let extra = if jitter == 0 {
            0
        } else {
            (random >> 20) % jitter
        };
        Some(sent + Duration::from_micros(self.one_way_us.load(Ordering::Relaxed) + extra))
    }
}

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
        let shape = LinkShape::new(one_way, Duration::ZERO, 0.0, 0);
        Self::shaped(target, shape.clone(), shape).await
    }

    /// Listens on an ephemeral loopback port and relays to `target`, shaping what goes to it
    /// with `forward` and its answers with `back`.
    pub async fn shaped(
        target: SocketAddr,
        forward_shape: Arc<LinkShape>,
        back_shape: Arc<LinkShape>,
    ) -> std::io::Result<UdpRelay> {
        let listen = Arc::new(UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?);
        let address = listen.local_addr()?;
        // Answers from the target, delayed, back to their sender through the listening socket.
        let (back_tx, back_rx) = mpsc::unbounded_channel::<(Instant, SocketAddr, Vec<u8>)>();
        let backward = tokio::spawn(deliver_back(listen.clone(), back_rx));
        let upstreams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shapes = (forward_shape, back_shape);
        let forward = tokio::spawn(forward(listen, target, shapes, back_tx, upstreams.clone()));
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
    (forward_shape, back_shape): (Arc<LinkShape>, Arc<LinkShape>),
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
        let Some(due) = forward_shape.schedule(len) else {
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = senders.entry(from) {
            let Some(socket) = upstream_socket(target, from).await else {
                continue;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let up = tokio::spawn(deliver_up(socket.clone(), rx));
            let answers =
                tokio::spawn(read_answers(socket, from, back_shape.clone(), back.clone()));
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

/// A socket of the relay's own, connected to the target, for one sender. It has the sender's
/// address (a loopback one, on another port), so the target sees the sender's host, as it
/// would across a real WAN.
async fn upstream_socket(target: SocketAddr, sender: SocketAddr) -> Option<Arc<UdpSocket>> {
    let host = if sender.ip().is_loopback() {
        sender.ip()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(host, 0)).await.ok()?;
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
    shape: Arc<LinkShape>,
    back: mpsc::UnboundedSender<(Instant, SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(len) => {
                let Some(due) = shape.schedule(len) else {
                    continue;
                };
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

    /// A UDP socket that sends every datagram back to its sender; returns its address.
    async fn echo_server() -> SocketAddr {
        let echo = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let address = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((len, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..len], from).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn datagrams_cross_both_ways_delayed_and_in_order() {
        let echo_addr = echo_server().await;
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

    async fn answer(client: &UdpSocket, buf: &mut [u8; 64]) -> bool {
        tokio::time::timeout(Duration::from_millis(300), client.recv_from(buf))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_cut_link_drops_everything_until_healed() {
        let echo_addr = echo_server().await;
        let there = LinkShape::new(Duration::from_millis(5), Duration::from_millis(5), 0.0, 0);
        let back = LinkShape::new(Duration::from_millis(5), Duration::ZERO, 0.0, 0);
        let relay = UdpRelay::shaped(echo_addr, there.clone(), back)
            .await
            .expect("relay");
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut buf = [0u8; 64];
        there.cut(true);
        client.send_to(&[1], relay.address()).await.expect("send");
        assert!(
            !answer(&client, &mut buf).await,
            "a datagram crossed a cut link"
        );
        there.cut(false);
        client.send_to(&[2], relay.address()).await.expect("send");
        assert!(
            answer(&client, &mut buf).await,
            "the healed link carries nothing"
        );
        assert_eq!(buf[0], 2);
        // Total loss drops everything too.
        there.set(Duration::ZERO, Duration::ZERO, 1.0, 0);
        client.send_to(&[3], relay.address()).await.expect("send");
        assert!(
            !answer(&client, &mut buf).await,
            "a datagram crossed a link losing all"
        );
    }
}
