//! One QUIC connection to one peer: the writer that drains the link's send queues onto its
//! control and data streams, and the readers that turn the peer's streams into events.
//!
//! Each side sends on its own two unidirectional streams, opened when the link comes up: a
//! control stream at [`CONTROL_PRIORITY`] and a data stream (multicast bodies) at priority 0.
//! Both carry [`FrameCodec`] frames. The writer prefers control frames and keeps accepting them
//! while a data frame waits for flow-control credit. Anything a peer sends that does not decode
//! ends the link with [`CLOSE_PROTOCOL`]; the endpoint keeps serving everyone else.
//!
//! The readers enforce the link's receive bounds ([`ReadLimits`]): at most
//! [`MAX_STREAMS_PER_LINK`] streams, control frames under a rate (over it, the link is closed),
//! multicast frames under a rate (over it, the reader waits, which pushes back on the peer).
//! Each message goes to its event lane by its body, whatever stream it came on.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use canopy_proto::{Body, FrameCodec, FrameError};
use futures_util::StreamExt;
use quinn::{Connection, ConnectionError, RecvStream, VarInt, WriteError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use crate::config::NetEvent;
use crate::events::{is_data, EventSenders};
use crate::identity::Identity;
use crate::limits::{ByteBudget, ReadLimits};
use crate::refresh::Announcements;

/// QUIC application close code: an orderly close (`close_link`, shutdown, cancelled dial).
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
/// QUIC application close code: the peer sent something that does not decode.
pub const CLOSE_PROTOCOL: VarInt = VarInt::from_u32(1);
/// QUIC application close code: the peer's certificate names an unacceptable identity.
pub const CLOSE_IDENTITY: VarInt = VarInt::from_u32(2);
/// QUIC application close code: the peer reads too slowly and our send queue overflowed.
pub const CLOSE_QUEUE_FULL: VarInt = VarInt::from_u32(3);
/// QUIC application close code: this side is at its connection bound
/// ([`NetConfig::max_connections`](crate::NetConfig::max_connections)).
pub const CLOSE_BUSY: VarInt = VarInt::from_u32(4);

/// Send priority of the control stream (the data stream has 0).
pub const CONTROL_PRIORITY: i32 = 10;

/// Unidirectional streams a peer may open on one connection (control and data); one more
/// closes the link with [`CLOSE_PROTOCOL`].
pub const MAX_STREAMS_PER_LINK: usize = 2;

/// The sending half of a link's queues; lives in the endpoint's link table.
#[derive(Debug, Clone)]
pub(crate) struct LinkSenders {
    pub control: mpsc::Sender<Bytes>,
    pub data: mpsc::Sender<Bytes>,
    /// Bytes in both queues, shared with the writer.
    pub budget: ByteBudget,
}

/// The receiving half of a link's queues; owned by the link's writer.
#[derive(Debug)]
pub(crate) struct LinkQueues {
    control: mpsc::Receiver<Bytes>,
    data: mpsc::Receiver<Bytes>,
    budget: ByteBudget,
}

/// Bounded queues of encoded frames for one link: `control` and `data` frames, `max_bytes`
/// bytes in all.
pub(crate) fn queues(control: usize, data: usize, max_bytes: usize) -> (LinkSenders, LinkQueues) {
    let (control_tx, control_rx) = mpsc::channel(control);
    let (data_tx, data_rx) = mpsc::channel(data);
    let budget = ByteBudget::new(max_bytes);
    (
        LinkSenders {
            control: control_tx,
            data: data_tx,
            budget: budget.clone(),
        },
        LinkQueues {
            control: control_rx,
            data: data_rx,
            budget,
        },
    )
}

/// Why this side closed a link, for the endpoint's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// An orderly close, or a local failure that is not the peer's fault.
    Normal,
    /// The peer sent something that does not decode.
    Protocol,
    /// The peer opened too many streams.
    Streams,
    /// The peer sent control frames too fast.
    ControlRate,
}

/// How a link ended.
#[derive(Debug)]
pub(crate) enum LinkEnd {
    /// This side closed the connection with `code` and `reason`.
    Local {
        code: VarInt,
        reason: String,
        cause: Cause,
    },
    /// The connection is gone (closed by the peer, timed out, lost).
    Gone(String),
}

impl LinkEnd {
    fn protocol(reason: String) -> Self {
        Self::closing(CLOSE_PROTOCOL, reason, Cause::Protocol)
    }

    fn closing(code: VarInt, reason: String, cause: Cause) -> Self {
        LinkEnd::Local {
            code,
            reason,
            cause,
        }
    }
}

