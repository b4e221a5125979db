//! pyo3 bindings for `lrt_data` (owned by the data work; placeholder until then).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
