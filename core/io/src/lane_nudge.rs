//! A lane socket whose reader does not wait forever for a wakeup the kernel never sends.
//!
//! Seen in the lab (kernel 6.18, 64 lane connections filling their buffers under CPU load): an MPTCP
//! socket held received data and its reader was not woken. tokio waits on edge-triggered epoll, so a lost
//! edge can stall that direction for as long as no new data comes, and a full receive window means none
//! does. So while a read waits, a timer also tries the socket itself, after 250 ms and then at doubling
//! intervals up to a second (an idle connection costs one failed `recv` a second). A try that finds data
//! is counted (`missed_wakeups`), and the socket is then read directly until it would block, as tokio's
//! view of it is stale. Writes go through tokio unchanged.
//!
//! Seen too, rarer (about 1 connection in 1000 under that load): an MPTCP socket whose received data sits
//! in its receive queue (`ss -M` shows it; SO_MEMINFO counts it) while `recv` says it would block, for good.
//! That direction of the connection is dead, and waiting for it would hang the LAN host's download until it
//! gives up. So a read whose tries have found nothing while the socket held received bytes, without a
//! break, for `STUCK_AFTER`, fails (counted as `stuck_resets`): the relay then resets the connection's
//! ends, and the host sees a reset it can retry from instead of a hang. Out-of-order bytes held while a
//! slower subflow's catch up also count as held, but they are delivered within a few round trips, or a
//! retransmission on another subflow: a minute of it is a connection that does not recover.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

const FIRST_TRY: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(1);
pub const STUCK_AFTER: Duration = Duration::from_secs(60);
/// linux/sock_diag.h: SO_MEMINFO's first entry, the bytes in the socket's receive queues.
const SK_MEMINFO_RMEM_ALLOC: usize = 0;
const SK_MEMINFO_VARS: usize = 9;

/// When a waiting read's socket has held received bytes that no try could read, without a break.
#[derive(Debug, Default)]
pub struct StuckWatch {
    since: Option<Instant>,
}

impl StuckWatch {
    /// A try at `now` found nothing to read; `holds_bytes`: the socket held received bytes meanwhile.
    /// True once that has gone on for `STUCK_AFTER`.
    pub fn found_nothing(&mut self, now: Instant, holds_bytes: bool) -> bool {
        if !holds_bytes {
            self.since = None;
            return false;
        }
        now.duration_since(*self.since.get_or_insert(now)) >= STUCK_AFTER
    }

    pub fn progressed(&mut self) {
        self.since = None;
    }
}

pub struct NudgedStream {
    inner: TcpStream,
    sleep: Pin<Box<Sleep>>,
    /// The timer runs for the read that is waiting now.
    armed: bool,
    wait: Duration,
    /// The last try found data tokio had not been told of: read directly until the socket would block.
    direct: bool,
    stuck: StuckWatch,
    missed_wakeups: Arc<AtomicU64>,
    stuck_resets: Arc<AtomicU64>,
}

impl NudgedStream {
    /// `missed_wakeups` counts the tries that found data, `stuck_resets` the reads failed as stuck.
    pub fn new(inner: TcpStream, missed_wakeups: Arc<AtomicU64>, stuck_resets: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(FIRST_TRY)),
            armed: false,
            wait: FIRST_TRY,
            direct: false,
            stuck: StuckWatch::default(),
            missed_wakeups,
            stuck_resets,
        }
    }

    fn read_progressed(&mut self) {
        self.armed = false;
        self.wait = FIRST_TRY;
        self.stuck.progressed();
    }

    /// True when the socket should be tried now; otherwise the timer will wake the task.
    fn try_due(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            self.sleep.as_mut().reset(Instant::now() + self.wait);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.wait = (self.wait * 2).min(LONGEST_WAIT);
        self.sleep.as_mut().reset(Instant::now() + self.wait);
        // Registers the task with the timer again, for a try that finds nothing.
        let _ = self.sleep.as_mut().poll(cx);
        true
    }

    fn recv(&self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        // SAFETY: recv(2) writes at most `unfilled.len()` bytes into memory the ReadBuf owns; only what it
        // reports written is marked initialized.
        unsafe {
            let unfilled = buf.unfilled_mut();
            let n =
                libc::recv(self.inner.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len(), libc::MSG_DONTWAIT);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            buf.assume_init(n as usize);
            buf.advance(n as usize);
        }
        Ok(())
    }
}

/// The bytes in `socket`'s receive queues (SO_MEMINFO), readable or not; 0 where the kernel does not say.
pub fn received_bytes_held(socket: &impl AsRawFd) -> u32 {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which lives across the call.
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len)
    };
    if rc == 0 {
        info[SK_MEMINFO_RMEM_ALLOC]
    } else {
        0
    }
}

fn would_block(result: &io::Result<()>) -> bool {
    matches!(result, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

impl AsRawFd for NudgedStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl AsyncRead for NudgedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.direct {
            let result = this.recv(buf);
            if !would_block(&result) {
                this.read_progressed();
                return Poll::Ready(result);
            }
            this.direct = false;
        }
        if let Poll::Ready(result) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            this.read_progressed();
            return Poll::Ready(result);
        }
        if this.try_due(cx) {
            let result = this.recv(buf);
            if !would_block(&result) {
                this.missed_wakeups.fetch_add(1, Ordering::Relaxed);
                this.direct = true;
                this.read_progressed();
                return Poll::Ready(result);
            }
            if this.stuck.found_nothing(Instant::now(), received_bytes_held(&this.inner) > 0) {
                this.stuck_resets.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the lane socket holds received bytes it does not deliver",
                )));
            }
        }
        Poll::Pending
    }
}

/// `impl AsyncWrite` for a wrapper of a stream in its field `inner` that changes only how it reads:
/// writes, flushes and shutdowns go to `inner` as they are.
macro_rules! writes_pass_through {
    ([$($generics:tt)*] $wrapper:ty) => {
        impl<$($generics)*> tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use writes_pass_through;

writes_pass_through!([] NudgedStream);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_stuck_only_after_held_bytes_went_unread_without_a_break_for_the_whole_span() {
        let start = Instant::now();
        let mut watch = StuckWatch::default();
        assert!(!watch.found_nothing(start, true));
        assert!(!watch.found_nothing(start + STUCK_AFTER - Duration::from_secs(1), true));
        // Nothing held for a moment (the bytes were a subflow's out-of-order ones, and got through): anew.
        assert!(!watch.found_nothing(start + STUCK_AFTER - Duration::from_millis(500), false));
        assert!(!watch.found_nothing(start + STUCK_AFTER, true));
        assert!(!watch.found_nothing(start + 2 * STUCK_AFTER - Duration::from_secs(1), true));
        assert!(watch.found_nothing(start + 2 * STUCK_AFTER, true));
        // A read that got bytes starts it anew too.
        watch.progressed();
        assert!(!watch.found_nothing(start + 3 * STUCK_AFTER, true));
    }

    #[tokio::test]
    async fn the_received_bytes_a_socket_holds_are_counted_until_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut receiver, _) = listener.accept().await.unwrap();
        assert_eq!(received_bytes_held(&receiver), 0);
        sender.write_all(&[7u8; 5000]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while received_bytes_held(&receiver) == 0 {
            assert!(Instant::now() < deadline, "the bytes never showed as held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut got = [0u8; 5000];
        receiver.read_exact(&mut got).await.unwrap();
        assert_eq!(received_bytes_held(&receiver), 0);
    }
}
