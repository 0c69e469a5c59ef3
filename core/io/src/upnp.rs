//! UPnP-IGD for a WAN socket's port mapping (`portmap`), when the router is silent to PCP and NAT-PMP:
//! through the igd-next client on our tokio runtime. The SSDP search is bound to the WAN's own address,
//! so it leaves by the WAN (to the gateway by the WAN's route; multicast: the kernel sends it from a
//! bound address out of that address's device) and the router maps the port for the address it sees.
//! What the router answers is judged in `quicether_proto::portmap` (`Mapper::handle_upnp`); here it is
//! only fetched: the external address, AddPortMapping for the socket's UDP port (the same port outside),
//! and the entry the router then lists for that port (GetGenericPortMappingEntry), so that the mapping
//! in force is the one checked.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use igd_next::aio::tokio::{search_gateway, Tokio};
use igd_next::aio::Gateway;
use igd_next::{GatewayIpVersion, PortMappingProtocol, SearchOptions};
use quicether_proto::portmap::{unusable_external, UpnpEntry, UpnpOutcome, LIFETIME_S};

/// Each SSDP search waits this long for the router (it answers at once on a LAN; a router that speaks no
/// UPnP says nothing, and the mapper tries again after `portmap::RETRY_US`).
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Where SSDP listens (UPnP Device Architecture 1.1, 1.3): the multicast group's port, on every device.
const SSDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
const SSDP_PORT: u16 = 1900;
/// Each SOAP call (the router's web server answers a LAN client in milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The deletion when the WAN goes or the node stops must not hold that up for long.
pub(crate) const DELETE_TIMEOUT: Duration = Duration::from_secs(1);
/// GetGenericPortMappingEntry is asked by index: at most this many entries are read to find ours.
const MAX_ENTRIES: u32 = 64;
/// The mapping's description on the router (NewPortMappingDescription), as its web page lists it.
const DESCRIPTION: &str = "QuicEther";

pub(crate) type Igd = Gateway<Tokio>;

/// Finds the internet gateway device by SSDP from `client` (the WAN's address): an M-SEARCH sent to the
/// gateway itself first, whose answer comes back as a reply to it (our own firewall drops unsolicited UDP on
/// a WAN port, and the answer to a multicast search is that: it comes from another address than the one
/// asked), then to the SSDP multicast group for a router that answers only that. Only the WAN's own gateway
/// `gateway` is taken: another device on the link that answers would map nothing on our path.
pub(crate) async fn search(client: Ipv4Addr, gateway: Ipv4Addr) -> Result<Igd, String> {
    let mut why = String::new();
    for to in [SocketAddr::new(IpAddr::V4(gateway), SSDP_PORT), SocketAddr::new(IpAddr::V4(SSDP_GROUP), SSDP_PORT)] {
        let mut options = SearchOptions::default();
        options.bind_addr = SocketAddr::new(IpAddr::V4(client), 0);
        options.broadcast_address = to;
        options.timeout = Some(SEARCH_TIMEOUT);
        options.single_search_timeout = Some(SEARCH_TIMEOUT);
        options.gateway_ip_version = GatewayIpVersion::V4;
        match search_gateway(options).await {
            Ok(igd) if igd.addr.ip() == IpAddr::V4(gateway) => return Ok(igd),
            Ok(igd) => why = format!("the IGD that answered is {}, not the gateway", igd.addr.ip()),
            Err(e) => why = format!("SSDP search: {e}"),
        }
    }
    Err(why)
}

/// Maps UDP `port` of `client` on `igd` for `LIFETIME_S` (renews it if it is there), and reads back
/// what the router holds.
pub(crate) async fn map(igd: &Igd, client: Ipv4Addr, port: u16) -> UpnpOutcome {
    let external_ip = match tokio::time::timeout(CALL_TIMEOUT, igd.get_external_ip()).await {
        Err(_) => return UpnpOutcome::NoGateway("GetExternalIPAddress timed out".into()),
        Ok(Err(e)) => return UpnpOutcome::Refused(format!("GetExternalIPAddress: {e}")),
        Ok(Ok(IpAddr::V4(ip))) => Some(ip),
        Ok(Ok(IpAddr::V6(_))) => None,
    };
    if external_ip.is_none_or(|ip| unusable_external(ip).is_some()) {
        return UpnpOutcome::Answered { external_ip, entry: None }; // nothing worth mapping
    }
    let local = SocketAddr::new(IpAddr::V4(client), port);
    let add = igd.add_port(PortMappingProtocol::UDP, port, local, LIFETIME_S, DESCRIPTION);
    match tokio::time::timeout(CALL_TIMEOUT, add).await {
        Err(_) => return UpnpOutcome::NoGateway("AddPortMapping timed out".into()),
        Ok(Err(e)) => return UpnpOutcome::Refused(format!("AddPortMapping: {e}")),
        Ok(Ok(())) => {}
    }
    UpnpOutcome::Answered { external_ip, entry: listed(igd, port).await }
}

/// The entry the router lists for external `port`: the UDP one, else any (a TCP one is then refused).
async fn listed(igd: &Igd, port: u16) -> Option<UpnpEntry> {
    let mut found = None;
    for index in 0..MAX_ENTRIES {
        let Ok(Ok(e)) = tokio::time::timeout(CALL_TIMEOUT, igd.get_generic_port_mapping_entry(index)).await else {
            break; // past the last entry (SpecifiedArrayIndexInvalid), or the router stopped answering
        };
        if e.external_port != port {
            continue;
        }
        let udp = e.protocol == PortMappingProtocol::UDP;
        let entry = UpnpEntry {
            udp,
            external_port: e.external_port,
            internal_port: e.internal_port,
            internal_client: e.internal_client,
            lease_s: e.lease_duration,
        };
        if udp {
            return Some(entry);
        }
        found.get_or_insert(entry);
    }
    found
}

/// Deletes the mapping of UDP `port` (the node stops, or the WAN is gone); the router's answer is not
/// ours to act on any more.
pub(crate) async fn delete(igd: &Igd, port: u16) {
    let _ = tokio::time::timeout(DELETE_TIMEOUT, igd.remove_port(PortMappingProtocol::UDP, port)).await;
}
