//! One QUIC connection to one peer: the writer that drains the link's send queues onto its
//! control and data streams, and the readers that turn the peer's streams into events.
//!
//! Each side sends on its own two unidirectional streams, opened when the link comes up: a
//! control stream at [`CONTROL_PRIORITY`] and a data stream (multicast bodies) at priority 0.
//! Both carry [`FrameCodec`] frames. The writer prefers control frames and keeps accepting them
//! while a data frame waits for flow-control credit. Anything a peer sends that does not decode
//! ends the link with [`CLOSE_PROTOCOL`]; the endpoint keeps serving everyone else.

use bytes::{Buf, Bytes};
use canopy_proto::{FrameCodec, FrameError};
use futures_util::StreamExt;
use quinn::{Connection, ConnectionError, RecvStream, VarInt, WriteError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use crate::config::NetEvent;
use crate::identity::Identity;

/// QUIC application close code: an orderly close (`close_link`, shutdown, cancelled dial).
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
/// QUIC application close code: the peer sent something that does not decode.
pub const CLOSE_PROTOCOL: VarInt = VarInt::from_u32(1);
/// QUIC application close code: the peer's certificate names an unacceptable identity.
pub const CLOSE_IDENTITY: VarInt = VarInt::from_u32(2);
/// QUIC application close code: the peer reads too slowly and our send queue overflowed.
pub const CLOSE_QUEUE_FULL: VarInt = VarInt::from_u32(3);

/// Send priority of the control stream (the data stream has 0).
pub const CONTROL_PRIORITY: i32 = 10;

/// The sending half of a link's queues; lives in the endpoint's link table.
#[derive(Debug, Clone)]
pub(crate) struct LinkSenders {
    pub control: mpsc::Sender<Bytes>,
    pub data: mpsc::Sender<Bytes>,
}

/// The receiving half of a link's queues; owned by the link's writer.
#[derive(Debug)]
pub(crate) struct LinkQueues {
    control: mpsc::Receiver<Bytes>,
    data: mpsc::Receiver<Bytes>,
}

/// Bounded queues of encoded frames for one link.
pub(crate) fn queues(control: usize, data: usize) -> (LinkSenders, LinkQueues) {
    let (control_tx, control_rx) = mpsc::channel(control);
    let (data_tx, data_rx) = mpsc::channel(data);
    (
        LinkSenders {
            control: control_tx,
            data: data_tx,
        },
        LinkQueues {
            control: control_rx,
            data: data_rx,
        },
    )
}

/// How a link ended.
#[derive(Debug)]
pub(crate) enum LinkEnd {
    /// This side decided to close the connection with `code` and `reason`.
    Local { code: VarInt, reason: String },
    /// The connection is gone (closed by the peer, timed out, lost).
    Gone(String),
}

impl LinkEnd {
    fn protocol(reason: String) -> Self {
        LinkEnd::Local {
            code: CLOSE_PROTOCOL,
            reason,
        }
    }
}

/// Runs a live link until it ends: writes the queues, reads the peer's streams into `events`.
pub(crate) async fn drive(
    conn: &Connection,
    peer: &Identity,
    queues: LinkQueues,
    events: &mpsc::Sender<NetEvent>,
    max_frame_len: usize,
) -> LinkEnd {
    tokio::select! {
        end = write_loop(conn, queues) => end,
        end = read_loop(conn, peer, events, max_frame_len) => end,
        err = conn.closed() => LinkEnd::Gone(describe(&err)),
    }
}

async fn write_loop(conn: &Connection, mut queues: LinkQueues) -> LinkEnd {
    let opened =
        async { Ok::<_, ConnectionError>((conn.open_uni().await?, conn.open_uni().await?)) };
    let (mut control, mut data) = match opened.await {
        Ok(streams) => streams,
        Err(e) => return LinkEnd::Gone(describe(&e)),
    };
    // Only fails if the stream is already closed, which the first write reports too.
    let _ = control.set_priority(CONTROL_PRIORITY);
    // The data frame being written; it may take several writes as flow control allows.
    let mut pending = Bytes::new();
    loop {
        tokio::select! {
            biased;
            frame = queues.control.recv() => match frame {
                Some(frame) => {
                    if let Err(e) = control.write_all(&frame).await {
                        return write_failed(e);
                    }
                }
                None => return link_removed(),
            },
            // `write` is cancel-safe: if a control frame wins, no data bytes were taken.
            written = data.write(&pending), if !pending.is_empty() => match written {
                Ok(n) => pending.advance(n),
                Err(e) => return write_failed(e),
            },
            frame = queues.data.recv(), if pending.is_empty() => match frame {
                Some(frame) => pending = frame,
                None => return link_removed(),
            },
        }
    }
}

/// The queue senders were dropped: the endpoint removed this link and closed its connection.
fn link_removed() -> LinkEnd {
    LinkEnd::Local {
        code: CLOSE_NORMAL,
        reason: "link closed".into(),
    }
}

fn write_failed(e: WriteError) -> LinkEnd {
    match e {
        WriteError::ConnectionLost(e) => LinkEnd::Gone(describe(&e)),
        other => LinkEnd::protocol(format!("send stream failed: {other}")),
    }
}

async fn read_loop(
    conn: &Connection,
    peer: &Identity,
    events: &mpsc::Sender<NetEvent>,
    max_frame_len: usize,
) -> LinkEnd {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_uni() => match accepted {
                Ok(stream) => {
                    readers.spawn(read_stream(stream, peer.clone(), events.clone(), max_frame_len));
                }
                Err(e) => return LinkEnd::Gone(describe(&e)),
            },
            Some(done) = readers.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(end)) => return end,
                Err(e) => return LinkEnd::protocol(format!("stream reader failed: {e}")),
            },
        }
    }
}

/// Reads one of the peer's streams to its end. Dropping the set of readers aborts them.
async fn read_stream(
    stream: RecvStream,
    peer: Identity,
    events: mpsc::Sender<NetEvent>,
    max_frame_len: usize,
) -> Result<(), LinkEnd> {
    let mut frames = FramedRead::new(stream, FrameCodec::new(max_frame_len));
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(msg) => {
                let event = NetEvent::Message {
                    from: peer.clone(),
                    msg,
                };
                if events.send(event).await.is_err() {
                    // Nobody listens any more; the endpoint is going away.
                    return Ok(());
                }
            }
            // A reset stream, a truncated last frame, or a lost connection (the endpoint then
            // reports the connection's own close reason instead).
            Err(FrameError::Io(e)) => {
                return Err(LinkEnd::protocol(format!("receive stream failed: {e}")))
            }
            Err(e) => return Err(LinkEnd::protocol(format!("bad frame: {e}"))),
        }
    }
    Ok(())
}

/// A readable reason for a connection's end.
pub(crate) fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(close) => format!(
            "closed by peer (code {}): {}",
            close.error_code,
            String::from_utf8_lossy(&close.reason)
        ),
        ConnectionError::ConnectionClosed(close) => format!("closed by peer: {close}"),
        ConnectionError::LocallyClosed => "closed locally".into(),
        ConnectionError::TimedOut => "idle timeout".into(),
        ConnectionError::Reset => "reset by peer".into(),
        other => other.to_string(),
    }
}
