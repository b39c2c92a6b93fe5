//! Length-delimited framing: a 4-byte big-endian length, then one encoded `ControlMessage`.
//!
//! Decoding never panics: a frame longer than the configured maximum, a body that is not a
//! valid `ControlMessage`, or a message with no known body is a typed [`FrameError`], and the
//! IO layer closes that one link.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::ControlMessage;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Default largest frame body accepted (1 MiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the link accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized { len: usize, max: usize },
    /// The body is not a valid protobuf `ControlMessage`.
    #[error("undecodable frame: {0}")]
    Undecodable(#[from] prost::DecodeError),
    /// The body decoded but carries no message type this node knows.
    #[error("frame carries an unknown or empty message type")]
    UnknownMessageType,
    /// The underlying transport failed (only from the tokio-util codec).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encoder and decoder of framed `ControlMessage`s with a maximum frame size.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    /// A codec that refuses frames whose body is longer than `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }

    /// The largest frame body this codec accepts.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Appends one frame to `dst`. Refuses a message without a body or whose encoding exceeds
    /// the maximum, so a node never sends what its peer would refuse.
    pub fn encode_into(&self, msg: &ControlMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
        if msg.body.is_none() {
            return Err(FrameError::UnknownMessageType);
        }
        let len = msg.encoded_len();
        if len > self.max_frame_len {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame_len,
            });
        }
        dst.reserve(LENGTH_PREFIX_LEN + len);
        // The length fits: max_frame_len is a usize we compared against, and frames over
        // u32::MAX are refused above for any sane maximum.
        dst.put_u32(u32::try_from(len).map_err(|_| FrameError::Oversized {
            len,
            max: u32::MAX as usize,
        })?);
        msg.encode_raw(dst);
        Ok(())
    }

    /// Takes one complete frame off the front of `src`, if there is one.
    ///
    /// Returns `Ok(None)` when more bytes are needed. After an error the buffer is left as it
    /// was and the link must be closed: framing cannot resynchronise.
    pub fn decode_from(&self, src: &mut BytesMut) -> Result<Option<ControlMessage>, FrameError> {
        if src.len() < LENGTH_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&src[..LENGTH_PREFIX_LEN]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_len {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame_len,
            });
        }
        if src.len() < LENGTH_PREFIX_LEN + len {
            src.reserve(LENGTH_PREFIX_LEN + len - src.len());
            return Ok(None);
        }
        let msg = ControlMessage::decode(&src[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len])?;
        if msg.body.is_none() {
            return Err(FrameError::UnknownMessageType);
        }
        src.advance(LENGTH_PREFIX_LEN + len);
        Ok(Some(msg))
    }
}

#[cfg(feature = "codec")]
impl tokio_util::codec::Decoder for FrameCodec {
    type Item = ControlMessage;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ControlMessage>, FrameError> {
        self.decode_from(src)
    }
}

#[cfg(feature = "codec")]
impl tokio_util::codec::Encoder<ControlMessage> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: ControlMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_into(&item, dst)
    }
}
