//! pyo3 bindings for `lrt_bpe` (owned by the tokenizer work; placeholder until then).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
