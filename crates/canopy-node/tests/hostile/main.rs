//! The hostile suite: credentialed insiders attack a real tree over loopback QUIC. Each
//! attack is refused or contained, a counter or log line says so, and afterwards the tree is
//! whole and every owed delivery arrives. See docs/security.md for the threat model.

mod bounds;
mod flood;
mod placements;
mod raft;
mod support;
