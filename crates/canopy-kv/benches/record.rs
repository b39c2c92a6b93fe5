//! Per-record cost of seal + sign + verify + open at 64 B, 1 KiB and 16 KiB, beside the raw
//! AES-256-GCM seal + open and the raw Ed25519 sign + verify of the same certificate key, so the
//! docs can show what the record format adds over its primitives.

use std::hint::black_box;

use bytes::Bytes;
use canopy_kv::record::{decode_header, open_body, seal_and_sign, verify, RecordDraft};
use canopy_kv::{
    cert_digest, seal, tag_of, verify_signature, Credentials, GroupKeys, SignatureAlgorithm,
    Signer, SystemEntropy,
};
use canopy_kv::{Replica, ReplicaConfig};
use canopy_net::{default_validity, Authority, CertRole, CertificateAuthority, Identity};
use canopy_proto::v1::RecordBody;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

struct Creds(Authority, u64);

impl Credentials for Creds {
    fn node_id(&self) -> u64 {
        self.1
    }
    fn certificate(&self) -> &[u8] {
        self.0.certificate()
    }
    fn sign(&self, m: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign(m).map_err(|e| e.to_string())
    }
    fn check_certificate(&self, der: &[u8]) -> Result<Signer, String> {
        let c = self.0.check_certificate(der).map_err(|e| e.to_string())?;
        Ok(Signer {
            node_id: c.identity.node_id,
            is_client: c.identity.role == CertRole::Client,
            algorithm: SignatureAlgorithm::Ed25519,
            public_key: c.public_key,
        })
    }
}

fn creds() -> Creds {
    let ca = CertificateAuthority::generate("bench").expect("ca");
    creds_of(&ca, 1)
}

fn creds_of(ca: &CertificateAuthority, node_id: u64) -> Creds {
    let identity = Identity {
        cluster: "bench".into(),
        node_id,
        role: CertRole::Client,
        region: "local".into(),
    };
    let (from, until) = default_validity();
    let issued = ca.issue(&identity, from, until).expect("issue");
    let c = canopy_net::Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem)
        .expect("credentials");
    Creds(Authority::new(&c).expect("authority"), node_id)
}

fn benches(c: &mut Criterion) {
    let creds = creds();
    let signer = creds
        .check_certificate(creds.certificate())
        .expect("checked");
    let keys = GroupKeys::from_parts([7; 32], [(1, [9; 32])]);
    let rng = SystemEntropy::new();
    let digest = cert_digest(creds.certificate());
    let sizes = [64usize, 1024, 16 * 1024];

    let mut g = c.benchmark_group("record_seal_sign_verify_open");
    for size in sizes {
        g.throughput(Throughput::Bytes(size as u64));
        let value = Bytes::from(vec![0xab; size]);
        g.bench_with_input(BenchmarkId::from_parameter(size), &value, |b, value| {
            b.iter(|| {
                let draft = RecordDraft {
                    origin: 1,
                    key_tag: tag_of(&keys, "bench/key"),
                    origin_seq: 7,
                    tag_seq: 7,
                    prev_hash: &[3; 32],
                    body: RecordBody {
                        key: "bench/key".into(),
                        value: value.clone(),
                        deleted: false,
                        hlc: 1 << 16,
                    },
                    signer_digest: digest,
                    attach_certificate: false,
                };
                let (rec, _) = seal_and_sign(&draft, &keys, &creds, &rng).expect("seal");
                let header = decode_header(&rec).expect("header");
                assert!(verify(&rec, &signer, &creds));
                black_box(open_body(&header, &keys).expect("open"))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("raw_aes256gcm_seal_open");
    for size in sizes {
        g.throughput(Throughput::Bytes(size as u64));
        let plain = vec![0xab; size];
        g.bench_with_input(BenchmarkId::from_parameter(size), &plain, |b, plain| {
            b.iter(|| {
                let sealed = seal::seal(&[9; 32], [1; 12], b"aad", plain).expect("seal");
                black_box(seal::open(&[9; 32], &[1; 12], b"aad", &sealed).expect("open"))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("raw_ed25519_sign_verify");
    let message = vec![0xcd; 200]; // about a record header
    g.bench_function("header_200B", |b| {
        b.iter(|| {
            let sig = creds.sign(&message).expect("sign");
            black_box(verify_signature(&signer, &message, &sig))
        })
    });
    g.finish();
}

/// What a receiving replica spends per record on a live tree: decode, verify, open, store
/// (one sled transaction), merge. The writer's records are made outside the measurement.
fn receive(c: &mut Criterion) {
    let ca = CertificateAuthority::generate("bench").expect("ca");
    let keys = GroupKeys::from_parts([7; 32], [(1, [9; 32])]);
    let dir = tempfile::tempdir().expect("temp dir");
    let open = |name: &str, id: u64| {
        let mut config = ReplicaConfig::new(|id| id ^ 0x5555);
        config.flush_each_write = false;
        Replica::open(
            &dir.path().join(name),
            config,
            Arc::new(creds_of(&ca, id)),
            keys.clone(),
        )
        .expect("replica")
    };
    let (mut writer, mut reader) = (open("writer", 1), open("reader", 2));
    reader.subscribe("bench/", NOW).expect("subscribe");
    let tag = tag_of(&keys, "bench/key");
    let mut g = c.benchmark_group("replica_receive");
    for size in [64usize, 1024, 16 * 1024] {
        g.throughput(Throughput::Bytes(size as u64));
        let value = Bytes::from(vec![0xab; size]);
        let mut n = 0u64;
        g.bench_with_input(BenchmarkId::from_parameter(size), &value, |b, value| {
            b.iter_batched(
                || {
                    n += 1;
                    let key = format!("bench/key-{}", n % 64);
                    let written = writer.put(&key, value.clone(), NOW).expect("put");
                    let record = written.publishes.last().expect("a record").payload.clone();
                    record
                },
                |payload| black_box(reader.on_multicast(1, tag, &payload, NOW)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    let counters = reader.counters();
    assert_eq!(counters.rejected(), 0, "{counters:?}");
}

const NOW: u64 = 1_800_000_000_000;

criterion_group! {
    name = record;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches, receive
}
criterion_main!(record);
