//! The serving side of Raft RPCs: decodes a `RaftRequest`, hands it to the local Raft and
//! encodes the answer. Undecodable requests get a `RaftResponse` with `error` set.

use canopy_proto::v1::raft_request::Kind;
use canopy_proto::v1::{RaftRequest, RaftResponse};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{CandidateId, TypeConfig};

fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("undecodable {what} request: {e}"))
}

fn encode<T: Serialize>(answer: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(answer).map_err(|e| format!("cannot encode the answer: {e}"))
}

/// Handles one request from `from` and returns the response to send back.
pub(crate) async fn handle(
    raft: &Raft<TypeConfig>,
    from: CandidateId,
    request: RaftRequest,
) -> RaftResponse {
    let body = &request.body;
    let answer = match Kind::try_from(request.kind) {
        Ok(Kind::AppendEntries) => {
            match decode::<AppendEntriesRequest<TypeConfig>>(body, "append_entries") {
                Ok(rpc) => encode(&raft.append_entries(rpc).await),
                Err(e) => Err(e),
            }
        }
        Ok(Kind::Vote) => match decode::<VoteRequest<CandidateId>>(body, "vote") {
            Ok(rpc) => encode(&raft.vote(rpc).await),
            Err(e) => Err(e),
        },
        Ok(Kind::InstallSnapshot) => {
            match decode::<InstallSnapshotRequest<TypeConfig>>(body, "install_snapshot") {
                Ok(rpc) => encode(&raft.install_snapshot(rpc).await),
                Err(e) => Err(e),
            }
        }
        Ok(Kind::Unspecified) | Err(_) => {
            Err(format!("unknown raft request kind {}", request.kind))
        }
    };
    match answer {
        Ok(body) => RaftResponse {
            request_id: request.request_id,
            body: body.into(),
            error: String::new(),
        },
        Err(error) => {
            tracing::warn!(from, id = request.request_id, %error, "bad raft request");
            RaftResponse {
                request_id: request.request_id,
                body: Default::default(),
                error,
            }
        }
    }
}
