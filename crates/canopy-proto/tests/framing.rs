//! Framing behaviour: round trips, partial and batched frames, and every way a frame can be
//! refused. Decoding must never panic on any input.

use bytes::{BufMut, Bytes, BytesMut};
use canopy_proto::v1::{
    admin_request, disconnect, raft_request, AdminRequest, AdminResponse, AdoptChild, AssignParent,
    CandidateChange, ChildRemoved, Cull, Disconnect, Heartbeat, InterestDelta, InterestSnapshot,
    JoinRequest, Multicast, NotLeader, RaftRequest, RaftResponse, Reattach, ReleaseChild, Role,
    SignedPlacement, SubtreeSize,
};
use canopy_proto::{Body, ControlMessage, FrameCodec, FrameError, DEFAULT_MAX_FRAME_LEN};
use proptest::prelude::*;

/// Distinct index per message type. The match is exhaustive, so adding a message type to
/// `canopy.proto` fails compilation here until the type is covered by [`every_variant`].
fn variant_index(body: &Body) -> usize {
    match body {
        Body::JoinRequest(_) => 0,
        Body::NotLeader(_) => 1,
        Body::AssignParent(_) => 2,
        Body::AdoptChild(_) => 3,
        Body::Reattach(_) => 4,
        Body::Heartbeat(_) => 5,
        Body::InterestSnapshot(_) => 6,
        Body::Cull(_) => 7,
        Body::Disconnect(_) => 8,
        Body::ChildRemoved(_) => 9,
        Body::Multicast(_) => 10,
        Body::RaftRequest(_) => 11,
        Body::RaftResponse(_) => 12,
        Body::AdminRequest(_) => 13,
        Body::AdminResponse(_) => 14,
        Body::ReleaseChild(_) => 15,
        Body::Revocations(_) => 16,
        Body::LinkRefresh(_) => 17,
        Body::OutsideInterest(_) => 18,
    }
}
const VARIANT_COUNT: usize = 19;

