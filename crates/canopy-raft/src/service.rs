//! The serving side of Raft RPCs: decodes a `RaftRequest`, hands it to the local Raft and
//! encodes the answer. Undecodable requests get a `RaftResponse` with `error` set.

use canopy_proto::v1::raft_request::Kind;
use canopy_proto::v1::{RaftRequest, RaftResponse};
use std::time::Instant;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::{Raft, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::contact::Contacts;
use crate::{wire, CandidateId, TypeConfig, MAX_SNAPSHOT_BYTES};

fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    wire::decode(body).map_err(|e| format!("undecodable {what} request: {e}"))
}

fn encode<T: Serialize>(answer: &T) -> Result<Vec<u8>, String> {
    wire::encode(answer).map_err(|e| format!("cannot encode the answer: {e}"))
}

/// A request that claims to come from another candidate than the one whose certificate
/// sent it: the leader of an AppendEntries or InstallSnapshot, the candidate of a Vote.
fn impostor(kind: &str, vote: &Vote<CandidateId>, from: CandidateId) -> Option<String> {
    let claimed = vote.leader_id().voted_for();
    (claimed != Some(from))
        .then(|| format!("{kind} from candidate {from} claims to come from candidate {claimed:?}"))
}

/// Handles one request from `from` and returns the response to send back, or `Err` with the
/// reason if the request speaks for another candidate than `from` (its link is then closed).
pub(crate) async fn handle(
    raft: &Raft<TypeConfig>,
    contacts: &Contacts,
    from: CandidateId,
    request: RaftRequest,
) -> Result<RaftResponse, String> {
    let body = &request.body;
    let answer = match Kind::try_from(request.kind) {
        Ok(Kind::AppendEntries) => {
            match decode::<AppendEntriesRequest<TypeConfig>>(body, "append_entries") {
                Ok(rpc) => {
                    if let Some(e) = impostor("append_entries", &rpc.vote, from) {
                        return Err(e);
                    }
                    let answer = raft.append_entries(rpc).await;
                    if answer
                        .as_ref()
                        .is_ok_and(|a| !matches!(a, AppendEntriesResponse::HigherVote(_)))
                    {
                        contacts.heard(Instant::now());
                    }
                    encode(&answer)
                }
                Err(e) => Err(e),
            }
        }
        Ok(Kind::Vote) => match decode::<VoteRequest<CandidateId>>(body, "vote") {
            Ok(rpc) => {
                if let Some(e) = impostor("vote", &rpc.vote, from) {
                    return Err(e);
                }
                let answer = raft.vote(rpc).await;
                if answer.as_ref().is_ok_and(|a| a.vote_granted) {
                    contacts.heard(Instant::now());
                }
                encode(&answer)
            }
            Err(e) => Err(e),
        },
        Ok(Kind::InstallSnapshot) => {
            match decode::<InstallSnapshotRequest<TypeConfig>>(body, "install_snapshot") {
                Ok(mut rpc) => {
                    if let Some(e) = impostor("install_snapshot", &rpc.vote, from) {
                        return Err(e);
                    }
                    let end = rpc.offset.checked_add(request.data.len() as u64);
                    // The chunk travels raw beside the request; bytes inside it as well are
                    // malformed (a second copy the chunk size does not bound).
                    if end.is_none_or(|end| end > MAX_SNAPSHOT_BYTES) {
                        Err(format!(
                            "install_snapshot chunk at offset {} reaches beyond the \
                             {MAX_SNAPSHOT_BYTES}-byte snapshot bound",
                            rpc.offset
                        ))
                    } else if rpc.data.is_empty() {
                        rpc.data = request.data.to_vec();
                        encode(&raft.install_snapshot(rpc).await)
                    } else {
                        Err("install_snapshot carries its chunk inside the body".to_owned())
                    }
                }
                Err(e) => Err(e),
            }
        }
        Ok(Kind::Unspecified) | Err(_) => {
            Err(format!("unknown raft request kind {}", request.kind))
        }
    };
    Ok(match answer {
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
    })
}
