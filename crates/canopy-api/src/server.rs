//! Serving a [`KvBackend`] on a Unix socket.

use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::v1::kv_server::{Kv, KvServer};
use crate::{v1, ApiError};

/// What the node implements to answer the API. Every method's error reaches the client as a
/// gRPC status with [`ApiError::code`] and the error's text as its message.
///
/// Implement it under the [`async_trait`](crate::async_trait) attribute re-exported here:
/// `#[canopy_api::async_trait] impl canopy_api::KvBackend for MyNode { … }`.
#[tonic::async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// Write `value` under `key` and publish it; returns where the write was recorded.
    async fn put(&self, key: String, value: Vec<u8>) -> Result<v1::PutReply, ApiError>;

    /// Delete `key` (a tombstone write) and publish it.
    async fn delete(&self, key: String) -> Result<v1::PutReply, ApiError>;

    /// The current value of `key` in the local replica, `None` if absent or deleted.
    async fn get(&self, key: String) -> Result<Option<v1::Entry>, ApiError>;

    /// The entries whose keys start with `prefix`, in key order, at most `limit` of them
    /// (`0` asks for the backend's default limit; the backend should also cap large ones).
    async fn scan(&self, prefix: String, limit: u32) -> Result<Vec<v1::Entry>, ApiError>;

    /// Start following the changes to `pattern` (an exact key, or a prefix ending in `/`).
    ///
    /// The server streams what the receiver yields to the client, and drops the receiver
    /// when the client goes away or the server shuts down. The backend must then stop
    /// feeding it (its `Sender::send` fails, `Sender::closed` resolves) and keep nothing
    /// alive for it: no task may outlive the watch. A bounded channel lets the backend
    /// decide what to do with a client that reads too slowly. Dropping the sender ends the
    /// stream normally.
    async fn watch(&self, pattern: String) -> Result<mpsc::Receiver<v1::Change>, ApiError>;

    /// The node's id, role and a JSON document with the rest of its status.
    async fn status(&self) -> Result<v1::StatusReply, ApiError>;
}

