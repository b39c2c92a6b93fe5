//! `canopy certs`: every subcommand's effect on the directory, and every operator mistake as
//! one clear line and a non-zero exit.

mod common;

use std::path::Path;
use std::process::Output;

use canopy_net::{parse_serial, pem_certificates, CertificateInfo, RevocationList};
use common::canopy;
use rustls::pki_types::CertificateDer;

fn certs(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = canopy();
    cmd.arg("certs").arg(args[0]).arg("--dir").arg(dir);
    cmd.args(&args[1..]);
    cmd.output().unwrap()
}

fn certs_ok(dir: &Path, args: &[&str]) -> String {
    let out = certs(dir, args);
    assert!(
        out.status.success(),
        "certs {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a subcommand that must fail with exit 1 and a one-line error; returns that line.
fn certs_err(dir: &Path, args: &[&str]) -> String {
    let out = certs(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(out.status.code(), Some(1), "certs {args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "certs {args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn init(dir: &Path) {
    certs_ok(dir, &["init", "--cluster", "lab"]);
}

fn issue(dir: &Path, id: u64, role: &str, region: &str, extra: &[&str]) -> Output {
    let id = id.to_string();
    let mut args = vec!["issue", "--id", &id, "--role", role, "--region", region];
    args.extend_from_slice(extra);
    certs(dir, &args)
}

fn serial_of(dir: &Path, id: u64) -> Vec<u8> {
    let pem = std::fs::read_to_string(dir.join(format!("node-{id}.pem"))).unwrap();
    let info = CertificateInfo::from_pem(&pem).unwrap().remove(0);
    parse_serial(&info.serial_hex()).unwrap()
}

fn roots(dir: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    pem_certificates(&pem)
        .unwrap()
        .into_iter()
        .map(CertificateDer::from)
        .collect()
}

/// The lists in `crl.pem`, each checked against `ca.pem`.
fn crls(dir: &Path) -> Vec<RevocationList> {
    let pem = std::fs::read_to_string(dir.join("crl.pem")).unwrap();
    let lists = RevocationList::from_pem(&pem).unwrap();
    let roots = roots(dir);
    for list in &lists {
        list.verify(&roots).unwrap();
    }
    lists
}

fn revoked(dir: &Path, serial: &[u8]) -> bool {
    crls(dir).iter().any(|l| l.revokes(l.issuer(), serial))
}

#[test]
fn init_writes_a_cluster_with_private_keys_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    init(&dir);
    assert!(issue(&dir, 1, "root-candidate", "eu", &[]).status.success());
    let ignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*.key"), "{ignore}");
    #[cfg(unix)]
    for key in ["ca.key", "node-1.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // An empty, signed CRL from the start, so nodes can point [tls] crl at it at once.
    let lists = crls(&dir);
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].revoked_count(), 0);
    // A second init would orphan every certificate.
    let line = certs_err(&dir, &["init", "--cluster", "lab"]);
    assert!(line.contains("already holds a CA"), "{line}");
}

#[test]
fn issue_refuses_an_id_held_by_another_role_or_region_unless_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    init(&dir);
    assert!(issue(&dir, 7, "router", "eu", &[]).status.success());
    let first = serial_of(&dir, 7);
    for (role, region) in [("client", "eu"), ("router", "us"), ("router", "eu")] {
        let line = certs_err(
            &dir,
            &["issue", "--id", "7", "--role", role, "--region", region],
        );
        assert!(line.contains("node 7"), "{line}");
        assert!(line.contains("--replace"), "{line}");
    }
    assert_eq!(
        serial_of(&dir, 7),
        first,
        "a refused issue changed the files"
    );
    let out = issue(&dir, 7, "client", "us", &["--replace"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(serial_of(&dir, 7), first);
    let list: serde_json::Value =
        serde_json::from_str(&certs_ok(&dir, &["list", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["role"], "client");
    assert_eq!(rows[0]["region"], "us");
}

#[test]
fn rotate_keeps_the_identity_with_a_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    init(&dir);
    assert!(issue(&dir, 3, "router", "eu", &[]).status.success());
    let old_key = std::fs::read(dir.join("node-3.key")).unwrap();
    let old_serial = serial_of(&dir, 3);
    certs_ok(&dir, &["rotate", "--id", "3"]);
    assert_ne!(std::fs::read(dir.join("node-3.key")).unwrap(), old_key);
    assert_ne!(serial_of(&dir, 3), old_serial);
    let creds = canopy_net::Credentials::load(
        &dir.join("ca.pem"),
        &dir.join("node-3.pem"),
        &dir.join("node-3.key"),
    )
    .unwrap();
    let identity = creds.identity();
    assert_eq!(identity.cluster, "lab");
    assert_eq!(identity.region, "eu");
    assert_eq!(identity.role, canopy_net::CertRole::Router);
    // The superseded certificate is still on record, so it can be revoked by serial.
    let all: serde_json::Value =
        serde_json::from_str(&certs_ok(&dir, &["list", "--json", "--all"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let old_hex = canopy_net::hex(&old_serial);
    certs_ok(&dir, &["revoke", "--serial", &old_hex]);
    assert!(revoked(&dir, &old_serial));
    assert!(!revoked(&dir, &serial_of(&dir, 3)));
    // inspect: by id (the current one, and the revoked earlier one), and any file.
    let new_hex = canopy_net::hex(&serial_of(&dir, 3));
    let shown = certs_ok(&dir, &["inspect", "--id", "3"]);
    assert!(
        shown.contains(&new_hex) && shown.contains("router"),
        "{shown}"
    );
    assert!(shown.contains(&format!("serial {old_hex}")), "{shown}");
    let shown = certs_ok(&dir, &["inspect", "--serial", &old_hex]);
    assert!(shown.contains("revoked"), "{shown}");
    let file = dir.join("node-3.pem");
    let shown = certs_ok(&dir, &["inspect", "--file", file.to_str().unwrap()]);
    assert!(shown.contains("canopy://lab/router/3?region=eu"), "{shown}");
    assert!(shown.contains("node 3's certificate, valid"), "{shown}");
}

#[test]
fn revoke_signs_a_list_and_refuses_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    init(&dir);
    assert!(issue(&dir, 4, "router", "eu", &[]).status.success());
    assert!(issue(&dir, 5, "router", "eu", &[]).status.success());
    certs_ok(&dir, &["revoke", "--id", "4", "--reason", "key-compromise"]);
    assert!(revoked(&dir, &serial_of(&dir, 4)));
    assert!(!revoked(&dir, &serial_of(&dir, 5)));
    let line = certs_err(&dir, &["revoke", "--id", "4"]);
    assert!(line.contains("already revoked"), "{line}");
    let list = certs_ok(&dir, &["list"]);
    let row = list
        .lines()
        .find(|l| l.trim_start().starts_with("4 "))
        .unwrap();
    assert!(row.contains("revoked"), "{list}");
    // A revoked id can be issued again without --replace.
    assert!(issue(&dir, 4, "router", "eu", &[]).status.success());
    assert!(!revoked(&dir, &serial_of(&dir, 4)));
}

#[test]
fn ca_rollover_trusts_both_then_only_the_new_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    init(&dir);
    for id in [1, 2] {
        assert!(issue(&dir, id, "router", "eu", &[]).status.success());
    }
    let line = certs_err(&dir, &["finish-ca-rotation"]);
    assert!(line.contains("no CA rollover in progress"), "{line}");
    certs_ok(&dir, &["revoke", "--id", "2"]);
    certs_ok(&dir, &["rotate-ca"]);
    assert_eq!(roots(&dir).len(), 2);
    // One list per CA, and the old CA's still names the revoked certificate.
    assert_eq!(crls(&dir).len(), 2);
    assert!(revoked(&dir, &serial_of(&dir, 2)));
    let line = certs_err(&dir, &["rotate-ca"]);
    assert!(line.contains("already in progress"), "{line}");
    let line = certs_err(&dir, &["finish-ca-rotation"]);
    assert!(line.contains("node(s) 1 still hold"), "{line}");
    certs_ok(&dir, &["rotate", "--id", "1"]);
    certs_ok(&dir, &["finish-ca-rotation"]);
    let roots = roots(&dir);
    assert_eq!(roots.len(), 1);
    assert_eq!(crls(&dir).len(), 1);
    // Node 1's new certificate chains to the one CA left.
    canopy_net::Credentials::load(
        &dir.join("ca.pem"),
        &dir.join("node-1.pem"),
        &dir.join("node-1.key"),
    )
    .unwrap()
    .verify()
    .unwrap();
    let list: serde_json::Value =
        serde_json::from_str(&certs_ok(&dir, &["list", "--json"])).unwrap();
    let row = &list.as_array().unwrap()[0];
    assert_eq!(row["ca_generation"], 2, "{list}");
}

#[test]
fn list_check_exits_2_for_an_expiring_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    init(&dir);
    assert!(issue(&dir, 1, "router", "eu", &[]).status.success());
    assert!(issue(&dir, 2, "client", "eu", &["--days", "5"])
        .status
        .success());
    let out = certs(&dir, &["list", "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("node 2"), "{stderr}");
    assert!(!stderr.contains("node 1"), "{stderr}");
    // A narrower window, or no --check, passes.
    assert_eq!(
        certs(&dir, &["list", "--check", "--warn-days", "2"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(certs(&dir, &["list"]).status.code(), Some(0));
    // Rotating the expiring certificate clears the warning.
    certs_ok(&dir, &["rotate", "--id", "2"]);
    assert_eq!(certs(&dir, &["list", "--check"]).status.code(), Some(0));
}

#[test]
fn every_mistake_is_one_line_and_a_non_zero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    // Missing CA.
    for args in [
        &["issue", "--id", "1", "--role", "router", "--region", "eu"][..],
        &["rotate", "--id", "1"],
        &["revoke", "--id", "1"],
        &["rotate-ca"],
        &["list"],
    ] {
        let line = certs_err(&empty, args);
        assert!(line.contains("no CA in"), "{args:?}: {line}");
    }
    // A directory that is not a cluster's: a CA file without a registry, or a broken one.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("ca.pem"), "not a certificate").unwrap();
    let line = certs_err(&foreign, &["list"]);
    assert!(line.contains("not a canopy cluster's"), "{line}");
    std::fs::write(foreign.join("cluster.toml"), "format = 1\n[oops\n").unwrap();
    let line = certs_err(&foreign, &["list"]);
    assert!(line.contains("not a canopy cluster's"), "{line}");

    let dir = tmp.path().join("certs");
    init(&dir);
    assert!(issue(&dir, 1, "router", "eu", &[]).status.success());
    // Unknown id.
    for args in [
        &["rotate", "--id", "9"][..],
        &["revoke", "--id", "9"],
        &["inspect", "--id", "9"],
    ] {
        let line = certs_err(&dir, args);
        assert!(line.contains("node 9"), "{args:?}: {line}");
    }
    let line = certs_err(&dir, &["revoke", "--serial", "abcdef"]);
    assert!(line.contains("no certificate with serial abcdef"), "{line}");
    // Another cluster's directory.
    let line = certs_err(&dir, &["list", "--cluster", "prod"]);
    assert!(line.contains("belongs to cluster \"lab\""), "{line}");
    // Roles are a closed set: clap names the valid ones.
    let out = issue(&dir, 2, "superuser", "eu", &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'superuser'"), "{stderr}");
    assert!(stderr.contains("root-candidate"), "{stderr}");
    // --push without an admin certificate changes nothing.
    let out = certs(&dir, &["revoke", "--id", "1", "--push"]);
    assert_ne!(out.status.code(), Some(0));
    let line = certs_err(
        &dir,
        &[
            "revoke",
            "--id",
            "1",
            "--push",
            "--admin-id",
            "50",
            "--candidate",
            "1=127.0.0.1:1",
        ],
    );
    assert!(line.contains("node-50"), "{line}");
    assert!(!revoked(&dir, &serial_of(&dir, 1)));
    // Zero days.
    let line = certs_err(
        &dir,
        &[
            "issue", "--id", "3", "--role", "client", "--region", "eu", "--days", "0",
        ],
    );
    assert!(line.contains("--days"), "{line}");
    // The CA's key is gone.
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    let line = certs_err(
        &dir,
        &["issue", "--id", "3", "--role", "client", "--region", "eu"],
    );
    assert!(
        line.contains("no CA in") || line.contains("ca.key"),
        "{line}"
    );
}

/// FINDING: `canopy certs` takes no lock on the directory. Revocations run in parallel (a
/// script revoking a batch of compromised nodes with `&`) each read cluster.toml, bump the
/// same CRL number and rewrite crl.pem and cluster.toml: the last writer wins, the others'
/// revocations vanish although each command printed "revoked", and several different lists
/// carry the same CRL number (nodes keep whichever they saw first).
#[test]
fn concurrent_revokes_lose_no_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    init(&dir);
    let ids: Vec<u64> = (10..18).collect();
    for &id in &ids {
        assert!(issue(&dir, id, "router", "eu", &[]).status.success());
    }
    let children: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut cmd = common::canopy();
            cmd.arg("certs")
                .arg("revoke")
                .arg("--dir")
                .arg(&dir)
                .arg("--id")
                .arg(id.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let succeeded = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap().status.success())
        .filter(|ok| *ok)
        .count();
    let missing: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| !revoked(&dir, &serial_of(&dir, id)))
        .collect();
    assert!(
        missing.is_empty(),
        "{succeeded} of {} revokes reported success, but crl.pem does not revoke {missing:?}",
        ids.len()
    );
}
