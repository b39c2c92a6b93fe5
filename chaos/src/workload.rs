//! The write load, through each client's application API: writers put unique keys at a
//! steady rate and remember what was acknowledged; every client watches `w/` and notes when
//! each write reached it. After the run, every live replica is read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_api::v1::{PutRequest, ScanRequest, WatchRequest};
use canopy_api::{Channel, KvClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

/// Entries a scan returns at most (the API's own bound).
const SCAN_LIMIT: u32 = 10_000;

/// A write the writer's node acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub value: Vec<u8>,
    /// When it was sent, since the run started.
    pub at: Duration,
}

/// What the load saw, shared with its tasks.
#[derive(Debug, Default)]
pub struct Observed {
    pub acked: Vec<Acked>,
    pub failed_puts: u64,
    /// Per watching client, per key: when each change of it arrived (since the start).
    pub seen: HashMap<u64, HashMap<String, Vec<Duration>>>,
}

pub struct Load {
    pub observed: Arc<Mutex<Observed>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `writers` writing at `rate` each, and a watcher on every client.
    pub fn start(
        started: Instant,
        writers: &[(u64, PathBuf)],
        readers: &[(u64, PathBuf)],
        rate: f64,
    ) -> Load {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for (id, socket) in readers {
            tasks.push(tokio::spawn(watcher(
                *id,
                socket.clone(),
                started,
                observed.clone(),
                stopped.clone(),
            )));
        }
        for (id, socket) in writers {
            tasks.push(tokio::spawn(writer(
                *id,
                socket.clone(),
                rate,
                started,
                observed.clone(),
                stopped.clone(),
            )));
        }
        Load {
            observed,
            stop,
            tasks,
        }
    }

    /// Stops the writers; watchers keep watching until `finish`.
    pub fn stop_writing(&self) {
        let _ = self.stop.send(true);
    }

    pub fn finish(self) -> Arc<Mutex<Observed>> {
        for task in &self.tasks {
            task.abort();
        }
        self.observed
    }
}

async fn client(socket: &Path) -> Option<KvClient<Channel>> {
    canopy_api::connect(socket).await.ok()
}

async fn writer(
    id: u64,
    socket: PathBuf,
    rate: f64,
    started: Instant,
    observed: Arc<Mutex<Observed>>,
    stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut api = None;
    let mut n = 0u64;
    while !*stopped.borrow() {
        ticks.tick().await;
        if api.is_none() {
            api = client(&socket).await;
        }
        let Some(kv) = api.as_mut() else {
            continue;
        };
        n += 1;
        let key = format!("w/{id}/{n:08}");
        let value = format!("{id}:{n}").into_bytes();
        if !put_owed(kv, key, value, started, &observed).await {
            api = None;
        }
    }
}

/// Puts `key`; an acknowledged put joins the owed writes, a failed or timed-out one is
/// counted. Returns whether it was acknowledged.
async fn put_owed(
    kv: &mut KvClient<Channel>,
    key: String,
    value: Vec<u8>,
    started: Instant,
    observed: &Mutex<Observed>,
) -> bool {
    let sent = started.elapsed();
    let put = PutRequest {
        key: key.clone(),
        value: value.clone(),
    };
    let acked = matches!(
        tokio::time::timeout(Duration::from_secs(5), kv.put(put)).await,
        Ok(Ok(_))
    );
    let mut seen = observed.lock().unwrap_or_else(|p| p.into_inner());
    if acked {
        seen.acked.push(Acked {
            key,
            value,
            at: sent,
        });
    } else {
        seen.failed_puts += 1;
    }
    acked
}

async fn watcher(
    id: u64,
    socket: PathBuf,
    started: Instant,
    observed: Arc<Mutex<Observed>>,
    stopped: watch::Receiver<bool>,
) {
    let _ = stopped;
    loop {
        if let Some(mut kv) = client(&socket).await {
            let request = WatchRequest {
                pattern: "w/".into(),
            };
            if let Ok(response) = kv.watch(request).await {
                let mut changes = response.into_inner();
                while let Some(Ok(change)) = changes.next().await {
                    let mut seen = observed.lock().unwrap_or_else(|p| p.into_inner());
                    seen.seen
                        .entry(id)
                        .or_default()
                        .entry(change.key)
                        .or_default()
                        .push(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts as fast as `socket`'s node answers, `concurrency` at a time, for `duration`; the
/// acknowledged writes join the owed ones.
pub async fn flood(
    id: u64,
    socket: &Path,
    duration: Duration,
    started: Instant,
    observed: Arc<Mutex<Observed>>,
) -> u64 {
    const CONCURRENCY: u64 = 8;
    let until = Instant::now() + duration;
    let mut tasks = Vec::new();
    for lane in 0..CONCURRENCY {
        let socket = socket.to_path_buf();
        let observed = observed.clone();
        tasks.push(tokio::spawn(async move {
            let Some(mut kv) = client(&socket).await else {
                return 0u64;
            };
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let key = format!("w/{id}/flood-{lane}-{n:08}");
                let value = format!("{id}:flood:{lane}:{n}").into_bytes();
                put_owed(&mut kv, key, value, started, &observed).await;
            }
            n
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap_or(0);
    }
    sent
}

/// Every `w/` entry of the replica behind `socket` (key to value), or why not.
pub async fn read_replica(
    socket: &Path,
    acked: &[Acked],
) -> Result<HashMap<String, Vec<u8>>, String> {
    let mut kv = client(socket).await.ok_or("the API did not answer")?;
    let scan = ScanRequest {
        prefix: "w/".into(),
        limit: SCAN_LIMIT,
    };
    let entries = kv
        .scan(scan)
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .entries;
    if entries.len() < SCAN_LIMIT as usize {
        return Ok(entries
            .into_iter()
            .map(|e| (e.key, e.value.to_vec()))
            .collect());
    }
    // Too many for one scan: read each owed key.
    let mut found = HashMap::new();
    for write in acked {
        let get = canopy_api::v1::GetRequest {
            key: write.key.clone(),
        };
        let reply = kv.get(get).await.map_err(|e| e.to_string())?.into_inner();
        if let Some(entry) = reply.entry.filter(|_| reply.found) {
            found.insert(entry.key, entry.value.to_vec());
        }
    }
    Ok(found)
}
