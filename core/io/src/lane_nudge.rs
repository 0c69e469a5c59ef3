//! A lane socket whose reader does not wait forever for a wakeup the kernel never sends.
//!
//! Seen in the lab (kernel 6.18, 64 lane connections filling their buffers under CPU load): an MPTCP
//! socket held received data and its reader was not woken. tokio waits on edge-triggered epoll, so a lost
//! edge can stall that direction for as long as no new data comes, and a full receive window means none
//! does. So while a read waits, a timer also tries the socket itself, after 250 ms and then at doubling
//! intervals up to a second (an idle connection costs one failed `recv` a second). A try that finds data
//! is counted (`missed_wakeups`), and the socket is then read directly until it would block, as tokio's
//! view of it is stale. Writes go through tokio unchanged.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

const FIRST_TRY: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(1);

pub struct NudgedStream {
    inner: TcpStream,
    sleep: Pin<Box<Sleep>>,
    /// The timer runs for the read that is waiting now.
    armed: bool,
    wait: Duration,
    /// The last try found data tokio had not been told of: read directly until the socket would block.
    direct: bool,
    missed_wakeups: Arc<AtomicU64>,
}

impl NudgedStream {
    /// `missed_wakeups` counts the tries that found data.
    pub fn new(inner: TcpStream, missed_wakeups: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(FIRST_TRY)),
            armed: false,
            wait: FIRST_TRY,
            direct: false,
            missed_wakeups,
        }
    }

    fn read_progressed(&mut self) {
        self.armed = false;
        self.wait = FIRST_TRY;
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
        }
        Poll::Pending
    }
}

impl AsyncWrite for NudgedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
