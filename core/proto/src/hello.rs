//! The path hello: the first thing on a new path, on one bidirectional QUIC stream. The dialer says which
//! of its WANs the path leaves from and whether that WAN is a backup; the acceptor answers `ok`, the
//! address it sees the dialer at (its public address after any NAT) and its own WAN. In TLS 1.3 a client
//! finishes its handshake before the server has checked the client's certificate, so the answer is also
//! the dialer's proof that it was accepted.
//!
//! ```text
//! hello    "QEH1" | u8 backup (1: backup) | WAN label (at most MAX_HELLO - 5 bytes)
//! answer   "ok" [" " observed address "ip:port"] [" " acceptor's WAN label]     at most MAX_ANSWER bytes
//! ```
//! Labels from the peer are made safe (`peer_text::safe_label`) before anything sees them.

use std::net::SocketAddr;

use crate::peer_text::safe_label;

pub const MAGIC: &[u8; 4] = b"QEH1";
const OK: &[u8] = b"ok";
/// WAN names are short labels; anything longer is not a hello.
pub const MAX_HELLO: usize = 4 + 1 + 64;
pub const MAX_ANSWER: usize = 128;

#[derive(Debug, PartialEq, Eq)]
pub struct Hello {
    /// The dialer's WAN, made safe.
    pub wan: String,
    pub backup: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The address the acceptor sees the dialer at, if it said (and it parses).
    pub observed: Option<SocketAddr>,
    /// The acceptor's WAN, made safe, if it said.
    pub peer_wan: Option<String>,
}

pub fn encode_hello(wan: &str, backup: bool) -> Vec<u8> {
    let mut hello = MAGIC.to_vec();
    hello.push(backup as u8);
    hello.extend_from_slice(&wan.as_bytes()[..wan.len().min(MAX_HELLO - 5)]);
    hello
}

pub fn decode_hello(data: &[u8]) -> Result<Hello, &'static str> {
    if data.len() < 5 || data.len() > MAX_HELLO || &data[..4] != MAGIC {
        return Err("not a path hello");
    }
    Ok(Hello { wan: safe_label(&data[5..]), backup: data[4] == 1 })
}

/// The acceptor's answer (`our_wan` is one of our own WAN names, a safe label).
pub fn encode_answer(observed: SocketAddr, our_wan: &str) -> Vec<u8> {
    let mut answer = format!("ok {observed} {our_wan}").into_bytes();
    answer.truncate(MAX_ANSWER);
    answer
}

pub fn decode_answer(data: &[u8]) -> Result<Answer, &'static str> {
    if data.len() > MAX_ANSWER || !data.starts_with(OK) {
        return Err("peer answered the path hello wrongly");
    }
    let mut words = data[OK.len()..].split(|&c| c == b' ').filter(|w| !w.is_empty());
    let observed = words.next().and_then(|w| std::str::from_utf8(w).ok()).and_then(|w| w.parse().ok());
    let peer_wan = words.next().map(safe_label);
    Ok(Answer { observed, peer_wan })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_answer_read_back_and_junk_is_refused_or_made_safe() {
        assert_eq!(decode_hello(&encode_hello("wan0", true)), Ok(Hello { wan: "wan0".into(), backup: true }));
        assert_eq!(decode_hello(&encode_hello("", false)), Ok(Hello { wan: "?".into(), backup: false }));
        assert_eq!(decode_hello(b"QEH1\x01wan\n0"), Ok(Hello { wan: "wan_0".into(), backup: true }));
        assert!(decode_hello(b"QEH2\x00wan0").is_err() && decode_hello(b"QEH1").is_err());
        assert!(decode_hello(&[b"QEH1\x00".as_slice(), &[b'a'; 65]].concat()).is_err(), "longer than a label");
        let answer = encode_answer("198.51.100.7:40000".parse().unwrap(), "lte");
        assert_eq!(
            decode_answer(&answer),
            Ok(Answer { observed: Some("198.51.100.7:40000".parse().unwrap()), peer_wan: Some("lte".into()) })
        );
        assert_eq!(decode_answer(b"ok"), Ok(Answer { observed: None, peer_wan: None }));
        assert_eq!(decode_answer(b"ok nonsense x\x00y").unwrap().peer_wan.as_deref(), Some("x_y"));
        assert!(decode_answer(b"no").is_err() && decode_answer(&[b'o', b'k'].repeat(65)).is_err());
    }
}
