//! The API end to end over a real Unix socket in a temporary directory, against an in-memory
//! backend (the node's replica is the layer below and is stood in for here).

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_api::tonic::Code;
use canopy_api::v1::{
    Change, DeleteRequest, Entry, GetRequest, PutReply, PutRequest, ScanRequest, StatusReply,
    StatusRequest, WatchRequest,
};
use canopy_api::{connect, serve, ApiError, ConnectError, KvBackend, ServeError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const NODE_ID: u64 = 7;
const MAX_KEY: usize = 4096;
const WAIT: Duration = Duration::from_secs(10);

/// An in-memory replica: a map, a sequence counter and the open watches.
#[derive(Default)]
struct Fake {
    router: bool,
    entries: Mutex<BTreeMap<String, Entry>>,
    seq: AtomicU64,
    watches: Mutex<Vec<(String, mpsc::Sender<Change>)>>,
}

impl Fake {
    fn check(&self, key: &str) -> Result<(), ApiError> {
        if self.router {
            return Err(ApiError::NotAClient {
                role: "router".into(),
            });
        }
        if key.len() > MAX_KEY {
            return Err(ApiError::InvalidArgument(format!(
                "key too large: {} bytes, at most {MAX_KEY}",
                key.len()
            )));
        }
        Ok(())
    }

    fn write(&self, key: String, value: Option<Vec<u8>>) -> Result<PutReply, ApiError> {
        self.check(&key)?;
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let hlc = 1000 + seq;
        let change = Change {
            key: key.clone(),
            value: value.clone().unwrap_or_default(),
            deleted: value.is_none(),
            hlc,
            origin: NODE_ID,
            origin_seq: seq,
            current: true,
        };
        {
            let mut entries = self.entries.lock().unwrap();
            match value {
                Some(value) => {
                    entries.insert(
                        key.clone(),
                        Entry {
                            key: key.clone(),
                            value,
                            hlc,
                            origin: NODE_ID,
                            origin_seq: seq,
                        },
                    );
                }
                None => {
                    entries.remove(&key);
                }
            }
        }
        let mut watches = self.watches.lock().unwrap();
        watches.retain(|(pattern, tx)| {
            let matches = if pattern.ends_with('/') {
                key.starts_with(pattern.as_str())
            } else {
                key == *pattern
            };
            !matches || tx.try_send(change.clone()).is_ok()
        });
        Ok(PutReply {
            origin: NODE_ID,
            origin_seq: seq,
            hlc,
        })
    }

    /// Watches whose receiver is still alive.
    fn open_watches(&self) -> usize {
        let mut watches = self.watches.lock().unwrap();
        watches.retain(|(_, tx)| !tx.is_closed());
        watches.len()
    }
}

#[canopy_api::async_trait]
impl KvBackend for Fake {
    async fn put(&self, key: String, value: Vec<u8>) -> Result<PutReply, ApiError> {
        self.write(key, Some(value))
    }

    async fn delete(&self, key: String) -> Result<PutReply, ApiError> {
        self.write(key, None)
    }

    async fn get(&self, key: String) -> Result<Option<Entry>, ApiError> {
        self.check(&key)?;
        Ok(self.entries.lock().unwrap().get(&key).cloned())
    }

    async fn scan(&self, prefix: String, limit: u32) -> Result<Vec<Entry>, ApiError> {
        self.check(&prefix)?;
        let limit = if limit == 0 { 1000 } else { limit as usize };
        Ok(self
            .entries
            .lock()
            .unwrap()
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn watch(&self, pattern: String) -> Result<mpsc::Receiver<Change>, ApiError> {
        self.check(&pattern)?;
        let (tx, rx) = mpsc::channel(16);
        self.watches.lock().unwrap().push((pattern, tx));
        Ok(rx)
    }

    async fn status(&self) -> Result<StatusReply, ApiError> {
        Ok(StatusReply {
            node_id: NODE_ID,
            role: if self.router { "router" } else { "client" }.into(),
            status_json: "{}".into(),
        })
    }
}

/// A server on `<tempdir>/run/api.sock` (the `run` directory does not exist beforehand).
struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    backend: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    async fn start(backend: Fake) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("api.sock");
        let backend = Arc::new(backend);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_at(socket.clone(), backend.clone(), async {
            let _ = stopped.await;
        }));
        wait_for(|| socket.exists()).await;
        Server {
            _dir: dir,
            socket,
            backend,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) -> PathBuf {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
        self.socket.clone()
    }
}

/// `serve` with owned arguments, for `tokio::spawn`.
async fn serve_at(
    socket: PathBuf,
    backend: Arc<Fake>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve(&socket, backend, shutdown).await
}

async fn wait_for(mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn put(key: &str, value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.to_vec(),
    }
}

#[tokio::test]
async fn put_then_get_round_trips() {
    let server = Server::start(Fake::default()).await;
    let mut client = connect(&server.socket).await.unwrap();

    let reply = client
        .put(put("app/greeting", b"hello \xff\x00"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.origin, reply.origin_seq), (NODE_ID, 1));

    let got = client
        .get(GetRequest {
            key: "app/greeting".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    let entry = got.entry.unwrap();
    assert_eq!(entry.key, "app/greeting");
    assert_eq!(entry.value, b"hello \xff\x00");
    assert_eq!(
        (entry.origin, entry.origin_seq, entry.hlc),
        (NODE_ID, 1, reply.hlc)
    );

    let missing = client
        .get(GetRequest {
            key: "app/none".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.found);
    assert!(missing.entry.is_none());

    client
        .delete(DeleteRequest {
            key: "app/greeting".into(),
        })
        .await
        .unwrap();
    let gone = client
        .get(GetRequest {
            key: "app/greeting".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!gone.found);

    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((status.node_id, status.role.as_str()), (NODE_ID, "client"));
    server.shutdown().await;
}

#[tokio::test]
async fn scan_by_prefix_with_limit() {
    let server = Server::start(Fake::default()).await;
    let mut client = connect(&server.socket).await.unwrap();
    for key in ["a/3", "a/1", "b/1", "a/2", "a"] {
        client.put(put(key, key.as_bytes())).await.unwrap();
    }
    let scan = |prefix: &str, limit| ScanRequest {
        prefix: prefix.into(),
        limit,
    };
    let keys = |entries: Vec<Entry>| entries.into_iter().map(|e| e.key).collect::<Vec<_>>();

    let two = client.scan(scan("a/", 2)).await.unwrap().into_inner();
    assert_eq!(keys(two.entries), ["a/1", "a/2"]);
    let all = client.scan(scan("a/", 0)).await.unwrap().into_inner();
    assert_eq!(keys(all.entries), ["a/1", "a/2", "a/3"]);
    let none = client.scan(scan("c/", 10)).await.unwrap().into_inner();
    assert!(none.entries.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn watch_receives_changes_made_after_it_started() {
    let server = Server::start(Fake::default()).await;
    let mut client = connect(&server.socket).await.unwrap();
    client.put(put("w/before", b"old")).await.unwrap();

    let mut changes = client
        .watch(WatchRequest {
            pattern: "w/".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Another connection writes: the watch sees writes from anyone.
    let mut writer = connect(&server.socket).await.unwrap();
    writer.put(put("other/x", b"not watched")).await.unwrap();
    writer.put(put("w/after", b"new")).await.unwrap();
    writer
        .delete(DeleteRequest {
            key: "w/after".into(),
        })
        .await
        .unwrap();

    let first = within("first change", changes.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.key, "w/after");
    assert_eq!(first.value, b"new");
    assert!(!first.deleted && first.current);
    assert_eq!((first.origin, first.origin_seq), (NODE_ID, 3));
    let second = within("second change", changes.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.key, "w/after");
    assert!(second.deleted && second.value.is_empty());
    assert_eq!(second.origin_seq, 4);
    server.shutdown().await;
}

#[tokio::test]
async fn a_watch_whose_client_goes_away_is_released() {
    let server = Server::start(Fake::default()).await;
    let mut client = connect(&server.socket).await.unwrap();
    let changes = client
        .watch(WatchRequest {
            pattern: "k".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.backend.open_watches(), 1);
    drop(changes);
    drop(client);
    // The server drops the backend's receiver: its sender sees the watch closed.
    let backend = server.backend.clone();
    wait_for(|| backend.open_watches() == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_watches() {
    let server = Server::start(Fake::default()).await;
    let mut client = connect(&server.socket).await.unwrap();
    let mut changes = client
        .watch(WatchRequest {
            pattern: "k".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let backend = server.backend.clone();
    // Returns only once every connection has closed: the watch must not hold it open.
    server.shutdown().await;
    let end = within("the watch's end", changes.message()).await;
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "the node is shutting down");
    assert_eq!(backend.open_watches(), 0);
}

#[tokio::test]
async fn errors_reach_the_client_verbatim() {
    let server = Server::start(Fake::default()).await;
    let mut client = connect(&server.socket).await.unwrap();
    let key = "k".repeat(70_000);
    let status = client.put(put(&key, b"v")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "key too large: 70000 bytes, at most 4096");
    server.shutdown().await;

    let router = Server::start(Fake {
        router: true,
        ..Fake::default()
    })
    .await;
    let mut client = connect(&router.socket).await.unwrap();
    let status = client
        .get(GetRequest { key: "k".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "this node is a router: routers hold no replica"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn connecting_to_a_missing_socket_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("canopy.sock");
    let err = connect(&socket).await.unwrap_err();
    assert!(matches!(err, ConnectError::NoSocket { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "no node API socket at {} (is `canopy run` running a client node with this config?)",
            socket.display()
        )
    );
}

#[tokio::test]
async fn connecting_to_a_stale_socket_says_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("canopy.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let err = connect(&socket).await.unwrap_err();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("refuses connections"), "{err}");

    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let err = connect(&file).await.unwrap_err();
    assert!(matches!(err, ConnectError::NotASocket { .. }), "{err:?}");
}

#[tokio::test]
async fn socket_is_private_and_removed_after_shutdown() {
    let server = Server::start(Fake::default()).await;
    let mode = std::fs::symlink_metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(server.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        dir_mode & 0o777,
        0o700,
        "created directory mode {dir_mode:o}"
    );
    // An idle connection must not hold the shutdown up.
    let _idle = connect(&server.socket).await.unwrap();
    let socket = server.shutdown().await;
    assert!(!socket.exists(), "{} left behind", socket.display());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    // Stale: bound by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let first = tokio::spawn(serve_at(socket.clone(), Arc::new(Fake::default()), async {
        let _ = stopped.await;
    }));
    wait_for(|| {
        std::fs::symlink_metadata(&socket).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600)
    })
    .await;
    let mut client = connect(&socket).await.unwrap();
    client.put(put("k", b"v")).await.unwrap();

    // Live: a second server must leave it alone.
    let second = serve(&socket, Arc::new(Fake::default()), std::future::pending()).await;
    assert!(
        matches!(second, Err(ServeError::InUse { .. })),
        "{second:?}"
    );
    client.get(GetRequest { key: "k".into() }).await.unwrap();

    let _ = stop.send(());
    within("serve's return", first).await.unwrap().unwrap();
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("important.txt");
    std::fs::write(path, b"keep me").unwrap();
    let result = serve(path, Arc::new(Fake::default()), std::future::pending()).await;
    assert!(
        matches!(result, Err(ServeError::NotASocket { .. })),
        "{result:?}"
    );
    assert_eq!(std::fs::read(path).unwrap(), b"keep me");
}
