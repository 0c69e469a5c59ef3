//! Floods at a node's DHT port (issue "Reliability, security and operability"), as `qe-flood` sends them:
//! - `dht-queries`: well-formed KRPC requests (BEP 5, BEP 44) that are bogus: a fresh random node id each,
//!   ping, find_node, get_peers and get for random targets, and puts with a token never issued and a
//!   signature that does not verify, in turn;
//! - `dht-store`: what a node's stores hold, as much as it takes: first a `get` for the token the node
//!   issues to this address, then valid BEP 44 mutable items under fresh keys and announce_peer for random
//!   info-hashes with that token, in turn (each one the node accepts takes room in its stores).
//!
//! Messages are bencoded here by hand: dictionary keys in sorted order, as BEP 3 wants.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mainline::{MutableItem, SigningKey};

use crate::flood::{bind_socket, pace, Flood, Noise, Sent};

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(format!("{}:", b.len()).as_bytes());
    out.extend_from_slice(b);
}

fn int(out: &mut Vec<u8>, i: i64) {
    out.extend_from_slice(format!("i{i}e").as_bytes());
}

/// A KRPC request: `d 1:a d <args> e 1:q <query> 1:t <tid> 1:y 1:q e`; `args` are bencoded key/value
/// pairs already in key order, without the id (which sorts first among them but after none: added here).
fn request(query: &str, id: &[u8; 20], tid: u32, args: &[u8]) -> Vec<u8> {
    let mut out = b"d1:ad".to_vec();
    bytes(&mut out, b"id");
    bytes(&mut out, id);
    out.extend_from_slice(args);
    out.push(b'e');
    bytes(&mut out, b"q");
    bytes(&mut out, query.as_bytes());
    bytes(&mut out, b"t");
    bytes(&mut out, &tid.to_be_bytes());
    bytes(&mut out, b"y");
    bytes(&mut out, b"q");
    out.push(b'e');
    out
}

fn random<const N: usize>(noise: &mut Noise) -> [u8; N] {
    let mut b = [0u8; N];
    noise.fill(&mut b);
    b
}

/// A put of a mutable item (BEP 44): k, salt, seq, sig, token, v, in key order.
fn put_mutable(id: &[u8; 20], tid: u32, item: &MutableItem, salt: &[u8], token: &[u8]) -> Vec<u8> {
    let mut args = Vec::new();
    bytes(&mut args, b"k");
    bytes(&mut args, item.key());
    bytes(&mut args, b"salt");
    bytes(&mut args, salt);
    bytes(&mut args, b"seq");
    int(&mut args, item.seq());
    bytes(&mut args, b"sig");
    bytes(&mut args, item.signature());
    bytes(&mut args, b"token");
    bytes(&mut args, token);
    bytes(&mut args, b"v");
    bytes(&mut args, item.value());
    request("put", id, tid, &args)
}

/// One bogus request of kind `n % 5`.
fn bogus_request(noise: &mut Noise, n: u64) -> Vec<u8> {
    let id: [u8; 20] = random(noise);
    let tid = noise.next() as u32;
    let target: [u8; 20] = random(noise);
    let mut args = Vec::new();
    match n % 5 {
        0 => request("ping", &id, tid, &[]),
        1 => {
            bytes(&mut args, b"target");
            bytes(&mut args, &target);
            request("find_node", &id, tid, &args)
        }
        2 => {
            bytes(&mut args, b"info_hash");
            bytes(&mut args, &target);
            request("get_peers", &id, tid, &args)
        }
        3 => {
            bytes(&mut args, b"target");
            bytes(&mut args, &target);
            request("get", &id, tid, &args)
        }
        _ => {
            // A put whose token was never issued and whose signature is noise.
            let (key, sig): ([u8; 32], [u8; 64]) = (random(noise), random(noise));
            bytes(&mut args, b"k");
            bytes(&mut args, &key);
            bytes(&mut args, b"seq");
            int(&mut args, 1);
            bytes(&mut args, b"sig");
            bytes(&mut args, &sig);
            bytes(&mut args, b"token");
            bytes(&mut args, &random::<4>(noise));
            bytes(&mut args, b"v");
            bytes(&mut args, &random::<200>(noise));
            request("put", &id, tid, &args)
        }
    }
}

