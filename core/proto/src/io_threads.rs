//! How many threads carry a node's packets (issue 17). Every packet crosses tasks: the TUN reader, quinn's
//! endpoint and connection drivers, the path readers. On more than one thread each hand-over between them
//! is a wake-up on another core and the packet's bytes move between caches; on one thread a hand-over is a
//! queue push. Measured with bench-tunnel on this project's 2-CPU machine (both ends, iperf3 and the kernel
//! on it): one thread moved 3263-3332 Mbit/s in one TCP stream at 4.2-4.3 s of CPU per GB, two threads
//! 2646-2669 Mbit/s at 4.9-5.2 s/GB. A 2-CPU router also needs a CPU for the kernel's own work (the LAN and
//! WAN ports, NAT). With more CPUs a node keeps the two threads it always had: this machine cannot measure
//! that case, so `node.io_threads` sets the count where the default is not the best.

/// The most threads a node may be given (more than the few tasks in flight at once would only wait).
pub const MAX_IO_THREADS: usize = 8;

/// Machines with at most this many CPUs get one thread by default.
pub const ONE_THREAD_UP_TO_CPUS: usize = 2;

/// The threads to run with and why: `configured` (the config's `node.io_threads`) if set, else by the CPUs
/// the process may use (`cpus`). A configured count outside 1..=`MAX_IO_THREADS` is an error.
pub fn choose(configured: Option<usize>, cpus: usize) -> Result<(usize, String), String> {
    match configured {
        Some(n @ 1..=MAX_IO_THREADS) => Ok((n, "set by node.io_threads".to_string())),
        Some(n) => Err(format!("node.io_threads = {n}: must be from 1 to {MAX_IO_THREADS}")),
        None if cpus <= ONE_THREAD_UP_TO_CPUS => Ok((1, format!("{cpus} CPUs: the kernel keeps the other"))),
        None => Ok((2, format!("{cpus} CPUs"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_machines_get_one_thread_unless_configured_and_a_bad_count_is_an_error() {
        assert_eq!(choose(None, 1).unwrap().0, 1);
        assert_eq!(choose(None, 2).unwrap().0, 1);
        assert_eq!(choose(None, 4).unwrap().0, 2);
        assert_eq!(choose(Some(3), 2).unwrap(), (3, "set by node.io_threads".to_string()));
        assert!(choose(Some(0), 4).unwrap_err().contains("from 1 to"));
        assert!(choose(Some(MAX_IO_THREADS + 1), 4).is_err());
    }
}
