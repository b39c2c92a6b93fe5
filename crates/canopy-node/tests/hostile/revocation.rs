//! Revocation through the tree: an admin commits a CA-signed list through the root group,
//! every node enforces it (one that was cut off at the time gets it when it rejoins), and a
//! credentialed peer can neither forge a list nor push one as a client.

use std::time::Duration;

use canopy_net::{CertRole, CertificateAuthority, CertificateInfo, RevocationList, RevokedSerial};
use canopy_node::admin::AdminClient;
use canopy_proto::v1::Revocations;
use canopy_proto::{Body, ControlMessage};
use canopy_tree::NodeId;

use crate::support::{serial, Rogue, Tree, SETTLE};

/// A DER list from `ca` revoking `serials`.
fn list(ca: &CertificateAuthority, number: u64, serials: &[Vec<u8>]) -> Vec<u8> {
    let revoked: Vec<RevokedSerial> = serials
        .iter()
        .map(|serial| RevokedSerial {
            serial: serial.clone(),
            revoked_at: time::OffsetDateTime::now_utc(),
            reason: None,
        })
        .collect();
    let next_update = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let pem = ca.revocation_list(number, &revoked, next_update).unwrap();
    RevocationList::from_pem(&pem).unwrap()[0].der().to_vec()
}

fn serial_of(tree: &Tree, id: NodeId) -> Vec<u8> {
    let creds = tree.cluster.node(id).unwrap().handle.credentials();
    CertificateInfo::from_der(&creds.chain()[0]).unwrap().serial
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_revocation_reaches_every_node_and_a_detached_one_when_it_rejoins() {
    let _serial = serial().await;
    let mut tree = Tree::start(1, 2, 3).await;
    let root = tree.root().await;
    let revoked = tree.routers[0].identity.node_id;
    let detached = tree.clients[0].identity.node_id;
    tree.clients[0].handle.set_cut(true);

    let admin = tree.cluster.credentials(9_000, CertRole::Admin).unwrap();
    let mut client = AdminClient::connect(admin, None).unwrap();
    let der = list(tree.cluster.ca(), 1, &[serial_of(&tree, revoked)]);
    let (leader, report) = client
        .revoke(&[(root, tree.address(root))], vec![der.clone()])
        .await
        .unwrap();
    client.close().await;
    assert_eq!(leader, root);
    assert_eq!(report["lists"], 1, "{report}");

    // Everyone still linked to the tree holds the list; the cut-off client does not.
    let holds = |tree: &Tree, id: NodeId| {
        tree.cluster.node(id).unwrap().handle.revocations() == vec![der.clone()]
    };
    let others: Vec<NodeId> = tree
        .routers
        .iter()
        .chain(&tree.clients)
        .map(|n| n.identity.node_id)
        .filter(|&id| id != detached && id != revoked)
        .chain([root])
        .collect();
    wait_until("every linked node holds the list", || {
        others.iter().all(|&id| holds(&tree, id))
    })
    .await;
    assert!(!holds(&tree, detached));

    // The revoked router is cut off: no parent, no children.
    let cut_off = tree.cluster.node(revoked).unwrap().handle.clone();
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let status = cut_off.status().await.unwrap();
        if status.parent.is_none() && status.children.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked router kept its links: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without it, and with the client back, the tree is whole and the client holds the list.
    cut_off.kill().await;
    tree.routers.remove(0);
    tree.clients[0].handle.set_cut(false);
    tree.assert_whole_and_delivering().await;
    assert!(
        holds(&tree, detached),
        "the rejoined client never got the list"
    );
    tree.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_lists_and_lists_from_clients_change_nothing() {
    let _serial = serial().await;
    let mut tree = Tree::start(1, 1, 2).await;
    let root = tree.root().await;
    let router = tree.routers[0].identity.node_id;
    let victim = tree.clients[0].identity.node_id;

    // A router-credentialed insider with a list of its own CA, named like the cluster's.
    let forger_ca = CertificateAuthority::generate(tree.cluster.name()).unwrap();
    let forged = list(&forger_ca, 99, &[serial_of(&tree, victim)]);
    let rogue = Rogue::new(&tree, 7_777, CertRole::Router);
    let message = ControlMessage::new(Body::Revocations(Revocations {
        lists: vec![forged.into()],
    }));
    rogue.send(router, tree.address(router), message.clone());
    rogue.send(root, tree.address(root), message);

    // A client may not push lists at all, even genuine ones: its link is closed.
    let genuine = list(tree.cluster.ca(), 1, &[]);
    let mut rogue_client = Rogue::new(&tree, 7_778, CertRole::Client);
    rogue_client.send(
        router,
        tree.address(router),
        ControlMessage::new(Body::Revocations(Revocations {
            lists: vec![genuine.into()],
        })),
    );
    assert!(
        rogue_client
            .closed_by(router, Duration::from_secs(10))
            .await
            .is_some(),
        "a client pushing revocation lists kept its link"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [root, router, victim] {
        let handle = &tree.cluster.node(id).unwrap().handle;
        assert!(handle.revocations().is_empty(), "node {id} took a list");
    }
    tree.assert_whole_and_delivering().await;
    rogue.shutdown().await;
    rogue_client.shutdown().await;
    tree.shutdown().await;
}

/// FINDING: an operator pushes a list that is older than the committed one (a `canopy certs
/// revoke` run from a restored backup of the certificate directory, or a second copy of it,
/// whose CRL counter is behind). The leader's merge keeps the committed list, commits
/// nothing, and answers as for a successful commit; `canopy cluster revoke` prints
/// "revocation committed". The certificate it revokes stays trusted everywhere while the
/// operator believes it was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_list_push_is_not_reported_as_committed() {
    let _serial = serial().await;
    let tree = Tree::start(1, 1, 1).await;
    let root = tree.root().await;
    let victim = tree.clients[0].identity.node_id;

    let admin = tree.cluster.credentials(9_000, CertRole::Admin).unwrap();
    let mut client = AdminClient::connect(admin, None).unwrap();
    // The CA's registry has signed list 5 already (nothing revoked in it).
    let current = list(tree.cluster.ca(), 5, &[]);
    client
        .revoke(&[(root, tree.address(root))], vec![current.clone()])
        .await
        .unwrap();
    // A stale copy of the registry signs list 3, revoking the victim.
    let stale = list(tree.cluster.ca(), 3, &[serial_of(&tree, victim)]);
    let result = client
        .revoke(&[(root, tree.address(root))], vec![stale])
        .await;
    client.close().await;
    let in_force = tree.cluster.node(root).unwrap().handle.revocations();
    tree.shutdown().await;
    assert_eq!(in_force, vec![current], "the stale list was adopted");
    assert!(
        result.is_err(),
        "a push that revoked nothing was reported as committed: {result:?}"
    );
}

/// A candidate restarted after a revocation was committed enforces it again, from its Raft
/// store, whether or not it becomes root (a follower puts each newly applied set in force).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_candidate_enforces_the_committed_revocations() {
    let _serial = serial().await;
    let mut tree = Tree::start(3, 1, 1).await;
    let root = tree.root().await;
    let revoked = tree.routers[0].identity.node_id;

    let admin = tree.cluster.credentials(9_000, CertRole::Admin).unwrap();
    let mut client = AdminClient::connect(admin, None).unwrap();
    let der = list(tree.cluster.ca(), 1, &[serial_of(&tree, revoked)]);
    client
        .revoke(&[(root, tree.address(root))], vec![der.clone()])
        .await
        .unwrap();
    client.close().await;
    wait_until("every candidate holds the list", || {
        tree.cluster
            .candidates()
            .iter()
            .all(|c| tree.cluster.node(c.id).unwrap().handle.revocations() == vec![der.clone()])
    })
    .await;

    // A follower restarts: it comes back from its Raft store alone (no file, no push).
    let current_root = tree.root().await;
    let follower = tree
        .cluster
        .candidates()
        .iter()
        .map(|c| c.id)
        .find(|&id| id != current_root)
        .unwrap();
    tree.cluster.kill(follower).await;
    tree.cluster.restart_candidate(follower).await.unwrap();
    wait_until("the restarted candidate holds the list again", || {
        tree.cluster.node(follower).unwrap().handle.revocations() == vec![der.clone()]
    })
    .await;
    tree.shutdown().await;
}