/// One message of every type, with every field set to a non-default value.
fn every_variant() -> Vec<ControlMessage> {
    let subtree = SubtreeSize {
        clients: 1_000_000,
        routers: 42,
    };
    let bodies = vec![
        Body::JoinRequest(JoinRequest {
            node_id: u64::MAX,
            role: Role::Client as i32,
            region: "eu-west".into(),
            address: "10.0.0.7:4433".into(),
            attempt: 3,
            subtree: Some(subtree),
        }),
        Body::NotLeader(NotLeader {
            leader_hint: 17,
            leader_address: "root-2.example:4433".into(),
        }),
        Body::AssignParent(AssignParent {
            child_id: 9,
            parent_id: 3,
            parent_address: "10.0.0.3:4433".into(),
            assignment_id: 77,
            topology_epoch: 4,
            grant: Some(SignedPlacement {
                placement: Bytes::from_static(b"\x08\x09\x10\x03"),
                signature: Bytes::from_static(&[7; 64]),
                signer_certificate: Bytes::from_static(&[0x30, 0x82, 0x01, 0x00]),
            }),
        }),
        Body::AdoptChild(AdoptChild {
            child_id: 9,
            role: Role::Router as i32,
            region: "us-east".into(),
            address: "10.0.0.9:4433".into(),
            assignment_id: 78,
            grant: None,
        }),
        Body::Reattach(Reattach {
            node_id: 9,
            role: Role::Router as i32,
            assignment_id: 78,
            subtree: Some(subtree),
            interest: Some(InterestSnapshot {
                tags: vec![0, 1, u64::MAX, 0xDEAD_BEEF],
                more: true,
            }),
        }),
        Body::Heartbeat(Heartbeat {
            sender_id: 9,
            subtree: Some(subtree),
            topology_epoch: 5,
            interest: Some(InterestDelta {
                add: vec![5, 6],
                remove: vec![u64::MAX],
            }),
            assignment_id: 78,
            root_id: 0,
        }),
        Body::InterestSnapshot(InterestSnapshot {
            tags: (1..100).collect(),
            more: false,
        }),
        Body::Cull(Cull { count: 12 }),
        Body::Disconnect(Disconnect {
            sender_id: 3,
            reason: disconnect::Reason::NotANeighbour as i32,
            rejoin: true,
        }),
        Body::ChildRemoved(ChildRemoved {
            parent_id: 3,
            child_id: 9,
            assignment_id: 77,
        }),
        Body::Multicast(Multicast {
            origin: 9,
            key_tag: 0xFFFF_0000_FFFF_0000,
            origin_seq: 1234,
            key_seq: 56,
            payload: Bytes::from_static(b"sealed payload \x00\xff"),
        }),
        Body::RaftRequest(RaftRequest {
            request_id: 5,
            kind: raft_request::Kind::AppendEntries as i32,
            body: Bytes::from_static(b"{\"vote\":1}"),
            data: Bytes::from_static(b"chunk"),
        }),
        Body::RaftResponse(RaftResponse {
            request_id: 5,
            body: Bytes::from_static(b"{}"),
            error: "busy".into(),
        }),
        Body::AdminRequest(AdminRequest {
            request_id: 8,
            command: Some(admin_request::Command::AddCandidate(CandidateChange {
                node_id: 4,
                address: "10.0.0.4:7400".into(),
            })),
        }),
        Body::AdminResponse(AdminResponse {
            request_id: 8,
            error: "not the leader".into(),
            status_json: "{}".into(),
            leader_hint: 2,
            leader_address: "10.0.0.2:7400".into(),
        }),
        Body::ReleaseChild(ReleaseChild {
            child_id: 9,
            assignment_id: 79,
        }),
        Body::Revocations(canopy_proto::v1::Revocations {
            lists: vec![
                Bytes::from_static(b"a list"),
                Bytes::from_static(b"another"),
            ],
        }),
        Body::LinkRefresh(canopy_proto::v1::LinkRefresh {
            certificate_sha256: Bytes::from_static(&[7; 32]),
        }),
        Body::OutsideInterest(canopy_proto::v1::OutsideInterest {
            snapshot: vec![3, u64::MAX],
            first: true,
            more: true,
            delta: Some(InterestDelta {
                add: vec![5],
                remove: vec![6],
            }),
            everything: true,
        }),
    ];
    bodies.into_iter().map(ControlMessage::new).collect()
}

fn frame(codec: &FrameCodec, msg: &ControlMessage) -> BytesMut {
    let mut buf = BytesMut::new();
    codec.encode_into(msg, &mut buf).unwrap();
    buf
}

/// A frame with the given body bytes and a correct length prefix.
fn raw_frame(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(body.len()).unwrap());
    buf.put_slice(body);
    buf
}

#[test]
fn every_message_type_round_trips() {
    let codec = FrameCodec::default();
    let messages = every_variant();
    let mut seen = [false; VARIANT_COUNT];
    for msg in &messages {
        let body = msg.body.as_ref().unwrap();
        seen[variant_index(body)] = true;

        let mut buf = frame(&codec, msg);
        let encoded_len = prost::Message::encoded_len(msg);
        assert_eq!(buf.len(), 4 + encoded_len, "{}", msg.kind());
        assert_eq!(
            &buf[..4],
            &u32::try_from(encoded_len).unwrap().to_be_bytes()
        );

        let decoded = codec.decode_from(&mut buf).unwrap();
        assert_eq!(decoded.as_ref(), Some(msg), "{}", msg.kind());
        assert!(buf.is_empty(), "{} left bytes behind", msg.kind());
        assert!(codec.decode_from(&mut buf).unwrap().is_none());
    }
    assert!(seen.iter().all(|&s| s), "not every message type covered");
}

#[test]
fn kinds_are_distinct_and_empty_is_named() {
    let mut kinds: Vec<&str> = every_variant().iter().map(ControlMessage::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), VARIANT_COUNT);
    assert_eq!(ControlMessage { body: None }.kind(), "empty");
}

