//! A userspace delay line over a TUN device: the lab's replacement for netem's `delay`/`jitter`.
//!
//! The lab routes every packet crossing a link namespace into a TUN device (policy rule on the input
//! interface); this loop reads each packet, holds it until its release time and writes it back, after
//! which the kernel routes it on by its main table. Order is preserved: jitter varies the spacing of
//! packets but never reorders them (reordering is a separate impairment, not a property of a link).
//!
//! Stages: `reader` thread (TUN read → `DelayQueue::push`) → `writer` thread (`DelayQueue::pop_due` → TUN write).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quicether_io::tun::open_tun;

/// Upper bound on packets held: 300 Mbit/s × 200 ms of 1500-byte packets is ~5000; beyond this we drop
/// (a link with a bounded queue), so a stalled writer can never grow memory without limit.
pub const MAX_QUEUED_PACKETS: usize = 32_768;
/// How often the reader wakes up to check for shutdown when no packet arrives.
const READ_POLL_MS: i32 = 100;
/// Largest packet a TUN device hands us (64 KiB IP maximum).
const MAX_PACKET: usize = 65_536;

/// Delay settings in microseconds. `jitter_us` spreads each packet's delay uniformly in ±jitter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelaySettings {
    pub delay_us: u64,
    pub jitter_us: u64,
}

/// The pure part of the delay line: release times, order and bounds. Times are microseconds on any
/// monotonic clock the caller chooses.
pub struct DelayQueue {
    queue: VecDeque<(u64, Vec<u8>)>,
    last_release_us: u64,
    rng: u64,
    pub dropped: u64,
}

