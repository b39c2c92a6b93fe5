//! The hostile suite: credentialed insiders attack a real tree over loopback QUIC. Each
//! attack is refused or contained, a counter or log line says so, and afterwards the tree is
//! whole and every owed delivery arrives. See docs/security.md for the threat model.

mod bounds;
mod epoch;
mod flood;
mod interest_churn;
mod multi_attach;
mod placed;
mod placements;
mod raft;
mod raft_pristine;
mod revocation;
mod rogue_candidate;
mod router_interest;
mod sessions;
mod support;
