//! Port mappings on the home routers (PCP, else NAT-PMP, else UPnP-IGD: `quicether_proto::portmap`, and `upnp`
//! for the UPnP exchanges): one per local socket that
//! dials (each WAN's, or the listening one on a node without WANs), asked of that WAN's gateway from a
//! socket that leaves by the WAN (bound to its device and address, with its firewall mark), since the
//! router maps the port for the address the request comes from. The mapped public address becomes the
//! socket's first punch candidate (`punch::own_candidates`) and an endpoint of kind "mapped" in our record
//! (the daemon reads `Node::port_mappings`). A mapping is renewed in the background and deleted when its
//! WAN is removed or the node stops. The daemon hears of every change (an `Event::PortMapping`), so a
//! refusal or an unusable answer is logged once, not at every retry.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicether_proto::pcp::NONCE_LEN;
use quicether_proto::portmap::{Mapper, UpnpOutcome, SERVER_PORT};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::events::Event;
use crate::node::Node;
use crate::peer::Shared;
use crate::upnp::{self, Igd};

/// How long a delete waits for the gateway's answer (per try, two tries): it must not hold up a stop.
const RELEASE_WAIT: Duration = Duration::from_millis(250);

/// What status shows of one WAN's mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingStatus {
    pub wan: String,
    pub protocol: &'static str,
    pub gateway: Ipv4Addr,
    pub internal_port: u16,
    /// The mapped public address, and the seconds until it expires (renewed at half its lifetime).
    pub external: Option<SocketAddr>,
    pub expires_in_s: Option<u64>,
    /// Why there is no mapping (None while mapped).
    pub problem: Option<String>,
}

struct Entry {
    gateway: Ipv4Addr,
    socket: Arc<UdpSocket>,
    mapper: Arc<Mutex<Mapper>>,
    /// The internet gateway device found by SSDP (UPnP only), kept for renewals and the deletion.
    igd: Arc<Mutex<Option<Igd>>>,
    task: JoinHandle<()>,
}

/// The mappings of one node, by WAN name.
#[derive(Default)]
pub struct PortMapDesk {
    entries: Mutex<HashMap<String, Entry>>,
}

impl PortMapDesk {
    /// The mapped public address of WAN `wan`'s socket, if it has one now.
    pub fn candidate(&self, wan: &str, now_us: u64) -> Option<SocketAddr> {
        self.entries.lock().unwrap().get(wan).and_then(|e| e.mapper.lock().unwrap().candidate(now_us))
    }

    fn status(&self, now_us: u64) -> Vec<MappingStatus> {
        let mut out: Vec<MappingStatus> = self
            .entries
            .lock()
            .unwrap()
            .iter()
            .map(|(wan, e)| {
                let m = e.mapper.lock().unwrap();
                let mapping = m.mapping(now_us);
                MappingStatus {
                    wan: wan.clone(),
                    protocol: m.protocol().name(),
                    gateway: e.gateway,
                    internal_port: m.internal_port(),
                    external: m.candidate(now_us),
                    expires_in_s: mapping.map(|x| x.expires_at_us().saturating_sub(now_us) / 1_000_000),
                    problem: m.problem(now_us),
                }
            })
            .collect();
        out.sort_by(|a, b| a.wan.cmp(&b.wan));
        out
    }

    /// Stops WAN `wan`'s mapping: the renewals end, and the gateway is asked to delete it.
    async fn release(&self, wan: &str) {
        let entry = self.entries.lock().unwrap().remove(wan);
        if let Some(entry) = entry {
            release_entry(entry).await;
        }
    }
}

