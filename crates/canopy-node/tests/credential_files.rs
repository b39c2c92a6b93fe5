//! Adversarial review: the credential file watcher and a careless operator copying files.

use canopy_net::{
    default_validity, CertRole, CertificateAuthority, Identity, NetConfig, NetEndpoint,
    RevocationList, RevokedSerial,
};
use canopy_node::reload::CredentialFiles;

fn identity(node_id: u64) -> Identity {
    Identity {
        cluster: "lab".into(),
        node_id,
        role: CertRole::Router,
        region: "local".into(),
    }
}

/// FINDING: a `crl.pem` that is empty at the moment the watcher reads it (an operator's
/// `cp`/`scp` truncates the target before writing it; a full disk leaves it empty) loads as
/// "no lists" and is put in force: every revocation that came from the file is lifted until
/// the next poll sees the complete file, and revoked peers may connect meanwhile. A
/// configured CRL file that holds no list (it always holds one per CA once `certs init` wrote
/// it) should count as a file that does not load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_crl_file_does_not_lift_the_revocations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = CertificateAuthority::generate("lab").unwrap();
    let (from, until) = default_validity();
    let own = ca.issue(&identity(1), from, until).unwrap();
    let victim = ca.issue(&identity(7), from, until).unwrap();
    let serial = canopy_net::CertificateInfo::from_pem(&victim.cert_pem).unwrap()[0]
        .serial
        .clone();
    let pem = ca
        .revocation_list(
            3,
            &[RevokedSerial {
                serial,
                revoked_at: time::OffsetDateTime::now_utc(),
                reason: None,
            }],
            time::OffsetDateTime::now_utc() + time::Duration::days(30),
        )
        .unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("node.pem"), &own.cert_pem).unwrap();
    std::fs::write(dir.join("node.key"), &own.key_pem).unwrap();
    std::fs::write(dir.join("crl.pem"), &pem).unwrap();
    let files = CredentialFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
        crl: Some(dir.join("crl.pem")),
    };
    let (creds, lists) = files.load().unwrap();
    let (net, _events) =
        NetEndpoint::bind("127.0.0.1:0".parse().unwrap(), creds, NetConfig::default()).unwrap();
    files.apply(&net).unwrap();
    let in_force = RevocationList::from_pem(&pem).unwrap()[0].der().to_vec();
    assert_eq!(net.revocations(), vec![in_force.clone()]);
    assert_eq!(lists.len(), 1);

    // Mid-copy: the file exists and is empty.
    std::fs::write(dir.join("crl.pem"), "").unwrap();
    let result = files.apply(&net);
    let after = net.revocations();
    net.shutdown().await;
    assert_eq!(
        after,
        vec![in_force],
        "an empty crl.pem lifted the file's revocations (apply: {result:?})"
    );
}
