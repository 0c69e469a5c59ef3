//! `quicether._core`: PyO3 bindings only. Logic lives in `quicether-io` (and later crates), which know
//! nothing of Python. Every call that waits on the OS releases the GIL.

use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use quicether_io::delayline::{DelayLine as IoDelayLine, DelaySettings};

fn settings(delay_us: i64, jitter_us: i64) -> PyResult<DelaySettings> {
    if delay_us < 0 || jitter_us < 0 {
        return Err(PyValueError::new_err("delay_us and jitter_us must be >= 0"));
    }
    Ok(DelaySettings { delay_us: delay_us as u64, jitter_us: jitter_us as u64 })
}

/// A userspace delay line on an existing TUN device (the lab's netem replacement).
#[pyclass(module = "quicether._core")]
struct DelayLine {
    inner: Mutex<Option<IoDelayLine>>,
}

#[pymethods]
impl DelayLine {
    #[new]
    #[pyo3(signature = (tun_name, delay_us=0, jitter_us=0))]
    fn new(tun_name: &str, delay_us: i64, jitter_us: i64) -> PyResult<Self> {
        let line = IoDelayLine::start(tun_name, settings(delay_us, jitter_us)?)
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self { inner: Mutex::new(Some(line)) })
    }

    /// Changes delay and jitter for packets arriving from now on.
    fn set(&self, delay_us: i64, jitter_us: i64) -> PyResult<()> {
        let s = settings(delay_us, jitter_us)?;
        match self.inner.lock().unwrap().as_ref() {
            Some(line) => {
                line.set(s);
                Ok(())
            }
            None => Err(PyValueError::new_err("delay line is closed")),
        }
    }

    /// Counters: packets, bytes, dropped, queued, delay_us, jitter_us.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        if let Some(line) = self.inner.lock().unwrap().as_ref() {
            let s = line.stats();
            let cfg = line.settings();
            d.set_item("packets", s.packets)?;
            d.set_item("bytes", s.bytes)?;
            d.set_item("dropped", s.dropped)?;
            d.set_item("queued", s.queued)?;
            d.set_item("delay_us", cfg.delay_us)?;
            d.set_item("jitter_us", cfg.jitter_us)?;
        }
        Ok(d)
    }

    /// Stops the threads; packets still queued are dropped. Idempotent.
    fn close(&self, py: Python<'_>) {
        let line = self.inner.lock().unwrap().take();
        py.detach(move || drop(line));
    }
}

/// Version of the compiled core; Python checks it matches the package.
#[pyfunction]
fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DelayLine>()?;
    m.add_function(wrap_pyfunction!(core_version, m)?)?;
    Ok(())
}