#[test]
fn partial_frame_waits_then_decodes() {
    let codec = FrameCodec::default();
    for msg in every_variant() {
        let full = frame(&codec, &msg);
        let mut buf = BytesMut::new();
        for (i, &byte) in full.iter().enumerate() {
            buf.put_u8(byte);
            if i + 1 < full.len() {
                assert!(
                    codec.decode_from(&mut buf).unwrap().is_none(),
                    "{}: decoded after {} of {} bytes",
                    msg.kind(),
                    i + 1,
                    full.len()
                );
                // Waiting for more never consumes anything.
                assert_eq!(buf.len(), i + 1);
            }
        }
        assert_eq!(codec.decode_from(&mut buf).unwrap(), Some(msg));
        assert!(buf.is_empty());
    }
}

#[test]
fn several_frames_in_one_buffer_decode_in_order() {
    let codec = FrameCodec::default();
    let messages = every_variant();
    let mut buf = BytesMut::new();
    for msg in &messages {
        codec.encode_into(msg, &mut buf).unwrap();
    }
    // A trailing partial frame stays in the buffer.
    let tail = frame(&codec, &messages[0]);
    buf.put_slice(&tail[..tail.len() - 1]);

    let mut decoded = Vec::new();
    while let Some(msg) = codec.decode_from(&mut buf).unwrap() {
        decoded.push(msg);
    }
    assert_eq!(decoded, messages);
    assert_eq!(&buf[..], &tail[..tail.len() - 1]);

    buf.put_u8(tail[tail.len() - 1]);
    assert_eq!(
        codec.decode_from(&mut buf).unwrap().as_ref(),
        Some(&messages[0])
    );
    assert!(buf.is_empty());
}

#[test]
fn oversized_length_prefix_is_refused_before_the_body_arrives() {
    for max in [0usize, 16, DEFAULT_MAX_FRAME_LEN] {
        let codec = FrameCodec::new(max);
        let announced = max + 1;
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(announced).unwrap());
        match codec.decode_from(&mut buf) {
            Err(FrameError::Oversized { len, max: limit }) => {
                assert_eq!(len, announced);
                assert_eq!(limit, max);
            }
            other => panic!("expected Oversized, got {other:?}"),
        }
        // The buffer is left alone: the link is closed, not resynchronised.
        assert_eq!(buf.len(), 4);
    }
    let mut buf = BytesMut::new();
    buf.put_u32(u32::MAX);
    assert!(matches!(
        FrameCodec::default().decode_from(&mut buf),
        Err(FrameError::Oversized { .. })
    ));
}

#[test]
fn frame_of_exactly_the_maximum_is_accepted() {
    let msg = ControlMessage::new(Body::Multicast(Multicast {
        origin: 1,
        key_tag: 2,
        origin_seq: 3,
        key_seq: 4,
        payload: Bytes::from(vec![7u8; 300]),
    }));
    let len = prost::Message::encoded_len(&msg);
    let exact = FrameCodec::new(len);
    assert_eq!(exact.max_frame_len(), len);
    let mut buf = frame(&exact, &msg);
    assert_eq!(exact.decode_from(&mut buf).unwrap(), Some(msg.clone()));

    let smaller = FrameCodec::new(len - 1);
    let mut buf = frame(&exact, &msg);
    assert!(matches!(
        smaller.decode_from(&mut buf),
        Err(FrameError::Oversized { .. })
    ));
}

