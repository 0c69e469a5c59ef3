//! The birthday probe between a random symmetric NAT and an open one (issue 14; caps and pacing in
//! `symmetric::BirthdayProbe`), as the two sides run it:
//!
//! - The random side opens up to `BIRTHDAY_SOCKETS` extra sockets on its random WAN and sends one small
//!   packet from each to the open side's candidates (`open_targets`): each makes a NAT mapping that lets
//!   packets from exactly that address in. It then listens on all of them (`BirthdayListen`).
//! - The open side sends probes (`probe_packet`) paced by `BirthdayProbe::poll` from its WAN socket to
//!   random ports of the random side's public address (the address the relay saw it at).
//! - A probe that lands on one of the mappings reaches its socket: the first socket that receives a
//!   valid probe is the winner, every other extra socket is closed, and the winner dials the QUIC
//!   handshake to the address the probe came from (the open side's WAN socket, whose NAT now lets the
//!   winner's mapping in, since it sent the probe there).
//!
//! A probe is valid only if it carries the token both sides derive from the punch message exchange
//! (`token`: a nonce the initiator drew, which only the two members and the relay between them saw, and
//! both keys), comes from one of the addresses the random side opened its mappings to, and arrives within
//! the probe's time: a stray packet, or one from another punch, cannot choose the winner.
//!
//! Wire format of a probe and of an opening packet (the same bytes):
//! ```text
//!   [4]   magic 00 "QEB"     the first byte has QUIC's fixed bit clear: a QUIC endpoint drops it unanswered
//!   [16]  token
//! ```

use std::net::SocketAddr;

use crate::symmetric::BIRTHDAY_DURATION_US;

pub const PROBE_MAGIC: [u8; 4] = [0x00, b'Q', b'E', b'B'];
pub const TOKEN_LEN: usize = 16;
pub const PROBE_LEN: usize = PROBE_MAGIC.len() + TOKEN_LEN;
/// The open side's addresses each extra socket sends its opening packet to (of the right family, in the
/// order of its candidates: its first is where a peer saw it): each costs one packet per socket.
pub const MAX_OPEN_TARGETS: usize = 4;
/// The random side listens this much longer than the probing side probes: the last probes are on their
/// way, and the two sides' starts differ by up to the offer's transit time.
pub const LISTEN_MARGIN_US: u64 = 1_000_000;

/// The token of a birthday probe: SHA-256 over a domain label, the request's nonce and both keys (the
/// initiator's first), cut to `TOKEN_LEN`.
pub fn token(nonce: &[u8; 16], initiator: &[u8; 32], target: &[u8; 32]) -> [u8; TOKEN_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"quicether birthday probe v1");
    ctx.update(nonce);
    ctx.update(initiator);
    ctx.update(target);
    let digest = ctx.finish();
    let mut out = [0u8; TOKEN_LEN];
    out.copy_from_slice(&digest.as_ref()[..TOKEN_LEN]);
    out
}

/// A probe (or an opening packet) carrying `token`.
pub fn probe_packet(token: &[u8; TOKEN_LEN]) -> [u8; PROBE_LEN] {
    let mut out = [0u8; PROBE_LEN];
    out[..4].copy_from_slice(&PROBE_MAGIC);
    out[4..].copy_from_slice(token);
    out
}

/// Whether `data` is a probe carrying `token` (exactly: no other length).
pub fn carries_token(data: &[u8], token: &[u8; TOKEN_LEN]) -> bool {
    data.len() == PROBE_LEN && data[..4] == PROBE_MAGIC && data[4..] == token[..]
}

/// Where the random side's extra sockets send their opening packet: the open side's candidates of the
/// sockets' family (`v4`), at most `MAX_OPEN_TARGETS`, best first.
pub fn open_targets(candidates: &[SocketAddr], v4: bool) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for c in candidates.iter().filter(|c| c.is_ipv4() == v4) {
        if !out.contains(c) && out.len() < MAX_OPEN_TARGETS {
            out.push(*c);
        }
    }
    out
}

/// The socket whose mapping a probe found, and the address the probe came from (the winner dials it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Winner {
    pub socket: usize,
    pub from: SocketAddr,
}

/// The random side of a birthday probe: which of its extra sockets wins, if any.
#[derive(Debug)]
pub struct BirthdayListen {
    token: [u8; TOKEN_LEN],
    /// Where the opening packets went: the only addresses a valid probe can come from.
    targets: Vec<SocketAddr>,
    start_us: u64,
    winner: Option<Winner>,
    refused: u64,
}

impl BirthdayListen {
    pub fn new(token: [u8; TOKEN_LEN], targets: Vec<SocketAddr>, start_us: u64) -> Self {
        BirthdayListen { token, targets, start_us, winner: None, refused: 0 }
    }

    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// When listening ends without a winner (the probe's time, and `LISTEN_MARGIN_US`).
    pub fn deadline_us(&self) -> u64 {
        self.start_us + BIRTHDAY_DURATION_US + LISTEN_MARGIN_US
    }

