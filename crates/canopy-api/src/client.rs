//! A client of the API over the node's Unix socket.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

pub use crate::v1::kv_client::KvClient;
pub use tonic::transport::Channel;

/// The largest reply the client accepts (a long scan), well above tonic's 4 MiB default.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Why [`connect`] could not reach the node. Each message names the socket and says what
/// to check.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing at the path.
    #[error(
        "no node API socket at {} (is `canopy run` running a client node with this config?)",
        path.display()
    )]
    NoSocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("{} is not a socket, so not a node API socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket file is there but nothing listens on it.
    #[error(
        "the node API socket {} refuses connections (the node that made it is not running)",
        path.display()
    )]
    Refused {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket (or its directory) is not this user's to open.
    #[error(
        "permission denied on the node API socket {} (only the user the node runs as may use it)",
        path.display()
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Any other failure to open the socket.
    #[error("cannot connect to the node API socket {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket accepted the connection but no gRPC session could be set up on it.
    #[error("the node API socket {} accepted but does not speak gRPC: {source}", path.display())]
    Transport {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
}

impl ConnectError {
    fn from_io(path: &Path, source: io::Error) -> ConnectError {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => ConnectError::NoSocket { path },
            io::ErrorKind::ConnectionRefused => ConnectError::Refused { path },
            io::ErrorKind::PermissionDenied => ConnectError::PermissionDenied { path },
            _ => ConnectError::Io { path, source },
        }
    }
}

/// Connects to the node API served on the Unix socket `socket`.
///
/// The socket is opened once here, so a missing, stale or forbidden socket is reported at
/// once and plainly (see [`ConnectError`]); later reconnections open it again.
pub async fn connect(socket: &Path) -> Result<KvClient<Channel>, ConnectError> {
    use std::os::unix::fs::FileTypeExt;

    match std::fs::metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(_) => {
            return Err(ConnectError::NotASocket {
                path: socket.to_path_buf(),
            })
        }
        Err(e) => return Err(ConnectError::from_io(socket, e)),
    }
    let first = UnixStream::connect(socket)
        .await
        .map_err(|e| ConnectError::from_io(socket, e))?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let opened = first.lock().ok().and_then(|mut first| first.take());
        let path = path.clone();
        async move {
            let stream = match opened {
                Some(stream) => stream,
                None => UnixStream::connect(&path).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is not dialled (the connector ignores it); it only sets the :authority.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Transport {
            path: socket.to_path_buf(),
            source,
        })?;
    Ok(KvClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES))
}