#[test]
fn oversized_message_is_refused_on_encode() {
    let codec = FrameCodec::new(64);
    let msg = ControlMessage::new(Body::Multicast(Multicast {
        origin: 1,
        key_tag: 2,
        origin_seq: 3,
        key_seq: 4,
        payload: Bytes::from(vec![0u8; 100]),
    }));
    let mut buf = BytesMut::from(&b"earlier"[..]);
    match codec.encode_into(&msg, &mut buf) {
        Err(FrameError::Oversized { len, max }) => {
            assert_eq!(len, prost::Message::encoded_len(&msg));
            assert_eq!(max, 64);
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
    // Nothing half-written follows what was already queued.
    assert_eq!(&buf[..], b"earlier");
}

#[test]
fn default_codec_uses_one_mebibyte() {
    assert_eq!(DEFAULT_MAX_FRAME_LEN, 1 << 20);
    assert_eq!(FrameCodec::default().max_frame_len(), DEFAULT_MAX_FRAME_LEN);
}

#[test]
fn garbage_body_is_undecodable() {
    let codec = FrameCodec::default();
    let garbage: [&[u8]; 5] = [
        // Field 1 (join_request) announces 5 bytes, 1 follows.
        &[0x0A, 0x05, 0x01],
        // Field 1 with wire type varint, but join_request is a message.
        &[0x08, 0x01],
        // Wire type 7 does not exist.
        &[0x0F],
        // A varint tag that never ends.
        &[0xFF; 11],
        // Field number 0 is invalid.
        &[0x00, 0x01],
    ];
    for body in garbage {
        let mut buf = raw_frame(body);
        let before = buf.len();
        match codec.decode_from(&mut buf) {
            Err(FrameError::Undecodable(_)) => {}
            other => panic!("{body:02x?}: expected Undecodable, got {other:?}"),
        }
        assert_eq!(buf.len(), before, "{body:02x?}: buffer changed after error");
    }
}

#[test]
fn message_without_a_known_body_is_an_unknown_type() {
    let codec = FrameCodec::default();
    let bodies: [&[u8]; 3] = [
        // An encoded ControlMessage with no body at all.
        &[],
        // Only an unknown field: number 100, varint 1.
        &[0xA0, 0x06, 0x01],
        // Only an unknown length-delimited field: number 20 (the next free one), 2 bytes.
        &[0xA2, 0x01, 0x02, 0xAB, 0xCD],
    ];
    for body in bodies {
        let mut buf = raw_frame(body);
        let before = buf.len();
        match codec.decode_from(&mut buf) {
            Err(FrameError::UnknownMessageType) => {}
            other => panic!("{body:02x?}: expected UnknownMessageType, got {other:?}"),
        }
        assert_eq!(buf.len(), before);
    }
    // The encoder refuses to frame what the peer would refuse, and writes nothing.
    let mut buf = BytesMut::new();
    assert!(matches!(
        codec.encode_into(&ControlMessage { body: None }, &mut buf),
        Err(FrameError::UnknownMessageType)
    ));
    assert!(buf.is_empty());
}

#[test]
fn unknown_fields_next_to_a_known_body_are_skipped() {
    // Forward compatibility: a newer peer's extra fields do not break an older node.
    let codec = FrameCodec::default();
    let msg = ControlMessage::new(Body::Cull(Cull { count: 5 }));
    let mut body = prost::Message::encode_to_vec(&msg);
    body.extend_from_slice(&[0xA0, 0x06, 0x01]);
    let mut buf = raw_frame(&body);
    assert_eq!(codec.decode_from(&mut buf).unwrap(), Some(msg));
    assert!(buf.is_empty());
}

#[test]
fn errors_display_a_reason() {
    let oversized = FrameError::Oversized { len: 10, max: 5 };
    assert!(oversized.to_string().contains("10"));
    assert!(oversized.to_string().contains('5'));
    assert!(!FrameError::UnknownMessageType.to_string().is_empty());
}

/// Feeds `bytes` to a codec in the given chunk sizes, decoding after every chunk the way
/// the IO layer does, and checks the decoder's contract on every call. Returns the messages
/// decoded and whether the link ended in an error.
fn drive(codec: &FrameCodec, bytes: &[u8], chunks: &[usize]) -> (Vec<ControlMessage>, bool) {
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut rest = bytes;
    let mut chunk_sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let take = chunk_sizes.next().unwrap_or(1).clamp(1, rest.len());
        buf.put_slice(&rest[..take]);
        rest = &rest[take..];
        loop {
            let before = buf.len();
            match codec.decode_from(&mut buf) {
                Ok(Some(msg)) => {
                    assert!(msg.body.is_some(), "decoded a message without a body");
                    assert!(buf.len() < before, "a decoded frame consumed nothing");
                    decoded.push(msg);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting consumed bytes");
                    break;
                }
                Err(_) => {
                    assert_eq!(buf.len(), before, "an error consumed bytes");
                    return (decoded, true);
                }
            }
        }
    }
    (decoded, false)
}

fn subtree_strategy() -> impl Strategy<Value = Option<SubtreeSize>> {
    proptest::option::of(
        (any::<u64>(), any::<u64>())
            .prop_map(|(clients, routers)| SubtreeSize { clients, routers }),
    )
}

fn tags_strategy() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(any::<u64>(), 0..40)
}

