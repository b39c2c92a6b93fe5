//! A UDP socket with fault switches, for fault injection: while cut, every datagram in and
//! out is dropped without a trace, so to its peers the node is dead, and nothing it sends
//! (QUIC close frames included) arrives anywhere; datagrams to and from blocked addresses
//! are dropped the same way, which partitions the node from just those peers.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The switches, shared between the endpoint and its socket.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    cut: AtomicBool,
    /// Set while `blocked` is not empty, so the common path takes no lock.
    any_blocked: AtomicBool,
    blocked: RwLock<HashSet<SocketAddr>>,
}

impl Faults {
    pub(crate) fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    pub(crate) fn set_blocked(&self, addrs: HashSet<SocketAddr>) {
        let any = !addrs.is_empty();
        if let Ok(mut blocked) = self.blocked.write() {
            *blocked = addrs;
        }
        self.any_blocked.store(any, Ordering::Relaxed);
    }

    fn drops(&self, peer: SocketAddr) -> bool {
        self.cut.load(Ordering::Relaxed)
            || (self.any_blocked.load(Ordering::Relaxed)
                && self.blocked.read().is_ok_and(|b| b.contains(&peer)))
    }
}

pub(crate) struct FaultSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: Arc<Faults>,
}

impl FaultSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, faults: Arc<Faults>) -> Self {
        FaultSocket { inner, faults }
    }
}

impl fmt::Debug for FaultSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultSocket")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for FaultSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.faults.drops(transmit.destination) {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            // Keep the datagrams from peers we may hear, packed to the front.
            let mut kept = 0;
            for i in 0..received {
                if self.faults.drops(meta[i].addr) {
                    continue;
                }
                if kept != i {
                    let len = meta[i].len.min(bufs[i].len()).min(bufs[kept].len());
                    let datagram = bufs[i][..len].to_vec();
                    bufs[kept][..len].copy_from_slice(&datagram);
                    meta[kept] = meta[i];
                    meta[kept].len = len;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
