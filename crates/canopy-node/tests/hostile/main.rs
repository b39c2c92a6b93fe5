//! The hostile suite: credentialed insiders attack a real tree over loopback QUIC. Each
//! attack is refused or contained, a counter or log line says so, and afterwards the tree is
//! whole and every owed delivery arrives. See docs/security.md for the threat model.

mod aggregate_tags;
mod bounds;
mod epoch;
mod flood;
mod interest_churn;
mod multi_attach;
mod placements;
mod raft;
mod raft_pristine;
mod rogue_candidate;
mod sessions;
mod snapshot_churn;
mod support;
