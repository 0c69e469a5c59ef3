//! Binding of `quicether_io::join`'s joining side: `_core.request_join`. The admin side is `Node.set_invites`
//! and `Node.answer_join`.

use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use quicether_io::join::{request_blocking, Joining};
use quicether_proto::allowed_ips::Prefix;
use quicether_proto::join::JoinAnswer;

use crate::key32;

/// Asks the admin node (`admin_key`, at `endpoints` "ip:port", tried in order) to certify the node with key
/// seed `node_seed` as `name` ("" for the name the invite gives), routing `lan_prefixes` ("a.b.c.d/n", IPv4
/// without host bits; the admin decides whether it grants them), showing the invite's key (`invite_seed`).
/// Returns (True, the admin's answer bytes) or (False, the admin's reason for refusing). OSError: no
/// endpoint answered, or the admin refused the invite's key in the handshake (it does not know it).
#[pyfunction]
#[pyo3(signature = (invite_seed, admin_key, endpoints, node_seed, name, lan_prefixes=Vec::new(), timeout_s=10.0))]
#[allow(clippy::too_many_arguments)] // a Python function's arguments, most of them keywords
pub fn request_join<'py>(
    py: Python<'py>,
    invite_seed: &[u8],
    admin_key: &[u8],
    endpoints: Vec<String>,
    node_seed: &[u8],
    name: &str,
    lan_prefixes: Vec<String>,
    timeout_s: f64,
) -> PyResult<(bool, Bound<'py, PyAny>)> {
    let invite_seed = key32("invite seed", invite_seed)?;
    let admin = key32("admin key", admin_key)?;
    let node_seed = key32("node seed", node_seed)?;
    let addrs = endpoints
        .iter()
        .map(|e| e.parse().map_err(|_| PyValueError::new_err(format!("endpoint {e:?} is not ip:port"))))
        .collect::<PyResult<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(PyValueError::new_err("no endpoint to reach the admin node at"));
    }
    if !(0.1..=120.0).contains(&timeout_s) {
        return Err(PyValueError::new_err("timeout_s must be between 0.1 and 120"));
    }
    let lan_prefixes = lan_prefixes
        .iter()
        .map(|p| p.parse::<Prefix>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PyValueError::new_err(format!("lan_prefixes: {e}")))?;
    let timeout = Duration::from_secs_f64(timeout_s);
    let joining =
        Joining { invite_seed, admin, endpoints: &addrs, node_seed, name, lan_prefixes: &lan_prefixes, timeout };
    let answer = py.detach(|| request_blocking(&joining)).map_err(PyOSError::new_err)?;
    Ok(match answer {
        JoinAnswer::Certified(body) => (true, PyBytes::new(py, &body).into_any()),
        JoinAnswer::Refused(reason) => (false, reason.into_pyobject(py)?.into_any()),
    })
}
