//! The key-value layer over real nodes on loopback (QUIC, mutual TLS): hostile routers and
//! clients against sealed, signed, hash-chained records, and convergence through failures.

mod clients;
mod convergence;
mod durability;
mod hostile_request;
mod node_attacks;
mod support;
mod tamper;
