//! A client with a valid client certificate sends one signed catch-up request whose `have`
//! names an origin at tag_seq u64::MAX. Before the fix, `have + 1` overflowed: the replica
//! task panicked in debug builds (the node's replica stopped for good) and in release the
//! request drew the whole history. Every replica must keep serving.

use std::time::Duration;

use bytes::Bytes;
use canopy_net::{default_validity, Authority, CertRole, Identity};
use canopy_proto::prost::Message;
use canopy_proto::v1::{
    kv_envelope, CatchupRequest, ChainPosition, KvEnvelope, SignedCatchupRequest,
};

use crate::support::{serial, KvTree, CHANNEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signed_request_does_not_stop_a_replica() {
    let _serial = serial().await;
    let mut tree = KvTree::start(1, 0, 2).await;
    let honest = tree.client(0).id();
    tree.write(0, "h", 2).await;
    let hostile = tree.add_client(&[]).await;
    tree.settle().await;
    // The hostile client signs with a certificate for its own id.
    let identity = Identity {
        cluster: "local".into(),
        node_id: hostile.id(),
        role: CertRole::Client,
        region: "local".into(),
    };
    let (from, until) = default_validity();
    let ca = tree.cluster.ca();
    let issued = ca.issue(&identity, from, until).expect("issue");
    let creds = canopy_net::Credentials::from_pem(&ca.cert_pem, &issued.cert_pem, &issued.key_pem)
        .expect("creds");
    let authority = Authority::new(&creds).expect("authority");
    let tag = tree.cluster.tag_of(&format!("{CHANNEL}x"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let request = CatchupRequest {
        requester: hostile.id(),
        key_tag: tag,
        request_id: 7,
        reply_key: Bytes::from_static(&[9u8; 32]),
        have: vec![ChainPosition {
            origin: honest,
            tag_seq: u64::MAX,
        }],
        issued_at_ms: now,
    }
    .encode_to_vec();
    let signature = authority.sign(&request).expect("sign");
    let payload = KvEnvelope {
        body: Some(kv_envelope::Body::CatchupRequest(SignedCatchupRequest {
            request: request.into(),
            signature: signature.into(),
            signer_certificate: Bytes::copy_from_slice(authority.certificate()),
        })),
    }
    .encode_to_vec();
    assert!(hostile.node.handle.publish(tag, payload.into()).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..2 {
        assert!(
            tree.client(i).kv.counters().await.is_some(),
            "client {}'s replica stopped after one signed catch-up request",
            tree.client(i).id()
        );
    }
}
