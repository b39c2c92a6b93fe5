//! The encoding of Raft RPC bodies: CBOR (compact, binary, self-describing, which openraft's
//! serde types need) rather than JSON. Snapshot bytes never go through serde: they travel as
//! one raw protobuf `bytes` field beside the encoded request (see `RaftRequest.data`).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    ciborium::from_reader(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// The encoded size of `value`, or a size larger than any bound if it cannot be encoded.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    encode(value).map_or(usize::MAX / 2, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TypeConfig;
    use openraft::raft::AppendEntriesRequest;
    use openraft::{CommittedLeaderId, LogId, Vote};

    #[test]
    fn an_append_entries_request_round_trips_and_is_smaller_than_json() {
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(7, 2),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(7, 2), 1234)),
            leader_commit: Some(LogId::new(CommittedLeaderId::new(7, 2), 1200)),
            entries: Vec::new(),
        };
        let bytes = encode(&request).expect("encodes");
        let back: AppendEntriesRequest<TypeConfig> = decode(&bytes).expect("decodes");
        assert_eq!(back.vote, request.vote);
        assert_eq!(back.prev_log_id, request.prev_log_id);
        assert_eq!(back.leader_commit, request.leader_commit);
        let json = serde_json::to_vec(&request).expect("json");
        assert!(
            bytes.len() < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let err = decode::<AppendEntriesRequest<TypeConfig>>(&[0xff, 0x00, 0x13]);
        assert!(matches!(err, Err(WireError::Decode(_))));
        let err = decode::<AppendEntriesRequest<TypeConfig>>(b"{\"vote\":1}");
        assert!(matches!(err, Err(WireError::Decode(_))));
    }
}
