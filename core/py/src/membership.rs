//! Bindings of `quicether_proto::membership`: issue and read membership certificates and revocations.
//! Refusals are ValueErrors whose message ends with the cause (see quicether/_core.pyi).

use std::net::{IpAddr, Ipv4Addr};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use quicether_proto::allowed_ips::Prefix;
use quicether_proto::membership::{self, Certificate, Refused, Revocation, RevocationSet};

use crate::key32;

pub(crate) fn prefix_text(p: &Prefix) -> String {
    format!("{}/{}", p.addr, p.len)
}

fn overlay_arg(text: &str) -> PyResult<(Ipv4Addr, u8)> {
    match text.parse::<Prefix>() {
        Ok(Prefix { addr: IpAddr::V4(a), len }) if text.contains('/') => Ok((a, len)),
        _ => Err(PyValueError::new_err(format!("overlay must be an IPv4 prefix like 100.64.0.0/10, got {text:?}"))),
    }
}

fn refused(what: &str, r: Refused) -> PyErr {
    PyValueError::new_err(format!("{what} refused: {r}"))
}

/// Signs a membership certificate with the network key seed; ValueError naming the bad field.
#[pyfunction]
#[pyo3(signature = (network_seed, node_key, name, ipv4, overlay, groups, lan_prefixes, exit, not_before, not_after))]
#[allow(clippy::too_many_arguments)]
fn issue_certificate<'py>(
    py: Python<'py>,
    network_seed: &[u8],
    node_key: &[u8],
    name: &str,
    ipv4: &str,
    overlay: &str,
    groups: Vec<String>,
    lan_prefixes: Vec<String>,
    exit: bool,
    not_before: u64,
    not_after: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let seed = key32("network seed", network_seed)?;
    let cert = Certificate {
        network: [0; 32],
        node: key32("node key", node_key)?,
        not_before,
        not_after,
        ipv4: ipv4.parse().map_err(|_| PyValueError::new_err(format!("ipv4: not an IPv4 address: {ipv4:?}")))?,
        overlay: overlay_arg(overlay)?,
        exit,
        name: name.to_string(),
        groups,
        lan_prefixes: lan_prefixes
            .iter()
            .map(|p| p.parse::<Prefix>())
            .collect::<Result<_, _>>()
            .map_err(|e| PyValueError::new_err(format!("lan_prefixes: {e}")))?,
    };
    let data = cert.issue(&seed).map_err(|e| PyValueError::new_err(format!("certificate: {e}")))?;
    Ok(PyBytes::new(py, &data))
}

/// Verifies a certificate of `network_key`'s network at `now` (Unix s; None: at any time, the validity
/// window unchecked) against the revoked node keys.
#[pyfunction]
#[pyo3(signature = (data, network_key, now, revoked=None))]
fn read_certificate<'py>(
    py: Python<'py>,
    data: &[u8],
    network_key: &[u8],
    now: Option<u64>,
    revoked: Option<Vec<Vec<u8>>>,
) -> PyResult<Bound<'py, PyDict>> {
    let network = key32("network key", network_key)?;
    let mut set = RevocationSet::default();
    for key in revoked.unwrap_or_default() {
        set.insert(Revocation { network, node: key32("revoked key", &key)?, revoked_at: 0, sequence: 0 });
    }
    let c = match now {
        Some(now) => membership::read_certificate(data, &network, now, &set),
        None => membership::read_certificate_at_any_time(data, &network, &set),
    }
    .map_err(|r| refused("certificate", r))?;
    let d = PyDict::new(py);
    d.set_item("version", membership::CERTIFICATE_V1)?;
    d.set_item("network", PyBytes::new(py, &c.network))?;
    d.set_item("node_key", PyBytes::new(py, &c.node))?;
    d.set_item("name", &c.name)?;
    d.set_item("ipv4", c.ipv4.to_string())?;
    d.set_item("overlay", format!("{}/{}", c.overlay.0, c.overlay.1))?;
    d.set_item("ipv6", c.ipv6().to_string())?;
    d.set_item("groups", &c.groups)?;
    d.set_item("lan_prefixes", c.lan_prefixes.iter().map(prefix_text).collect::<Vec<_>>())?;
    d.set_item("exit", c.exit)?;
    d.set_item("not_before", c.not_before)?;
    d.set_item("not_after", c.not_after)?;
    Ok(d)
}

/// Signs a revocation of `node_key` with the network key seed.
/// The IPv6 ULA of member `node_key` of network `network_key` (derived from the two keys).
#[pyfunction]
fn member_ula(network_key: &[u8], node_key: &[u8]) -> PyResult<String> {
    Ok(membership::ula(&key32("network key", network_key)?, &key32("node key", node_key)?).to_string())
}

#[pyfunction]
fn issue_revocation<'py>(
    py: Python<'py>,
    network_seed: &[u8],
    node_key: &[u8],
    revoked_at: u64,
    sequence: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let rev = Revocation { network: [0; 32], node: key32("node key", node_key)?, revoked_at, sequence };
    Ok(PyBytes::new(py, &rev.issue(&key32("network seed", network_seed)?)))
}

/// Verifies a revocation of `network_key`'s network.
#[pyfunction]
fn read_revocation<'py>(py: Python<'py>, data: &[u8], network_key: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let r =
        membership::read_revocation(data, &key32("network key", network_key)?).map_err(|r| refused("revocation", r))?;
    let d = PyDict::new(py);
    d.set_item("version", membership::REVOCATION_V1)?;
    d.set_item("network", PyBytes::new(py, &r.network))?;
    d.set_item("node_key", PyBytes::new(py, &r.node))?;
    d.set_item("revoked_at", r.revoked_at)?;
    d.set_item("sequence", r.sequence)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(member_ula, m)?)?;
    m.add_function(wrap_pyfunction!(issue_certificate, m)?)?;
    m.add_function(wrap_pyfunction!(read_certificate, m)?)?;
    m.add_function(wrap_pyfunction!(issue_revocation, m)?)?;
    m.add_function(wrap_pyfunction!(read_revocation, m)?)?;
    Ok(())
}
