//! Hybrid logical clock: `physical_ms << 16 | logical`.
//!
//! Timestamps order writes for last-writer-wins. The physical part follows the wall clock the
//! driver passes in; the logical part separates writes within one millisecond and keeps the
//! clock monotonic when the wall clock steps back or a peer's clock runs ahead.

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// How far ahead of the local wall clock a received timestamp may be. A peer (or a hostile
/// client) with a clock far in the future would otherwise drag every later local write with
/// it, and win last-writer-wins against every honest write of its key: the replica refuses
/// such records (`future_clock`) and `observe` ignores such timestamps.
pub const MAX_FORWARD_DRIFT_MS: u64 = 60_000;

/// The clock's state: the last timestamp issued or observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that has seen `last`.
    pub fn new(last: u64) -> Hlc {
        Hlc { last }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A fresh timestamp for a local write at wall-clock `now_ms`: above everything seen.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        let physical = now_ms.saturating_mul(1 << LOGICAL_BITS);
        // When the logical counter overflows, the carry moves into the physical part: the
        // clock runs a little ahead, which is still monotonic.
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// Takes in a received record's timestamp, but never past half the accepted drift: a
    /// record stamped just under the acceptance limit (by a hostile writer) must not drag this
    /// clock there, or this node's own honest records would be refused as too far ahead by
    /// replicas whose clocks are slightly behind. (A write of the same key then loses to that
    /// record until the wall clock catches up: at most [`MAX_FORWARD_DRIFT_MS`].)
    pub fn observe(&mut self, remote: u64, now_ms: u64) {
        let limit = now_ms
            .saturating_add(MAX_FORWARD_DRIFT_MS / 2)
            .saturating_mul(1 << LOGICAL_BITS);
        self.last = self.last.max(remote.min(limit));
    }
}

/// The wall-clock part of a timestamp, in ms since the Unix epoch.
pub fn physical_ms(hlc: u64) -> u64 {
    hlc >> LOGICAL_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_across_clock_steps_and_observations() {
        let mut c = Hlc::default();
        let a = c.tick(1000);
        assert_eq!(a, 1000 << 16);
        let b = c.tick(1000);
        assert_eq!(b, a + 1);
        let d = c.tick(999); // wall clock stepped back
        assert!(d > b);
        c.observe(5000 << 16 | 7, 4000);
        assert!(c.tick(4000) > 5000 << 16 | 7);
        // Far in the future: the clock moves at most half the accepted drift ahead.
        c.observe(u64::MAX, 4000);
        assert_eq!(physical_ms(c.last()), 4000 + MAX_FORWARD_DRIFT_MS / 2);
        let later = 4000 + MAX_FORWARD_DRIFT_MS;
        assert_eq!(physical_ms(c.tick(later)), later);
    }
}