/// The token in a KRPC response (`5:token<len>:<bytes>`), if any.
fn token_of(response: &[u8]) -> Option<Vec<u8>> {
    let at = response.windows(7).position(|w| w == b"5:token")? + 7;
    let colon = at + response[at..].iter().position(|&c| c == b':')?;
    let len: usize = std::str::from_utf8(&response[at..colon]).ok()?.parse().ok()?;
    response.get(colon + 1..colon + 1 + len).map(<[u8]>::to_vec)
}

/// Asks `target` for a token for this socket's address (a `get`), a few times if no answer comes.
fn fetch_token(socket: &UdpSocket, target: SocketAddr, noise: &mut Noise) -> Result<Vec<u8>, String> {
    socket.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        let mut args = Vec::new();
        bytes(&mut args, b"target");
        bytes(&mut args, &random::<20>(noise));
        let _ = socket.send_to(&request("get", &random(noise), 1, &args), target);
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            if let Some(token) = token_of(&buf[..len]) {
                return Ok(token);
            }
        }
    }
    Err(format!("no token from {target}: is it a DHT node in server mode?"))
}

pub(crate) fn queries(flood: &Flood, until: Instant, sent: &Sent, noise: &mut Noise) -> Result<(), String> {
    let socket = bind_socket(flood.target, flood.bind).map_err(|e| format!("bind: {e}"))?;
    let mut n = 0u64;
    pace(flood.target, flood.rate, until, sent, Some(socket), || {
        n += 1;
        bogus_request(noise, n)
    });
    Ok(())
}

/// Three mutable items for each announce: the items are what a QuicEther node stores for its members.
pub(crate) fn store(flood: &Flood, until: Instant, sent: &Sent, noise: &mut Noise) -> Result<(), String> {
    let socket = bind_socket(flood.target, flood.bind).map_err(|e| format!("bind: {e}"))?;
    let token = fetch_token(&socket, flood.target, noise)?;
    let answers = socket.try_clone().map_err(|e| e.to_string())?;
    let mut n = 0u64;
    std::thread::scope(|scope| {
        scope.spawn(|| count_answers(&answers, until + Duration::from_secs(1), sent));
        fill(flood, until, sent, noise, socket, &token, &mut n);
    });
    Ok(())
}

/// Counts the node's answers on `socket` until `until`: "y" is "r" (done) or "e" (an error).
fn count_answers(socket: &UdpSocket, until: Instant, sent: &Sent) {
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            let answer = &buf[..len];
            if answer.windows(6).any(|w| w == b"1:y1:r") {
                sent.accepted.fetch_add(1, Ordering::Relaxed);
            } else if answer.windows(6).any(|w| w == b"1:y1:e") {
                sent.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn fill(flood: &Flood, until: Instant, sent: &Sent, noise: &mut Noise, socket: UdpSocket, token: &[u8], n: &mut u64) {
    pace(flood.target, flood.rate, until, sent, Some(socket), || {
        *n += 1;
        let id: [u8; 20] = random(noise);
        let tid = noise.next() as u32;
        if (*n).is_multiple_of(4) {
            let mut args = Vec::new();
            bytes(&mut args, b"info_hash");
            bytes(&mut args, &random::<20>(noise));
            bytes(&mut args, b"port");
            int(&mut args, 6881);
            bytes(&mut args, b"token");
            bytes(&mut args, token);
            return request("announce_peer", &id, tid, &args);
        }
        let salt: [u8; 16] = random(noise);
        let item = MutableItem::new(SigningKey::from_bytes(&random(noise)), &random::<900>(noise), 1, Some(&salt));
        put_mutable(&id, tid, &item, &salt, token)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_bencoded_with_sorted_keys_and_the_token_is_found() {
        let id = [b'a'; 20];
        assert_eq!(
            request("ping", &id, 0x4142, &[]),
            b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t4:\0\0AB1:y1:qe".to_vec()
        );
        assert_eq!(token_of(b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaa5:token4:wxyze1:t2:AB1:y1:re"), Some(b"wxyz".to_vec()));
        assert_eq!(token_of(b"d1:rd5:token9:shorte"), None);
    }
}