    /// A datagram that extra socket `socket` received from `from`: the winner if it is the first valid
    /// probe (the token, from an opened-to address, in time); None for anything else, and for every
    /// probe after the winner's.
    pub fn handle_datagram(&mut self, socket: usize, data: &[u8], from: SocketAddr, now_us: u64) -> Option<Winner> {
        if self.winner.is_some() {
            return None;
        }
        let in_time = now_us >= self.start_us && now_us < self.deadline_us();
        if !in_time || !self.targets.contains(&from) || !carries_token(data, &self.token) {
            self.refused += 1;
            return None;
        }
        let winner = Winner { socket, from };
        self.winner = Some(winner);
        Some(winner)
    }

    pub fn winner(&self) -> Option<Winner> {
        self.winner
    }

    /// Over: a winner was chosen, or the time is up.
    pub fn done(&self, now_us: u64) -> bool {
        self.winner.is_some() || now_us >= self.deadline_us()
    }

    /// Datagrams refused (wrong token, source or time).
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

/// How a birthday probe ended, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Random side: a valid probe reached one of the extra sockets. Open side: a direct path to the
    /// peer came up while probing.
    Hit,
    /// The time cap passed (or every probe was sent) without one.
    Missed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_token_binds_the_nonce_and_both_keys_in_order() {
        let t = token(&[1; 16], &[2; 32], &[3; 32]);
        assert_eq!(t, token(&[1; 16], &[2; 32], &[3; 32]), "both sides derive the same token");
        assert_ne!(t, token(&[9; 16], &[2; 32], &[3; 32]), "another exchange, another token");
        assert_ne!(t, token(&[1; 16], &[3; 32], &[2; 32]), "the roles count");
        let probe = probe_packet(&t);
        assert_eq!(probe[0] & 0x40, 0, "QUIC's fixed bit is clear: a QUIC endpoint drops it");
        assert!(carries_token(&probe, &t));
        assert!(!carries_token(&probe, &token(&[9; 16], &[2; 32], &[3; 32])));
        assert!(!carries_token(&probe[..PROBE_LEN - 1], &t), "short");
        assert!(!carries_token(&[&probe[..], &[0]].concat(), &t), "long");
        let mut other_magic = probe;
        other_magic[0] = b'Q';
        assert!(!carries_token(&other_magic, &t));
    }

    #[test]
    fn opening_packets_go_to_a_few_candidates_of_the_sockets_family() {
        let candidates = [
            addr("198.51.100.7:4433"),
            addr("[2001:db8::1]:9"),
            addr("10.0.0.2:4433"),
            addr("198.51.100.7:4433"),
            addr("198.51.100.7:1"),
            addr("198.51.100.7:2"),
            addr("198.51.100.7:3"),
        ];
        let v4 = open_targets(&candidates, true);
        assert_eq!(
            v4,
            vec![addr("198.51.100.7:4433"), addr("10.0.0.2:4433"), addr("198.51.100.7:1"), addr("198.51.100.7:2")]
        );
        assert_eq!(open_targets(&candidates, false), vec![addr("[2001:db8::1]:9")]);
        assert!(open_targets(&[], true).is_empty());
    }

    #[test]
    fn the_first_valid_probe_wins_and_nothing_else_does() {
        let t = token(&[1; 16], &[2; 32], &[3; 32]);
        let open_side = addr("198.51.100.7:4433");
        let start = 5_000_000;
        let mut listen = BirthdayListen::new(t, vec![open_side], start);
        let probe = probe_packet(&t);
        assert_eq!(listen.handle_datagram(3, &probe, open_side, start - 1), None, "before the start");
        assert_eq!(listen.handle_datagram(3, &probe, addr("203.0.113.9:4433"), start + 10), None, "stranger");
        let stray = probe_packet(&token(&[7; 16], &[2; 32], &[3; 32]));
        assert_eq!(listen.handle_datagram(3, &stray, open_side, start + 10), None, "another punch's token");
        assert_eq!(listen.handle_datagram(3, b"hello", open_side, start + 10), None);
        assert_eq!(listen.refused(), 4);
        assert!(!listen.done(start + 10));
        let won = listen.handle_datagram(17, &probe, open_side, start + 2_000_000);
        assert_eq!(won, Some(Winner { socket: 17, from: open_side }));
        assert_eq!(listen.handle_datagram(4, &probe, open_side, start + 2_000_001), None, "one winner only");
        assert_eq!(listen.winner(), won);
        assert!(listen.done(start + 2_000_001));
    }

    #[test]
    fn listening_ends_after_the_probes_time_and_its_margin() {
        let t = token(&[1; 16], &[2; 32], &[3; 32]);
        let open_side = addr("198.51.100.7:4433");
        let mut listen = BirthdayListen::new(t, vec![open_side], 1_000);
        let end = 1_000 + BIRTHDAY_DURATION_US + LISTEN_MARGIN_US;
        assert_eq!(listen.deadline_us(), end);
        assert!(!listen.done(end - 1));
        assert!(listen.done(end));
        assert_eq!(listen.handle_datagram(0, &probe_packet(&t), open_side, end), None, "too late");
        assert_eq!(listen.winner(), None);
        let late_but_in_margin = listen.handle_datagram(0, &probe_packet(&t), open_side, end - 1);
        assert!(late_but_in_margin.is_some(), "a probe sent at the end and still on its way counts");
    }
}