async fn release_entry(entry: Entry) {
    entry.task.abort();
    let (deletes, upnp_port) = {
        let m = entry.mapper.lock().unwrap();
        (m.release(), m.asked_upnp().then_some(m.internal_port()))
    };
    let igd = entry.igd.lock().unwrap().clone();
    if let (Some(port), Some(igd)) = (upnp_port, igd) {
        upnp::delete(&igd, port).await;
    }
    let mut buf = [0u8; 1100];
    for delete in deletes {
        for _ in 0..2 {
            if entry.socket.send(&delete).await.is_err() {
                return;
            }
            // Any answer will do: the gateway heard the delete (its result is not ours to act on any more).
            if tokio::time::timeout(RELEASE_WAIT, entry.socket.recv(&mut buf)).await.is_ok() {
                break;
            }
        }
    }
}

/// What the daemon is told when it changes: the mapping, or why there is none.
fn summary(mapper: &Mapper, now_us: u64) -> String {
    match (mapper.candidate(now_us), mapper.problem(now_us)) {
        (Some(addr), _) => format!("mapped at {addr} ({})", mapper.protocol().name()),
        (None, Some(problem)) => format!("no mapping: {problem}"),
        (None, None) => "no mapping".into(),
    }
}

/// One UPnP exchange with the gateway: found by SSDP the first time (and after any failure: a router
/// that restarted may serve its control URL on another port), then map and read back.
async fn upnp_exchange(cache: &Mutex<Option<Igd>>, client: Ipv4Addr, gateway: Ipv4Addr, port: u16) -> UpnpOutcome {
    let known = cache.lock().unwrap().clone();
    let igd = match known {
        Some(igd) => igd,
        None => match upnp::search(client, gateway).await {
            Ok(igd) => igd,
            Err(why) => return UpnpOutcome::NoGateway(why),
        },
    };
    let outcome = upnp::map(&igd, client, port).await;
    let answered = matches!(outcome, UpnpOutcome::Answered { .. });
    *cache.lock().unwrap() = answered.then_some(igd);
    outcome
}

/// The ways of `run` to the gateway: the socket to its port 5351 (PCP, NAT-PMP) and its UPnP device.
struct Gateway {
    address: Ipv4Addr,
    socket: Arc<UdpSocket>,
    /// The address our requests leave from (the mapping's internal client).
    client: Ipv4Addr,
    igd: Arc<Mutex<Option<Igd>>>,
}

