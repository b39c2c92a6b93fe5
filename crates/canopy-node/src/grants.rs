//! The root's placement grants on the wire: signed with the serving root's certificate key
//! on the way out, verified on the way in before the tree sees the placement.

use canopy_net::{Authority, CertRole, Identity};
use canopy_proto::prost::Message;
use canopy_proto::v1::{Placement, SignedPlacement};
use canopy_proto::{Body, ControlMessage};
use tracing::warn;

fn grant_mut(msg: &mut ControlMessage) -> Option<&mut SignedPlacement> {
    match &mut msg.body {
        Some(Body::AssignParent(m)) => m.grant.as_mut(),
        Some(Body::AdoptChild(m)) => m.grant.as_mut(),
        _ => None,
    }
}

/// Signs the unsigned grant a serving root put in an `AdoptChild` or `AssignParent`, with
/// the authority `authority` gives (asked for only then: most messages carry no grant).
pub(crate) fn sign(authority: impl FnOnce() -> Authority, msg: &mut ControlMessage) {
    let Some(grant) = grant_mut(msg).filter(|g| g.signature.is_empty()) else {
        return;
    };
    let authority = authority();
    match authority.sign(&grant.placement) {
        Ok(signature) => {
            grant.signature = signature.into();
            grant.signer_certificate = authority.certificate().to_vec().into();
        }
        // The receiver refuses an unsigned grant: the placement fails and the joiner retries.
        Err(e) => warn!(error = %e, "cannot sign a placement grant"),
    }
}

/// Checks the grant of an `AdoptChild` or `AssignParent`: present, signed by a certificate of
/// this cluster's CA with the root-candidate role, and by the candidate the placement names.
/// Whether the placement matches the message and is fresh is the tree's to check.
pub(crate) fn check(
    authority: impl FnOnce() -> Authority,
    own: &Identity,
    msg: &ControlMessage,
) -> Result<(), String> {
    let (kind, grant) = match &msg.body {
        Some(Body::AssignParent(m)) => ("assign_parent", m.grant.as_ref()),
        Some(Body::AdoptChild(m)) => ("adopt_child", m.grant.as_ref()),
        _ => return Ok(()),
    };
    let refuse = |why: String| format!("{kind} refused: {why}");
    let grant = grant.ok_or_else(|| refuse("no placement grant".into()))?;
    let placement = Placement::decode(grant.placement.as_ref())
        .map_err(|e| refuse(format!("undecodable placement: {e}")))?;
    let signer = authority()
        .verify(
            &grant.signer_certificate,
            &grant.placement,
            &grant.signature,
        )
        .map_err(|e| refuse(format!("placement grant: {e}")))?;
    if signer.role != CertRole::RootCandidate || signer.cluster != own.cluster {
        return Err(refuse(format!(
            "placement signed by {signer}, not a root candidate"
        )));
    }
    if signer.node_id != placement.root_id {
        return Err(refuse(format!(
            "placement names root {} but {signer} signed it",
            placement.root_id
        )));
    }
    Ok(())
}
