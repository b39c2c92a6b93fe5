//! Writes flowing through the tree while credentials change: one client puts keys one after
//! another with `canopy put`, others follow them with `canopy watch`; every acknowledged write
//! must reach every watcher.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{canopy, Running};
use crate::lab::Lab;

type Seen = Arc<Mutex<BTreeSet<String>>>;

pub struct Workload {
    stop: Arc<AtomicBool>,
    writer: JoinHandle<(Vec<String>, Vec<String>)>,
    watchers: BTreeMap<u64, (Running, Seen)>,
}

/// What a workload wrote and what its watchers missed.
pub struct Outcome {
    pub acknowledged: usize,
    pub failed: Vec<String>,
    pub missing: BTreeMap<u64, Vec<String>>,
}

impl Workload {
    /// Starts the watchers, waits until a first write reaches all of them, then writes until
    /// [`Workload::finish`].
    pub fn start(lab: &Lab, writer: u64, watchers: &[u64], tag: &str) -> Workload {
        let watchers: BTreeMap<u64, (Running, Seen)> =
            watchers.iter().map(|&id| (id, watch(lab, id))).collect();
        let config = lab.config_path(writer);
        let probe = format!("orders/{tag}/probe");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !watchers
            .values()
            .all(|(_, seen)| seen.lock().unwrap().contains(&probe))
        {
            assert!(Instant::now() < deadline, "the watchers never saw {probe}");
            let _ = put(&config, &probe);
            std::thread::sleep(Duration::from_millis(300));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, prefix) = (stop.clone(), format!("orders/{tag}/"));
        let writer = std::thread::spawn(move || {
            let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let key = format!("{prefix}{n:05}");
                match put(&config, &key) {
                    Ok(()) => acknowledged.push(key),
                    Err(why) => failed.push(format!("{key}: {why}")),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (acknowledged, failed)
        });
        Workload {
            stop,
            writer,
            watchers,
        }
    }

    /// Stops writing and waits (up to `within`) until every watcher has seen every
    /// acknowledged write.
    pub fn finish(self, within: Duration) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let (acknowledged, failed) = self.writer.join().unwrap();
        let deadline = Instant::now() + within;
        let missing = loop {
            let missing: BTreeMap<u64, Vec<String>> = self
                .watchers
                .iter()
                .map(|(&id, (_, seen))| {
                    let seen = seen.lock().unwrap();
                    let lost = acknowledged
                        .iter()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect::<Vec<_>>();
                    (id, lost)
                })
                .filter(|(_, lost)| !lost.is_empty())
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        Outcome {
            acknowledged: acknowledged.len(),
            failed,
            missing,
        }
    }
}

fn put(config: &std::path::Path, key: &str) -> Result<(), String> {
    let out = canopy()
        .args(["put", "--config", config.to_str().unwrap(), key, "v"])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn watch(lab: &Lab, id: u64) -> (Running, Seen) {
    let mut child = canopy()
        .args([
            "watch",
            "--config",
            lab.config_path(id).to_str().unwrap(),
            "orders/",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen: Seen = Arc::default();
    let (stdout, sink) = (child.stdout.take().unwrap(), seen.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(change) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(key) = change["key"].as_str() {
                    sink.lock().unwrap().insert(key.to_owned());
                }
            }
        }
    });
    (Running(child), seen)
}