/// Keeps one mapping: sends what the mapper asks for, feeds it the gateway's answers, tells the daemon
/// of each change. The socket is connected to the gateway's port 5351, so nothing else is read.
async fn run(shared: Arc<Shared>, wan: String, gateway: Gateway, mapper: Arc<Mutex<Mapper>>) {
    let Gateway { address, socket, client, igd } = gateway;
    let mut told = String::new();
    // PCP answers may carry options after the 60 bytes of a MAP answer (RFC 6887: at most 1100 in all).
    let mut buf = [0u8; 1100];
    loop {
        let now = shared.now_us();
        let (request, upnp_due, port, next_at) = {
            let mut m = mapper.lock().unwrap();
            let request = m.poll_transmit(now);
            (request, m.poll_upnp(now), m.internal_port(), m.next_at())
        };
        if upnp_due {
            let outcome = upnp_exchange(&igd, client, address, port).await;
            mapper.lock().unwrap().handle_upnp(outcome, shared.now_us());
            tell(&shared, &wan, &mapper, &mut told);
            continue;
        }
        if let Some(request) = request {
            let _ = socket.send(&request).await; // an unreachable gateway is a retry like a lost answer
        }
        let wait = Duration::from_micros(next_at.saturating_sub(shared.now_us()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            received = socket.recv(&mut buf) => {
                if let Ok(n) = received {
                    // A malformed datagram changes nothing; the retransmission timer goes on.
                    let _ = mapper.lock().unwrap().handle_response(&buf[..n], shared.now_us());
                }
            }
        }
        tell(&shared, &wan, &mapper, &mut told);
    }
}

/// Tells the daemon of the mapping (or why there is none) if that changed since `told`.
fn tell(shared: &Shared, wan: &str, mapper: &Mutex<Mapper>, told: &mut String) {
    let now = summary(&mapper.lock().unwrap(), shared.now_us());
    if now != *told && !now.ends_with("asking the gateway") {
        shared.emit(Event::PortMapping { wan: wan.to_string(), detail: now.clone() });
        *told = now;
    }
}

/// A socket that leaves by the WAN whose QUIC socket is `endpoint` (its device, address and mark), to
/// `gateway`'s port 5351 (PCP and NAT-PMP).
fn gateway_socket(device: Option<&str>, local: Option<IpAddr>, mark: u32, gateway: Ipv4Addr) -> io::Result<UdpSocket> {
    let bind = SocketAddr::new(local.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
    let std_socket = crate::sockets::bind_wan(device, bind, mark)?;
    std_socket.set_nonblocking(true)?;
    std_socket.connect(SocketAddr::new(IpAddr::V4(gateway), SERVER_PORT))?;
    UdpSocket::from_std(std_socket)
}

impl Node {
    /// Maps the UDP port of WAN `wan`'s socket (`DEFAULT_SOURCE`: the listening one on a node without
    /// WANs) on its gateway `gateway`, from now on until the WAN is removed or the node stops; a mapping
    /// it had is released first.
    pub fn map_port(&self, wan: &str, gateway: Ipv4Addr) -> io::Result<()> {
        let runtime = self.runtime()?;
        let _guard = runtime.enter();
        let (port, device, local, mark) = {
            let sources = self.sources.lock().unwrap();
            let source = sources
                .get(wan)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no WAN {wan} to map a port of")))?;
            (source.endpoint.local_addr()?.port(), source.device.clone(), source.local, source.mark)
        };
        if local.is_some_and(|ip| ip.is_ipv6()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("WAN {wan}: port mapping is IPv4 only")));
        }
        let socket = Arc::new(gateway_socket(device.as_deref(), local, mark, gateway)?);
        // The address the requests leave from (the kernel's choice for a wildcard socket): PCP names it.
        let IpAddr::V4(client) = socket.local_addr()?.ip() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("WAN {wan}: no IPv4 source address")));
        };
        let nonce: [u8; NONCE_LEN] = crate::tls::generate_seed()[..NONCE_LEN].try_into().expect("12 of 32 bytes");
        let mapper = Arc::new(Mutex::new(Mapper::new(port, client, nonce, self.shared.now_us())));
        let igd = Arc::new(Mutex::new(None));
        let to_gateway = Gateway { address: gateway, socket: socket.clone(), client, igd: igd.clone() };
        let task = runtime.spawn(run(self.shared.clone(), wan.to_string(), to_gateway, mapper.clone()));
        let old = self
            .shared
            .portmap
            .entries
            .lock()
            .unwrap()
            .insert(wan.to_string(), Entry { gateway, socket, mapper, igd, task });
        if let Some(old) = old {
            runtime.spawn(release_entry(old));
        }
        Ok(())
    }

    /// Per WAN with port mapping on: the gateway asked, the mapping or why there is none.
    pub fn port_mappings(&self) -> Vec<MappingStatus> {
        self.shared.portmap.status(self.shared.now_us())
    }

    /// Releases WAN `wan`'s mapping in the background (the WAN is being removed).
    pub(crate) fn unmap_port(&self, wan: &str) {
        if let Ok(runtime) = self.runtime() {
            let shared = self.shared.clone();
            let wan = wan.to_string();
            runtime.spawn(async move { shared.portmap.release(&wan).await });
        }
    }

    /// Releases every mapping, waiting for the gateways' answers (briefly): the node is stopping.
    pub(crate) fn unmap_all(&self, runtime: &tokio::runtime::Runtime) {
        let entries: Vec<Entry> = self.shared.portmap.entries.lock().unwrap().drain().map(|(_, e)| e).collect();
        if entries.is_empty() {
            return;
        }
        runtime.block_on(async {
            let releases: Vec<_> = entries.into_iter().map(|e| tokio::spawn(release_entry(e))).collect();
            for release in releases {
                let _ = release.await;
            }
        });
    }
}
