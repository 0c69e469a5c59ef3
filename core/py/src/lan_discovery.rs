//! Binding of `quicether_io::lan_discovery` as `_core.LanDiscovery`: announce this member on the LAN and
//! list the other members' announcements (candidates to dial, not trusted).

use std::net::IpAddr;
use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use quicether_io::lan_discovery::LanDiscovery as IoLanDiscovery;

use crate::key32;

#[pyclass(module = "quicether._core")]
pub struct LanDiscovery {
    inner: Mutex<Option<IoLanDiscovery>>,
}

#[pymethods]
impl LanDiscovery {
    #[new]
    #[pyo3(signature = (network_key, node_key, port, addresses, interfaces=None))]
    fn new(
        py: Python<'_>,
        network_key: &[u8],
        node_key: &[u8],
        port: u16,
        addresses: Vec<String>,
        interfaces: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let network = key32("network key", network_key)?;
        let node = key32("node key", node_key)?;
        let addrs = addresses
            .iter()
            .map(|a| a.parse::<IpAddr>().map_err(|_| PyValueError::new_err(format!("addresses: not an IP: {a:?}"))))
            .collect::<PyResult<Vec<_>>>()?;
        if addrs.is_empty() {
            return Err(PyValueError::new_err("addresses: at least one LAN address to announce"));
        }
        let d = py
            .detach(|| IoLanDiscovery::start(&network, node, port, &addrs, interfaces.as_deref()))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self { inner: Mutex::new(Some(d)) })
    }

    /// Other members of the network announced on the LAN, newest first: dicts with node_key (bytes),
    /// addrs (["ip:port", …]) and age_s (seconds since last heard).
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let guard = self.inner.lock().unwrap();
        let d = guard.as_ref().ok_or_else(|| PyValueError::new_err("LAN discovery is closed"))?;
        d.members()
            .into_iter()
            .map(|m| {
                let md = PyDict::new(py);
                md.set_item("node_key", PyBytes::new(py, &m.node_key))?;
                md.set_item("addrs", m.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>())?;
                md.set_item("age_s", m.seen.elapsed().as_secs_f64())?;
                Ok(md)
            })
            .collect()
    }

    /// resolved, foreign_network (another network's tag), malformed, full (candidate table full).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let guard = self.inner.lock().unwrap();
        let d = guard.as_ref().ok_or_else(|| PyValueError::new_err("LAN discovery is closed"))?;
        let out = PyDict::new(py);
        for (name, value) in d.counters().snapshot() {
            out.set_item(name, value)?;
        }
        Ok(out)
    }

    /// Sends goodbyes and stops. Idempotent.
    fn close(&self, py: Python<'_>) {
        let d = self.inner.lock().unwrap().take();
        py.detach(move || drop(d));
    }
}