impl DelayQueue {
    pub fn new(seed: u64) -> Self {
        Self { queue: VecDeque::new(), last_release_us: 0, rng: seed | 1, dropped: 0 }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: fast, good enough for spreading delays; not for anything secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Queues `packet` received at `now_us`; returns false (and counts a drop) when the queue is full.
    pub fn push(&mut self, packet: Vec<u8>, now_us: u64, settings: DelaySettings) -> bool {
        if self.queue.len() >= MAX_QUEUED_PACKETS {
            self.dropped += 1;
            return false;
        }
        let mut release = now_us + settings.delay_us;
        if settings.jitter_us > 0 {
            let span = 2 * settings.jitter_us + 1;
            let offset = self.next_random() % span;
            release = (release + offset).saturating_sub(settings.jitter_us).max(now_us);
        }
        // Keep FIFO order: a packet never leaves before the one queued ahead of it.
        release = release.max(self.last_release_us);
        self.last_release_us = release;
        self.queue.push_back((release, packet));
        true
    }

    /// Release time of the packet at the head, if any.
    pub fn next_release_us(&self) -> Option<u64> {
        self.queue.front().map(|(t, _)| *t)
    }

    /// Removes and returns the head packet if it is due at `now_us`.
    pub fn pop_due(&mut self, now_us: u64) -> Option<Vec<u8>> {
        match self.queue.front() {
            Some((t, _)) if *t <= now_us => self.queue.pop_front().map(|(_, p)| p),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Counters a running delay line exposes.
#[derive(Clone, Copy, Debug, Default)]
pub struct DelayLineStats {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub queued: u64,
}

struct Shared {
    queue: Mutex<DelayQueue>,
    wake: Condvar,
    stop: AtomicBool,
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
    fn settings(&self) -> DelaySettings {
        DelaySettings {
            delay_us: self.delay_us.load(Ordering::Relaxed),
            jitter_us: self.jitter_us.load(Ordering::Relaxed),
        }
    }
}

/// A running delay line on one TUN device; stops and joins its threads on `stop()` or drop.
pub struct DelayLine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayLine {
    pub fn start(tun_name: &str, settings: DelaySettings) -> io::Result<Self> {
        let (tun, _) = open_tun(tun_name, false)?;
        let writer_tun = tun.try_clone()?;
        let epoch = Instant::now();
        let shared = Arc::new(Shared {
            queue: Mutex::new(DelayQueue::new(epoch.elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15)),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            delay_us: AtomicU64::new(settings.delay_us),
            jitter_us: AtomicU64::new(settings.jitter_us),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            epoch,
        });
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new().name("delay-read".into()).spawn(move || reader(tun, &shared))?
        };
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new().name("delay-write".into()).spawn(move || writer(writer_tun, &shared))?
        };
        Ok(Self { shared, threads: vec![reader, writer] })
    }

    pub fn set(&self, settings: DelaySettings) {
        self.shared.delay_us.store(settings.delay_us, Ordering::Relaxed);
        self.shared.jitter_us.store(settings.jitter_us, Ordering::Relaxed);
    }

    pub fn settings(&self) -> DelaySettings {
        self.shared.settings()
    }

    pub fn stats(&self) -> DelayLineStats {
        let q = self.shared.queue.lock().unwrap();
        DelayLineStats {
            packets: self.shared.packets.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            dropped: q.dropped,
            queued: q.len() as u64,
        }
    }

    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_readable(file: &File, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    match rc {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

fn reader(mut tun: File, shared: &Shared) {
    let mut buf = vec![0u8; MAX_PACKET];
    while !shared.stop.load(Ordering::Relaxed) {
        match wait_readable(&tun, READ_POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        let n = match tun.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let now = shared.now_us();
        let settings = shared.settings();
        let mut q = shared.queue.lock().unwrap();
        let was_empty = q.is_empty();
        if q.push(buf[..n].to_vec(), now, settings) && was_empty {
            shared.wake.notify_one();
        }
    }
}

fn writer(mut tun: File, shared: &Shared) {
    let mut q = shared.queue.lock().unwrap();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let now = shared.now_us();
        if let Some(packet) = q.pop_due(now) {
            drop(q);
            // A failed write (e.g. the device went down) loses this packet only, like a link would.
            if tun.write(&packet).is_ok() {
                shared.packets.fetch_add(1, Ordering::Relaxed);
                shared.bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
            }
            q = shared.queue.lock().unwrap();
            continue;
        }
        let wait = match q.next_release_us() {
            Some(t) => Duration::from_micros(t.saturating_sub(now)),
            None => Duration::from_millis(READ_POLL_MS as u64),
        };
        q = shared.wake.wait_timeout(q, wait).unwrap().0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(delay_us: u64) -> DelaySettings {
        DelaySettings { delay_us, jitter_us: 0 }
    }

    #[test]
    fn releases_after_the_delay_not_before() {
        let mut q = DelayQueue::new(1);
        assert!(q.push(vec![1], 1_000, fixed(5_000)));
        assert_eq!(q.pop_due(5_999), None);
        assert_eq!(q.next_release_us(), Some(6_000));
        assert_eq!(q.pop_due(6_000), Some(vec![1]));
        assert!(q.is_empty());
    }

    #[test]
    fn jitter_spreads_delays_but_keeps_order() {
        let mut q = DelayQueue::new(42);
        let settings = DelaySettings { delay_us: 10_000, jitter_us: 4_000 };
        for i in 0..1000u64 {
            q.push(i.to_le_bytes().to_vec(), i * 10, settings);
        }
        let mut last_release = 0;
        let mut min_extra = u64::MAX;
        let mut max_extra = 0;
        let mut expected = 0u64;
        while let Some(t) = q.next_release_us() {
            assert!(t >= last_release, "release times must not go backwards");
            last_release = t;
            let p = q.pop_due(t).unwrap();
            let i = u64::from_le_bytes(p.try_into().unwrap());
            assert_eq!(i, expected, "packets must leave in arrival order");
            let extra = t - i * 10;
            min_extra = min_extra.min(extra);
            max_extra = max_extra.max(extra);
            expected += 1;
        }
        assert_eq!(expected, 1000);
        assert!(min_extra >= 6_000, "never less than delay - jitter: {min_extra}");
        assert!(max_extra >= 13_000, "jitter actually varies the delay: {max_extra}");
    }

    #[test]
    fn bounded_queue_drops_instead_of_growing() {
        let mut q = DelayQueue::new(7);
        for _ in 0..MAX_QUEUED_PACKETS {
            assert!(q.push(vec![0], 0, fixed(1_000_000)));
        }
        assert!(!q.push(vec![0], 0, fixed(1_000_000)));
        assert_eq!(q.dropped, 1);
        assert_eq!(q.len(), MAX_QUEUED_PACKETS);
    }
}
