//! A plain mainline DHT node in server mode, for the lab's private DHT (none of them a QuicEther member):
//!
//!     dht_node ADDR [BOOTSTRAP,…]      e.g. dht_node 127.0.0.1:7000 127.0.0.1:6999
//!
//! Binds ADDR (IPv4 ip:port), bootstraps from the comma-separated list (none: it is the first node),
//! prints `ready <ip:port>` on stdout once the socket is bound, then serves until killed.

use std::net::SocketAddrV4;
use std::process::ExitCode;

use mainline::Dht;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.first().and_then(|a| a.parse::<SocketAddrV4>().ok()) else {
        eprintln!("usage: dht_node IP:PORT [BOOTSTRAP_IP:PORT,…]");
        return ExitCode::from(2);
    };
    let bootstrap: Vec<String> =
        args.get(1).map(|b| b.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default();
    if let Some(bad) = bootstrap.iter().find(|b| b.parse::<SocketAddrV4>().is_err()) {
        eprintln!("dht_node: bootstrap entry is not an IPv4 ip:port: {bad:?}");
        return ExitCode::from(2);
    }
    let mut builder = Dht::builder();
    builder.server_mode().bind_address(*addr.ip()).port(addr.port());
    if bootstrap.is_empty() {
        builder.no_bootstrap();
    } else {
        builder.bootstrap(&bootstrap);
    }
    let dht = match builder.build() {
        Ok(dht) => dht,
        Err(e) => {
            eprintln!("dht_node: cannot bind {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    println!("ready {addr}");
    // The node lives on its own thread; this one only keeps the handle (dropping it stops the node).
    loop {
        std::thread::park();
        let _ = &dht;
    }
}
