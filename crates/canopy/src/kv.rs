//! `canopy put/get/del/scan/watch`: the key-value replica of a running client node, through
//! its local API socket (`canopy-api`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use canopy_api::tonic::Status;
use canopy_api::v1::{
    DeleteRequest, Entry, GetRequest, PutRequest, ScanRequest, StatusRequest, WatchRequest,
};
use canopy_api::{Channel, KvClient};
use clap::{ArgGroup, Args};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// How to reach the node: its API socket, named directly or through its configuration.
#[derive(Args)]
#[command(group(ArgGroup::new("node").required(true).args(["socket", "config"])))]
pub struct NodeArgs {
    /// The node's API socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The node's configuration file: the socket is its `[api] socket` key (default
    /// `api.sock` next to the file).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Write a value.
#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["value", "value_file"])))]
pub struct PutArgs {
    #[command(flatten)]
    node: NodeArgs,
    key: String,
    /// The value; `-` reads it from standard input.
    value: Option<String>,
    /// Read the value from a file.
    #[arg(long, value_name = "PATH")]
    value_file: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Read a key.
#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    node: NodeArgs,
    key: String,
    /// Print one JSON object (the entry) instead of the value.
    #[arg(long)]
    json: bool,
}

/// Delete a key.
#[derive(Args)]
pub struct DelArgs {
    #[command(flatten)]
    node: NodeArgs,
    key: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// List the keys under a prefix.
#[derive(Args)]
pub struct ScanArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Key prefix; "" lists every key.
    prefix: String,
    /// At most this many entries (default: the node's limit).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Print one JSON object per entry.
    #[arg(long)]
    json: bool,
}

/// A running node's id, role, place in the tree and counters (any role).
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    node: NodeArgs,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let reply = client
        .status(StatusRequest {})
        .await
        .map_err(call_error)?
        .into_inner();
    let mut document: Value = serde_json::from_str(&reply.status_json)
        .with_context(|| "the node's status is not JSON")?;
    if let Value::Object(fields) = &mut document {
        fields.insert("node_id".into(), json!(reply.node_id));
        fields.insert("role".into(), json!(reply.role));
    }
    println!("{document:#}");
    Ok(ExitCode::SUCCESS)
}

/// Follow the changes to a key, or to every key under a prefix ending in '/'.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// An exact key, or a prefix ending in '/'.
    pattern: String,
    /// Exit after this many changes (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print one JSON object per change.
    #[arg(long)]
    json: bool,
}

/// The part of a node's configuration file this command reads; other keys are ignored.
#[derive(Deserialize)]
struct ConfigFile {
    api: Option<ApiTable>,
}

#[derive(Deserialize)]
struct ApiTable {
    socket: Option<PathBuf>,
}

impl NodeArgs {
    /// The socket path: `--socket`, or `[api] socket` from `--config` (relative to the file,
    /// like every path in it).
    fn socket(&self) -> anyhow::Result<PathBuf> {
        match (&self.socket, &self.config) {
            (Some(socket), _) => Ok(socket.clone()),
            (None, Some(config)) => socket_from_config(config),
            (None, None) => bail!("name the node's API socket with --socket PATH or --config FILE"),
        }
    }

    async fn connect(&self) -> anyhow::Result<KvClient<Channel>> {
        let socket = self.socket()?;
        Ok(canopy_api::connect(&socket).await?)
    }
}

fn socket_from_config(file: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow!("{}: cannot read: {e}", file.display()))?;
    let config: ConfigFile = toml::from_str(&text).map_err(|e| {
        // One line: where, then what (toml's own text draws the line under it).
        let place = e.span().map(|span| {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!("line {line}, column {column}: ")
        });
        anyhow!(
            "{}: {}{}",
            file.display(),
            place.unwrap_or_default(),
            e.message().trim_end()
        )
    })?;
    // The node's own default when the file names no socket.
    let socket = config
        .api
        .and_then(|api| api.socket)
        .unwrap_or_else(canopy_node::default_api_socket);
    Ok(match file.parent() {
        Some(dir) if socket.is_relative() => dir.join(socket),
        _ => socket,
    })
}

/// The error for a failed call: the node's message as it sent it, or what went wrong with
/// the connection (a status made on this side carries its cause as its source).
fn call_error(status: Status) -> anyhow::Error {
    use std::error::Error;
    if status.source().is_some() {
        anyhow!("lost the connection to the node: {}", status.message())
    } else if status.message().is_empty() {
        anyhow!("the node answered {:?}", status.code())
    } else {
        anyhow!("{}", status.message())
    }
}

