//! How many threads carry a node's packets (issue 17). Every packet crosses tasks: the TUN reader, quinn's
//! endpoint and connection drivers, the path readers. On more than one thread each hand-over between them
//! can be a wake-up on another core, and the packet's bytes move between caches; on one thread it is a queue
//! push. Measured on this project's 2-CPU machine (both ends, iperf3 and the kernel on it):
//! - bench-tunnel, one TCP stream: one thread 3263-3332 Mbit/s at 4.2-4.3 s of CPU per GB, two threads
//!   2646-2669 Mbit/s at 4.9-5.2 s/GB (UDP 1577-1598 against 1067-1179 Mbit/s);
//! - but a 2 Gbit/s UDP flood over two unshaped WANs losing 5 % (tests/test_limits.py), where the sender
//!   also resends what the receiver reports lost: one thread delivered 125-176 Mbit/s, two 264-270.
//!
//! So the default stays two threads, and `node.io_threads` sets one where bulk TCP matters most.

/// The most threads a node may be given (more than the few tasks in flight at once would only wait).
pub const MAX_IO_THREADS: usize = 8;

/// Threads without a setting.
pub const DEFAULT_IO_THREADS: usize = 2;

/// The threads to run with and why: `configured` (the config's `node.io_threads`) if set, else the default.
/// A configured count outside 1..=`MAX_IO_THREADS` is an error.
pub fn choose(configured: Option<usize>) -> Result<(usize, String), String> {
    match configured {
        Some(n @ 1..=MAX_IO_THREADS) => Ok((n, "set by node.io_threads".to_string())),
        Some(n) => Err(format!("node.io_threads = {n}: must be from 1 to {MAX_IO_THREADS}")),
        None => Ok((DEFAULT_IO_THREADS, "the default".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_unless_configured_and_a_bad_count_is_an_error() {
        assert_eq!(choose(None).unwrap(), (DEFAULT_IO_THREADS, "the default".to_string()));
        assert_eq!(choose(Some(1)).unwrap(), (1, "set by node.io_threads".to_string()));
        assert!(choose(Some(0)).unwrap_err().contains("from 1 to"));
        assert!(choose(Some(MAX_IO_THREADS + 1)).is_err());
    }
}
