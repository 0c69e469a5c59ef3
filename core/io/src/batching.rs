//! How many datagrams each UDP system call moves: the node's QUIC endpoints send through quinn-udp, which
//! hands a whole GSO batch to one sendmsg and takes a GRO batch (or several messages) from one recvmmsg.
//! `CountedSocket` sits between quinn and its socket and counts calls and datagrams, so bench-tunnel and
//! status can show how well the batching is used under load (issue "Tunnel throughput").

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// Calls and datagrams, both ways, over every socket of the node.
#[derive(Debug, Default)]
pub struct BatchCounters {
    send_calls: AtomicU64,
    sent_datagrams: AtomicU64,
    recv_calls: AtomicU64,
    received_datagrams: AtomicU64,
}

impl BatchCounters {
    /// (send calls, datagrams sent, receive calls, datagrams received) so far.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.send_calls.load(Ordering::Relaxed),
            self.sent_datagrams.load(Ordering::Relaxed),
            self.recv_calls.load(Ordering::Relaxed),
            self.received_datagrams.load(Ordering::Relaxed),
        )
    }
}

/// The datagrams in `len` bytes cut at `stride` (a GSO or GRO batch: all of stride size but the last).
fn datagrams(len: usize, stride: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    let stride = if stride == 0 { len } else { stride.min(len) };
    len.div_ceil(stride) as u64
}

/// The UDP payload quinn's endpoints accept unless told otherwise (`EndpointConfig::max_udp_payload_size`).
const QUINN_DEFAULT_UDP_PAYLOAD: usize = 1472;
/// The largest UDP payload QUIC allows (RFC 9000, max_udp_payload_size).
const MAX_QUIC_UDP_PAYLOAD: u16 = 65527;

/// The most payload bytes one UDP GSO send may carry: its datagrams travel as one UDP packet inside the
/// kernel, whose IPv4 total length (65535) holds the IP and UDP headers too (IPv6 would allow 20 more).
const GSO_MAX_BYTES: usize = u16::MAX as usize - 20 - 8;

/// Datagrams of up to `max_datagram` bytes that fit in one GSO send (at least 1). quinn asks this many
/// of full size at most (its own cap is 32, `core/vendor`); with a large path MTU that cap alone would
/// make sends the kernel refuses (EMSGSIZE: 32 × 8972 bytes at path MTU 9000), and quinn-udp drops them.
fn gso_segments_fitting(max_datagram: usize) -> usize {
    (GSO_MAX_BYTES / max_datagram.max(1)).max(1)
}

/// A quinn socket that counts what passes through it, caps GSO batches at what one send can carry, and
/// otherwise is the socket quinn's runtime made.
struct CountedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    counters: Arc<BatchCounters>,
    max_segments: usize,
}

impl fmt::Debug for CountedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountedSocket").field("inner", &self.inner).finish()
    }
}

impl AsyncUdpSocket for CountedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        let len = transmit.contents.len();
        self.counters.send_calls.fetch_add(1, Ordering::Relaxed);
        self.counters.sent_datagrams.fetch_add(datagrams(len, transmit.segment_size.unwrap_or(len)), Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let poll = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(messages)) = poll {
            let received: u64 = meta[..messages].iter().map(|m| datagrams(m.len, m.stride)).sum();
            self.counters.recv_calls.fetch_add(1, Ordering::Relaxed);
            self.counters.received_datagrams.fetch_add(received, Ordering::Relaxed);
        }
        poll
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.max_segments)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// `config` for an endpoint whose connections send datagrams of up to `max_datagram` bytes: it tells its
/// peers it takes that much (quinn's `max_udp_payload_size`, which also sizes its receive buffers).
/// Raised, never lowered: quinn's default (1472, a 1500-byte path) is what peers set up for other path MTUs
/// expect of us; a node set up for a larger path MTU must say it takes such packets, or its peers keep
/// theirs under 1472 and the path is refused as too small for the tunnel.
pub fn accepting(mut config: quinn::EndpointConfig, max_datagram: usize) -> io::Result<quinn::EndpointConfig> {
    if max_datagram > QUINN_DEFAULT_UDP_PAYLOAD {
        let payload = u16::try_from(max_datagram).unwrap_or(u16::MAX).min(MAX_QUIC_UDP_PAYLOAD);
        config.max_udp_payload_size(payload).map_err(io::Error::other)?;
    }
    Ok(config)
}

/// A QUIC endpoint on `socket` as `quinn::Endpoint::new` makes it, whose system calls are counted in
/// `counters`, for connections whose datagrams are at most `max_datagram` bytes.
pub fn endpoint(
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
    counters: Arc<BatchCounters>,
    max_datagram: usize,
) -> io::Result<quinn::Endpoint> {
    let config = accepting(config, max_datagram)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = runtime.wrap_udp_socket(socket)?;
    let socket = CountedSocket { inner, counters, max_segments: gso_segments_fitting(max_datagram) };
    quinn::Endpoint::new_with_abstract_socket(config, server, Arc::new(socket), runtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{self, generate_seed, CurrentIdentity, Identity};

    #[test]
    fn a_batch_counts_each_datagram_the_last_one_short() {
        assert_eq!(datagrams(0, 1200), 0);
        assert_eq!(datagrams(1200, 1200), 1);
        assert_eq!(datagrams(3 * 1200 + 17, 1200), 4);
        assert_eq!(datagrams(500, 0), 1, "no stride: one datagram");
        assert_eq!(datagrams(500, 1200), 1, "stride above the length: one datagram");
    }

    #[test]
    fn a_gso_send_never_exceeds_what_the_kernel_takes() {
        assert_eq!(gso_segments_fitting(1452), 45, "path MTU 1500: quinn's own cap of 32 binds");
        assert_eq!(gso_segments_fitting(8972), 7, "path MTU 9000");
        assert!(gso_segments_fitting(8972) * 8972 <= GSO_MAX_BYTES);
        // 30 x 2184 = 65520 bytes of payload, 65548 with the IP and UDP headers: over the limit.
        assert_eq!(gso_segments_fitting(2184), 29);
        assert_eq!(gso_segments_fitting(u16::MAX as usize), 1);
        assert_eq!(gso_segments_fitting(0), GSO_MAX_BYTES, "no size: no cap of its own");
    }

    #[tokio::test]
    async fn an_endpoint_counts_its_calls_and_datagrams() {
        let counters = Arc::new(BatchCounters::default());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let endpoint = endpoint(quinn::EndpointConfig::default(), None, socket, counters.clone(), 1452).unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // A client Initial to a silent peer: sent, and sent again on the loss timer; nothing comes back.
        let me = Identity::from_seed(&generate_seed(), None).unwrap();
        let crypto = tls::quic_client_config(CurrentIdentity::new(&me).unwrap(), [7; 32], None).unwrap();
        let client = quinn::ClientConfig::new(Arc::new(crypto));
        let _connecting = endpoint.connect_with(client, peer.local_addr().unwrap(), tls::SERVER_NAME).unwrap();
        let mut buf = [0u8; 2048];
        let wait = std::time::Duration::from_secs(5);
        let (len, from) = tokio::time::timeout(wait, peer.recv_from(&mut buf)).await.unwrap().unwrap();
        assert!(len >= 1200, "a padded Initial");
        peer.send_to(b"not quic", from).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while counters.snapshot().2 == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (send_calls, sent, recv_calls, received) = counters.snapshot();
        assert!(send_calls >= 1 && sent >= send_calls, "{send_calls} calls, {sent} datagrams");
        assert_eq!((recv_calls, received), (1, 1));
    }
}