pub async fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    let value = match (&args.value, &args.value_file) {
        (_, Some(path)) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the value from standard input")?;
            buf
        }
        (Some(v), None) => v.clone().into_bytes(),
        (None, None) => bail!("give the value, `-` for standard input, or --value-file PATH"),
    };
    let mut client = args.node.connect().await?;
    let reply = client
        .put(PutRequest {
            key: args.key.clone(),
            value,
        })
        .await
        .map_err(call_error)?
        .into_inner();
    print_write(
        args.json,
        "put",
        &args.key,
        (reply.origin, reply.origin_seq, reply.hlc),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn del(args: DelArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let reply = client
        .delete(DeleteRequest {
            key: args.key.clone(),
        })
        .await
        .map_err(call_error)?
        .into_inner();
    print_write(
        args.json,
        "deleted",
        &args.key,
        (reply.origin, reply.origin_seq, reply.hlc),
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints an acknowledged write: `(origin, origin_seq, hlc)` name the record it became.
fn print_write(json: bool, verb: &str, key: &str, (origin, origin_seq, hlc): (u64, u64, u64)) {
    if json {
        let deleted = verb == "deleted";
        println!(
            "{}",
            json!({"key": key, "deleted": deleted, "origin": origin,
                   "origin_seq": origin_seq, "hlc": hlc})
        );
    } else {
        println!("{verb} {key} (origin {origin}, seq {origin_seq})");
    }
}

pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let reply = client
        .get(GetRequest {
            key: args.key.clone(),
        })
        .await
        .map_err(call_error)?
        .into_inner();
    let entry = match reply.entry {
        Some(entry) if reply.found => entry,
        _ => {
            eprintln!("not found: {}", args.key);
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        println!("{}", entry_json(&entry));
    } else {
        match std::str::from_utf8(&entry.value) {
            Ok(text) => println!("{text}"),
            Err(_) => {
                eprintln!(
                    "note: the value is not UTF-8 ({} bytes); printed as hex",
                    entry.value.len()
                );
                println!("{}", hex(&entry.value));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let reply = client
        .scan(ScanRequest {
            prefix: args.prefix.clone(),
            limit: args.limit.unwrap_or(0),
        })
        .await
        .map_err(call_error)?
        .into_inner();
    for entry in &reply.entries {
        if args.json {
            println!("{}", entry_json(entry));
        } else {
            println!("{}={}", entry.key, inline_value(&entry.value));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    if args.count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = args.node.connect().await?;
    let mut changes = client
        .watch(WatchRequest {
            pattern: args.pattern.clone(),
        })
        .await
        .map_err(call_error)?
        .into_inner();
    let mut seen = 0u64;
    loop {
        let Some(change) = changes.message().await.map_err(call_error)? else {
            bail!("the node ended the watch after {seen} changes");
        };
        if args.json {
            let mut fields = Map::new();
            fields.insert("key".into(), json!(change.key));
            fields.insert("deleted".into(), json!(change.deleted));
            if !change.deleted {
                insert_value(&mut fields, &change.value);
            }
            for (name, v) in [
                ("hlc", change.hlc),
                ("origin", change.origin),
                ("origin_seq", change.origin_seq),
            ] {
                fields.insert(name.into(), json!(v));
            }
            fields.insert("current".into(), json!(change.current));
            println!("{}", Value::Object(fields));
        } else if change.deleted {
            println!(
                "{} deleted (origin {}, seq {})",
                change.key, change.origin, change.origin_seq
            );
        } else {
            println!(
                "{}={} (origin {}, seq {})",
                change.key,
                inline_value(&change.value),
                change.origin,
                change.origin_seq
            );
        }
        seen += 1;
        if args.count.is_some_and(|count| seen >= count) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// An entry as one JSON object: `value` if it is UTF-8, `value_hex` otherwise.
fn entry_json(entry: &Entry) -> Value {
    let mut fields = Map::new();
    fields.insert("key".into(), json!(entry.key));
    insert_value(&mut fields, &entry.value);
    fields.insert("hlc".into(), json!(entry.hlc));
    fields.insert("origin".into(), json!(entry.origin));
    fields.insert("origin_seq".into(), json!(entry.origin_seq));
    Value::Object(fields)
}

fn insert_value(fields: &mut Map<String, Value>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => fields.insert("value".into(), json!(text)),
        Err(_) => fields.insert("value_hex".into(), json!(hex(value))),
    };
}

/// A value on one line of output: as it is if it is UTF-8 without control characters,
/// otherwise `0x` and its bytes in hex (use --json to tell the two apart for certain).
fn inline_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => format!("0x{}", hex(value)),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_text_or_hex() {
        assert_eq!(inline_value(b"hello world"), "hello world");
        assert_eq!(inline_value(b"two\nlines"), "0x74776f0a6c696e6573");
        assert_eq!(inline_value(b"\xff\x00"), "0xff00");
        assert_eq!(inline_value(b""), "");
    }

    #[test]
    fn the_socket_comes_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            "listen = \"127.0.0.1:1\"\n[tls]\nca = \"ca.pem\"\n[api]\nsocket = \"run/api.sock\"\n",
        )
        .unwrap();
        assert_eq!(
            socket_from_config(&config).unwrap(),
            dir.path().join("run/api.sock")
        );
        std::fs::write(&config, "[api]\nsocket = \"/abs/api.sock\"\n").unwrap();
        assert_eq!(
            socket_from_config(&config).unwrap(),
            PathBuf::from("/abs/api.sock")
        );

        // No `[api] socket`: the node's default, next to the file.
        std::fs::write(&config, "listen = \"127.0.0.1:1\"\n").unwrap();
        assert_eq!(
            socket_from_config(&config).unwrap(),
            dir.path().join("api.sock")
        );
        std::fs::write(&config, "listen = 1\napi = [\n").unwrap();
        let err = socket_from_config(&config).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(&format!("{}: line 2, column ", config.display())),
            "{err}"
        );
        let err = socket_from_config(&dir.path().join("none.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.toml: cannot read"), "{err}");
    }
}