/// Why [`serve`] could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's directory could not be created.
    #[error("cannot create the directory {} for the API socket: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The path does not fit in a Unix socket address.
    #[error(
        "the API socket path {} is {len} bytes long; Unix sockets allow at most {max}",
        path.display()
    )]
    PathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest path a Unix socket address holds.
        max: usize,
    },
    /// Another process is serving on the socket.
    #[error("another process is already listening on the API socket {}", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path; it is left alone.
    #[error("{} exists and is not a socket; not replacing it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The existing socket file could not be checked or removed.
    #[error("cannot replace the stale API socket {}: {source}", path.display())]
    Stale {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Binding, inspecting or restricting the socket failed.
    #[error("cannot bind the API socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the API server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The longest path a Unix socket address holds (`sun_path` less its closing NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long [`serve`] waits for an old socket to answer before calling it in use.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after an accept error that is not about one connection (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `backend` on the Unix socket `socket` until `shutdown` completes.
///
/// Creates the socket's directory if needed (mode 0700), replaces a stale socket file only
/// if nothing is listening on it, binds the socket with mode 0600 and accepts connections
/// only from the user the node runs as (and root), as the file mode does. When `shutdown`
/// completes the server stops accepting, ends the open watches (with `UNAVAILABLE`), lets
/// the requests in flight finish, removes the socket file and returns. The file is also
/// removed if the returned future is dropped, but only while it is still this server's
/// socket (not one a later server bound at the same path).
pub async fn serve<F>(
    socket: &Path,
    backend: Arc<dyn KvBackend>,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()>,
{
    let (listener, file) = bind(socket).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = KvServer::new(Service {
        backend,
        stop: stop_rx,
    });
    let incoming = Incoming {
        listener,
        owner_uid: file.uid,
        backoff: None,
    };
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let result = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(service, incoming, signal)
        .await;
    drop(file);
    Ok(result?)
}

/// The socket file this server bound; removed on drop if it is still the same file.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    uid: u32,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

async fn bind(socket: &Path) -> Result<(UnixListener, SocketFile), ServeError> {
    let path = socket.to_path_buf();
    let len = socket.as_os_str().as_bytes().len();
    if len > MAX_SOCKET_PATH {
        return Err(ServeError::PathTooLong {
            path,
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ServeError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(socket)).await {
                // Something answers (or is too busy to): leave it alone.
                Ok(Ok(_)) | Err(_) => return Err(ServeError::InUse { path }),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    match std::fs::remove_file(socket) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => return Err(ServeError::Stale { path, source }),
                    }
                }
                Ok(Err(source)) => return Err(ServeError::Stale { path, source }),
            }
        }
        Ok(_) => return Err(ServeError::NotASocket { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(ServeError::Stale { path, source }),
    }
    let listener = UnixListener::bind(socket).map_err(|source| ServeError::Bind {
        path: path.clone(),
        source,
    })?;
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(source) => {
            // Just bound, so what is at the path is ours.
            let _ = std::fs::remove_file(socket);
            return Err(ServeError::Bind { path, source });
        }
    };
    let file = SocketFile {
        path: path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
        uid: meta.uid(),
    };
    // Until this chmod the file has the umask's mode; connections from other users made in
    // that window are refused by the peer-credential check in `Incoming`.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| ServeError::Bind { path, source })?;
    Ok((listener, file))
}

/// The accepted connections, less those from other users than the socket's owner and root.
struct Incoming {
    listener: UnixListener,
    owner_uid: u32,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(backoff) = self.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == self.owner_uid || cred.uid() == 0 => {
                        return Poll::Ready(Some(Ok(stream)));
                    }
                    // Dropping the stream closes the connection.
                    Ok(_) | Err(_) => continue,
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // tonic skips the error and polls again at once: pause first, so that
                    // running out of descriptors does not spin a core.
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// The tonic service: hands each request to the backend.
struct Service {
    backend: Arc<dyn KvBackend>,
    /// Becomes `true` (or its sender is dropped) when the server shuts down.
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Kv for Service {
    async fn put(
        &self,
        request: Request<v1::PutRequest>,
    ) -> Result<Response<v1::PutReply>, Status> {
        let v1::PutRequest { key, value } = request.into_inner();
        Ok(Response::new(self.backend.put(key, value).await?))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::PutReply>, Status> {
        let v1::DeleteRequest { key } = request.into_inner();
        Ok(Response::new(self.backend.delete(key).await?))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetReply>, Status> {
        let v1::GetRequest { key } = request.into_inner();
        let entry = self.backend.get(key).await?;
        Ok(Response::new(v1::GetReply {
            found: entry.is_some(),
            entry,
        }))
    }

    async fn scan(
        &self,
        request: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanReply>, Status> {
        let v1::ScanRequest { prefix, limit } = request.into_inner();
        let entries = self.backend.scan(prefix, limit).await?;
        Ok(Response::new(v1::ScanReply { entries }))
    }

    type WatchStream = ChangeStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let v1::WatchRequest { pattern } = request.into_inner();
        let changes = self.backend.watch(pattern).await?;
        let mut stop = self.stop.clone();
        Ok(Response::new(ChangeStream {
            changes,
            stop: Box::pin(async move {
                // Err: the server is gone, which is a stop too.
                let _ = stop.wait_for(|stopped| *stopped).await;
            }),
            done: false,
        }))
    }

    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        Ok(Response::new(self.backend.status().await?))
    }
}

/// The stream of one watch: what the backend's receiver yields, until the backend drops
/// its sender (a normal end) or the server shuts down (`UNAVAILABLE`). tonic drops it when
/// the client goes away, which drops the receiver; no task is spawned for it.
struct ChangeStream {
    changes: mpsc::Receiver<v1::Change>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Stream for ChangeStream {
    type Item = Result<v1::Change, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.changes.close();
            return Poll::Ready(Some(Err(Status::unavailable("the node is shutting down"))));
        }
        match ready!(self.changes.poll_recv(cx)) {
            Some(change) => Poll::Ready(Some(Ok(change))),
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}
