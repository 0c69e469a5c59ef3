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

/// A quinn socket that counts what passes through it and otherwise is the socket quinn's runtime made.
struct CountedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    counters: Arc<BatchCounters>,
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
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A QUIC endpoint on `socket` as `quinn::Endpoint::new` makes it, whose system calls are counted in
/// `counters`.
pub fn endpoint(
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
    counters: Arc<BatchCounters>,
) -> io::Result<quinn::Endpoint> {
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = runtime.wrap_udp_socket(socket)?;
    quinn::Endpoint::new_with_abstract_socket(config, server, Arc::new(CountedSocket { inner, counters }), runtime)
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

    #[tokio::test]
    async fn an_endpoint_counts_its_calls_and_datagrams() {
        let counters = Arc::new(BatchCounters::default());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let endpoint = endpoint(quinn::EndpointConfig::default(), None, socket, counters.clone()).unwrap();
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