fn multicast_strategy() -> impl Strategy<Value = ControlMessage> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(origin, key_tag, origin_seq, key_seq, payload)| {
            ControlMessage::new(Body::Multicast(Multicast {
                origin,
                key_tag,
                origin_seq,
                key_seq,
                payload: Bytes::from(payload),
            }))
        })
}

fn heartbeat_strategy() -> impl Strategy<Value = ControlMessage> {
    (
        any::<u64>(),
        subtree_strategy(),
        any::<u64>(),
        proptest::option::of((tags_strategy(), tags_strategy())),
        any::<u64>(),
    )
        .prop_map(
            |(sender_id, subtree, topology_epoch, delta, assignment_id)| {
                ControlMessage::new(Body::Heartbeat(Heartbeat {
                    sender_id,
                    subtree,
                    topology_epoch,
                    interest: delta.map(|(add, remove)| InterestDelta { add, remove }),
                    assignment_id,
                    root_id: 0,
                }))
            },
        )
}

fn message_strategy() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![multicast_strategy(), heartbeat_strategy()]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunks in proptest::collection::vec(1usize..64, 1..16),
        max in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0usize..512],
    ) {
        drive(&FrameCodec::new(max), &bytes, &chunks);
    }

    #[test]
    fn random_bodies_behind_valid_prefixes_never_panic(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8),
        chunks in proptest::collection::vec(1usize..64, 1..16),
    ) {
        // Well-formed length prefixes push the random bytes into the protobuf decoder.
        let mut bytes = BytesMut::new();
        for body in &bodies {
            bytes.put_slice(&raw_frame(body));
        }
        let codec = FrameCodec::default();
        let (decoded, failed) = drive(&codec, &bytes, &chunks);
        // Every complete frame either decodes or ends the link: none is left waiting.
        prop_assert!(failed || decoded.len() == bodies.len());
    }

    #[test]
    fn random_messages_round_trip(msg in message_strategy()) {
        let codec = FrameCodec::default();
        let mut buf = frame(&codec, &msg);
        prop_assert_eq!(codec.decode_from(&mut buf).unwrap(), Some(msg));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn random_message_streams_survive_any_chunking(
        messages in proptest::collection::vec(message_strategy(), 1..12),
        chunks in proptest::collection::vec(1usize..300, 1..16),
    ) {
        let codec = FrameCodec::default();
        let mut bytes = BytesMut::new();
        for msg in &messages {
            codec.encode_into(msg, &mut bytes).unwrap();
        }
        let (decoded, failed) = drive(&codec, &bytes, &chunks);
        prop_assert!(!failed);
        prop_assert_eq!(decoded, messages);
    }
}

/// The tokio-util adapter the IO layer uses (`cargo test -p canopy-proto --features codec`).
#[cfg(feature = "codec")]
mod tokio_codec {
    use super::*;
    use tokio_util::codec::{Decoder, Encoder};

    #[test]
    fn codec_traits_frame_like_the_inherent_methods() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for msg in every_variant() {
            codec.encode(msg, &mut buf).unwrap();
        }
        let mut decoded = Vec::new();
        while let Some(msg) = codec.decode(&mut buf).unwrap() {
            decoded.push(msg);
        }
        assert_eq!(decoded, every_variant());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn stream_ending_mid_frame_is_an_io_error() {
        let mut codec = FrameCodec::default();
        let full = frame(&codec, &every_variant()[0]);
        let mut buf = BytesMut::from(&full[..full.len() - 1]);
        assert!(matches!(codec.decode_eof(&mut buf), Err(FrameError::Io(_))));
    }

    #[test]
    fn codec_refuses_oversized_frames_both_ways() {
        let mut codec = FrameCodec::new(8);
        // The join request: longer than 8 bytes (the last variant may not be).
        let msg = every_variant().swap_remove(0);
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(msg, &mut buf),
            Err(FrameError::Oversized { .. })
        ));
        buf.put_u32(9);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Oversized { .. })
        ));
    }
}
