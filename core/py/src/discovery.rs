//! Binding of `quicether_io::discovery`: a member's DHT node as `_core.Discovery`. Every call that waits
//! on the network releases the GIL; the DHT runs on its own threads.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use quicether_io::discovery::{Discovery as IoDiscovery, DiscoveryConfig, Found, LookupError};
use quicether_proto::record::{Endpoint, EndpointKind, Record};

use crate::key32;

fn addr(text: &str, what: &str) -> PyResult<SocketAddr> {
    text.parse().map_err(|_| PyValueError::new_err(format!("{what}: not an ip:port address: {text:?}")))
}

fn record_arg(d: &Bound<'_, PyDict>) -> PyResult<Record> {
    let get = |k: &str| d.get_item(k)?.ok_or_else(|| PyValueError::new_err(format!("record: missing {k:?}")));
    let mut endpoints = Vec::new();
    for e in get("endpoints")?.cast_into::<pyo3::types::PyList>()?.iter() {
        let e = e.cast_into::<PyDict>()?;
        let field = |k: &str| -> PyResult<String> {
            e.get_item(k)?.ok_or_else(|| PyValueError::new_err(format!("record endpoint: missing {k:?}")))?.extract()
        };
        let kind = field("kind")?;
        endpoints.push(Endpoint {
            kind: EndpointKind::from_name(&kind).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "record endpoint: kind must be public, reflexive or mapped, got {kind:?}"
                ))
            })?,
            wan: field("wan")?,
            addr: addr(&field("addr")?, "record endpoint addr")?,
        });
    }
    let lan = get("lan")?.extract::<Vec<String>>()?.iter().map(|a| addr(a, "record lan")).collect::<PyResult<_>>()?;
    let relays = get("relays")?
        .extract::<Vec<Vec<u8>>>()?
        .iter()
        .map(|k| key32("record relay key", k))
        .collect::<PyResult<_>>()?;
    let record = Record { expires_at: get("expires_at")?.extract()?, endpoints, lan, relays };
    record.validate().map_err(|e| PyValueError::new_err(format!("record: {e}")))?;
    Ok(record)
}

fn found_dict(py: Python<'_>, f: Found) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("node_key", PyBytes::new(py, &f.node_key))?;
    d.set_item("seq", f.seq)?;
    d.set_item("expires_at", f.record.expires_at)?;
    let endpoints = f
        .record
        .endpoints
        .iter()
        .map(|e| {
            let ed = PyDict::new(py);
            ed.set_item("wan", &e.wan)?;
            ed.set_item("kind", e.kind.name())?;
            ed.set_item("addr", e.addr.to_string())?;
            Ok(ed)
        })
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("endpoints", endpoints)?;
    d.set_item("lan", f.record.lan.iter().map(|a| a.to_string()).collect::<Vec<_>>())?;
    d.set_item("relays", f.record.relays.iter().map(|k| PyBytes::new(py, k)).collect::<Vec<_>>())?;
    Ok(d)
}

/// A member's node in the mainline DHT: publishes its record, looks up other members' records.
#[pyclass(module = "quicether._core")]
pub struct Discovery {
    inner: Mutex<Option<std::sync::Arc<IoDiscovery>>>,
}

impl Discovery {
    fn get(&self) -> PyResult<std::sync::Arc<IoDiscovery>> {
        self.inner.lock().unwrap().clone().ok_or_else(|| PyValueError::new_err("discovery is closed"))
    }
}

#[pymethods]
impl Discovery {
    #[new]
    #[pyo3(signature = (port, bootstrap, server, seed, network_key, *, bind=None, serve_on=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        port: u16,
        bootstrap: Option<Vec<String>>,
        server: bool,
        seed: &[u8],
        network_key: &[u8],
        bind: Option<&str>,
        serve_on: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let bootstrap = bootstrap
            .map(|list| {
                list.iter()
                    .map(|a| {
                        a.parse::<SocketAddrV4>().map_err(|_| {
                            PyValueError::new_err(format!("bootstrap: not an IPv4 ip:port address: {a:?}"))
                        })
                    })
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let bind = bind
            .map(|b| {
                b.parse::<Ipv4Addr>().map_err(|_| PyValueError::new_err(format!("bind: not an IPv4 address: {b:?}")))
            })
            .transpose()?;
        let serve_on = serve_on
            .unwrap_or_default()
            .iter()
            .map(|a| {
                a.parse::<Ipv4Addr>()
                    .map_err(|_| PyValueError::new_err(format!("serve_on: not an IPv4 address: {a:?}")))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let cfg = DiscoveryConfig {
            port,
            bind,
            serve_on,
            bootstrap,
            server,
            seed: key32("seed", seed)?,
            network_key: key32("network key", network_key)?,
        };
        let d = py.detach(move || IoDiscovery::start(cfg)).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self { inner: Mutex::new(Some(std::sync::Arc::new(d))) })
    }

    /// Publishes this member's record (sealed for members, signed with the node key). OSError if no DHT
    /// node stored it.
    fn publish(&self, py: Python<'_>, record: &Bound<'_, PyDict>) -> PyResult<()> {
        let record = record_arg(record)?;
        let d = self.get()?;
        py.detach(move || d.publish(&record)).map(|_| ()).map_err(PyOSError::new_err)
    }

    /// The newest record of `node_key` that passes every check, or None (nothing valid within the timeout).
    fn lookup<'py>(&self, py: Python<'py>, node_key: &[u8], timeout_s: f64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let key = key32("node key", node_key)?;
        if !(timeout_s.is_finite() && timeout_s > 0.0) {
            return Err(PyValueError::new_err("timeout_s must be a positive number of seconds"));
        }
        let timeout = Duration::from_secs_f64(timeout_s.min(600.0));
        let d = self.get()?;
        match py.detach(move || d.lookup(&key, timeout)) {
            Ok(found) => found.map(|f| found_dict(py, f)).transpose(),
            Err(LookupError::Busy) => Err(PyOSError::new_err("too many DHT lookups in flight")),
        }
    }

    /// Counters: published, publish_failed, lookups, found, not_found, busy, and refusals by cause:
    /// bad_signature, replay, expired, non_member, malformed; in server mode, server_answered,
    /// server_refused_source_rate, server_refused_total_rate, server_sources.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.get()?.counters() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// The DHT node's UDP address, "ip:port".
    fn local_addr(&self) -> PyResult<String> {
        Ok(self.get()?.local_addr.to_string())
    }

    /// Where this node answers other DHT nodes, "ip:port" each (one per address of `serve_on`); [] when it
    /// does not serve.
    fn serving(&self) -> PyResult<Vec<String>> {
        Ok(self.get()?.serving.iter().map(|a| a.to_string()).collect())
    }

    /// This member's node key (the BEP 44 signer).
    fn node_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.get()?.node_key()))
    }

    /// Stops the DHT node and closes its socket. Idempotent; a call still running finishes first.
    fn close(&self, py: Python<'_>) {
        let d = self.inner.lock().unwrap().take();
        py.detach(move || drop(d));
    }
}
