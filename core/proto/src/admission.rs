//! Which incoming QUIC handshakes the node takes on. A handshake costs the acceptor a key exchange and a
//! certificate check before it knows whether the peer is one it will talk to, and anyone can send
//! Initials (from spoofed addresses too). So past a few handshakes in flight a new one must first prove
//! its source address with a QUIC Retry (stateless: a spoofed source never answers it, and nothing is
//! kept for it), and past a hard limit new ones are dropped unanswered until some finish. Peers that
//! retry after a path loss get in at the next attempt; an established path is never affected.

/// Handshakes in flight (all sockets) from which a new one must have a validated address.
pub const RETRY_FROM: usize = 16;
/// Handshakes in flight from which a new one is dropped.
pub const MAX_IN_FLIGHT: usize = 128;

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Answer with a Retry: the client comes back with a token that proves its address.
    Retry,
    Drop,
}

/// `validated`: the Initial carries a Retry token for its address; `may_retry`: it can still be sent one.
pub fn admit(in_flight: usize, validated: bool, may_retry: bool) -> Admission {
    if in_flight >= MAX_IN_FLIGHT {
        Admission::Drop
    } else if in_flight >= RETRY_FROM && !validated {
        if may_retry {
            Admission::Retry
        } else {
            Admission::Drop
        }
    } else {
        Admission::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_handshakes_are_taken_on_many_must_prove_their_address_too_many_are_dropped() {
        assert_eq!(admit(0, false, true), Admission::Accept);
        assert_eq!(admit(RETRY_FROM - 1, false, true), Admission::Accept);
        assert_eq!(admit(RETRY_FROM, false, true), Admission::Retry);
        assert_eq!(admit(RETRY_FROM, true, false), Admission::Accept, "a validated address gets in");
        assert_eq!(admit(RETRY_FROM, false, false), Admission::Drop, "a Retry is sent once");
        assert_eq!(admit(MAX_IN_FLIGHT, true, false), Admission::Drop);
    }
}
