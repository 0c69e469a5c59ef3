//! Binding of `quicether_io::join`'s joining side: `_core.request_join`. The admin side is `Node.set_invites`
//! and `Node.answer_join`.

use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use quicether_io::join::{request_blocking, Joining};
use quicether_proto::join::JoinAnswer;

use crate::key32;

/// Asks the admin node (`admin_key`, at `endpoints` "ip:port", tried in order) to certify the node with key
/// seed `node_seed` as `name` ("" for the name the invite gives), showing the invite's key (`invite_seed`).
/// Returns (True, the admin's answer bytes) or (False, the admin's reason for refusing). OSError: no
/// endpoint answered, or the admin refused the invite's key in the handshake (it does not know it).
#[pyfunction]
#[pyo3(signature = (invite_seed, admin_key, endpoints, node_seed, name, timeout_s=10.0))]
pub fn request_join<'py>(
    py: Python<'py>,
    invite_seed: &[u8],
    admin_key: &[u8],
    endpoints: Vec<String>,
    node_seed: &[u8],
    name: &str,
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
    let timeout = Duration::from_secs_f64(timeout_s);
    let answer = py
        .detach(|| request_blocking(&Joining { invite_seed, admin, endpoints: &addrs, node_seed, name, timeout }))
        .map_err(PyOSError::new_err)?;
    Ok(match answer {
        JoinAnswer::Certified(body) => (true, PyBytes::new(py, &body).into_any()),
        JoinAnswer::Refused(reason) => (false, reason.into_pyobject(py)?.into_any()),
    })
}
