//! The one mapping from Rust errors to Python exceptions.
//!
//! I/O errors become `OSError` subclasses (`FileNotFoundError`, `PermissionError`, ...),
//! bad values `ValueError`, a corrupt or mismatched shard `ShardFormatError(ValueError)`
//! (and its subclass `TokenizerMismatchError`). Never a bare `Exception`.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    _rust,
    ShardFormatError,
    PyValueError,
    "A token shard or manifest is corrupt, truncated, or of an unknown format."
);
create_exception!(
    _rust,
    TokenizerMismatchError,
    ShardFormatError,
    "A shard was written with a different tokenizer than the one in use."
);
create_exception!(
    _rust,
    TokenizerFormatError,
    PyValueError,
    "A tokenizer file is corrupt or of an unknown format."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ShardFormatError", py.get_type::<ShardFormatError>())?;
    m.add(
        "TokenizerMismatchError",
        py.get_type::<TokenizerMismatchError>(),
    )?;
    m.add(
        "TokenizerFormatError",
        py.get_type::<TokenizerFormatError>(),
    )?;
    Ok(())
}