/// Runs a live link until it ends: writes the queues, reads the peer's streams into `events`.
/// If this side decides to end it, the connection is closed here, before the readers stop
/// (a reader dropping its stream first would tell the peer only "stopped"). When it returns,
/// the link's readers have stopped: it emits no further events.
pub(crate) async fn drive(
    conn: &Connection,
    peer: &Identity,
    queues: LinkQueues,
    events: &EventSenders,
    limits: Arc<ReadLimits>,
    announcements: Arc<Announcements>,
) -> LinkEnd {
    let mut readers = JoinSet::new();
    // A stream whose reader failed, kept open until the connection is closed.
    let mut held = None;
    let end = tokio::select! {
        end = write_loop(conn, queues) => end,
        (end, stream) = read_loop(conn, peer, events, &limits, &announcements, &mut readers) => {
            held = stream;
            end
        }
        err = conn.closed() => LinkEnd::Gone(describe(&err)),
    };
    let end = match end {
        LinkEnd::Local {
            code,
            reason,
            cause,
        } => match conn.close_reason() {
            // Closed meanwhile (by the endpoint or the peer): that reason is the real one.
            Some(err) => LinkEnd::Gone(describe(&err)),
            None => {
                conn.close(code, reason.as_bytes());
                LinkEnd::Local {
                    code,
                    reason,
                    cause,
                }
            }
        },
        gone @ LinkEnd::Gone(_) => gone,
    };
    drop(held);
    readers.shutdown().await;
    end
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
                    queues.budget.release(frame.len());
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
                Some(frame) => {
                    queues.budget.release(frame.len());
                    pending = frame;
                }
                None => return link_removed(),
            },
        }
    }
}

/// The queue senders were dropped: the endpoint removed this link and closed its connection.
fn link_removed() -> LinkEnd {
    LinkEnd::closing(CLOSE_NORMAL, "link closed".into(), Cause::Normal)
}

fn write_failed(e: WriteError) -> LinkEnd {
    match e {
        WriteError::ConnectionLost(e) => LinkEnd::Gone(describe(&e)),
        other => LinkEnd::protocol(format!("send stream failed: {other}")),
    }
}

/// How a reader ended the link, with the stream it read if any. The stream must outlive the
/// connection's close: dropping an unfinished stream sends the peer STOP_SENDING, which would
/// reach it before (and instead of) our close reason.
type ReadEnd = (LinkEnd, Option<RecvStream>);

/// Accepts the peer's streams (at most [`MAX_STREAMS_PER_LINK`]) and reads each in a task of
/// `readers`, until the connection or a reader fails.
async fn read_loop(
    conn: &Connection,
    peer: &Identity,
    events: &EventSenders,
    limits: &Arc<ReadLimits>,
    announcements: &Arc<Announcements>,
    readers: &mut JoinSet<Result<(), ReadEnd>>,
) -> ReadEnd {
    let mut accepted = 0usize;
    loop {
        tokio::select! {
            stream = conn.accept_uni() => match stream {
                Ok(stream) => {
                    accepted += 1;
                    if accepted > MAX_STREAMS_PER_LINK {
                        let end = LinkEnd::closing(
                            CLOSE_PROTOCOL,
                            "too many streams".into(),
                            Cause::Streams,
                        );
                        return (end, Some(stream));
                    }
                    readers.spawn(read_stream(
                        stream,
                        peer.clone(),
                        events.clone(),
                        limits.clone(),
                        announcements.clone(),
                    ));
                }
                Err(e) => return (LinkEnd::Gone(describe(&e)), None),
            },
            Some(done) = readers.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(end)) => return end,
                Err(e) => {
                    return (LinkEnd::protocol(format!("stream reader failed: {e}")), None)
                }
            },
        }
    }
}

/// Reads one of the peer's streams to its end, each message onto its lane under the link's
/// rate limits. Aborted when the link ends.
async fn read_stream(
    stream: RecvStream,
    peer: Identity,
    events: EventSenders,
    limits: Arc<ReadLimits>,
    announcements: Arc<Announcements>,
) -> Result<(), ReadEnd> {
    let mut frames = FramedRead::new(stream, FrameCodec::new(limits.max_frame_len));
    while let Some(frame) = frames.next().await {
        let end = match frame {
            Ok(msg) => Ok(msg),
            // A reset stream, a truncated last frame, or a lost connection (the endpoint then
            // reports the connection's own close reason instead).
            Err(FrameError::Io(e)) => Err(LinkEnd::protocol(format!("receive stream failed: {e}"))),
            Err(e) => Err(LinkEnd::protocol(format!("bad frame: {e}"))),
        };
        let msg = match end {
            Ok(msg) => msg,
            Err(end) => return Err((end, Some(frames.into_inner()))),
        };
        if let Some(Body::LinkRefresh(refresh)) = &msg.body {
            // Transport business, under the control rate like any control message.
            if !limits.admit_control() {
                let end = LinkEnd::closing(
                    CLOSE_PROTOCOL,
                    format!("control message rate over {}/s", limits.control_rate),
                    Cause::ControlRate,
                );
                return Err((end, Some(frames.into_inner())));
            }
            announcements.announce(peer.node_id, &refresh.certificate_sha256);
            continue;
        }
        let event = NetEvent::Message {
            from: peer.clone(),
            msg,
        };
        if is_data(&event) {
            limits.admit_data().await;
        } else if !limits.admit_control() {
            let end = LinkEnd::closing(
                CLOSE_PROTOCOL,
                format!("control message rate over {}/s", limits.control_rate),
                Cause::ControlRate,
            );
            return Err((end, Some(frames.into_inner())));
        }
        if events.send(event).await.is_err() {
            // Nobody listens any more; the endpoint is going away.
            return Ok(());
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
