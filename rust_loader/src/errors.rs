//! The one mapping from Rust errors to Python exceptions.
//!
//! I/O errors become `OSError` subclasses (`FileNotFoundError`, `PermissionError`, ...),
//! bad values `ValueError`, a corrupt or mismatched shard `ShardFormatError(ValueError)`
//! (and its subclass `TokenizerMismatchError`). Never a bare `Exception`.
//!
//! [`io_to_py`] is the one conversion of a `std::io::Error` for every binding: the exception is
//! built from `(errno, strerror, filename)`, as Python's own `open()` builds it, so callers can
//! test `exc.errno == errno.ENOSPC` and read `exc.filename`.

use std::io::ErrorKind;
use std::path::Path;

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError};
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

/// Converts an I/O error on `path` (when known) into the matching `OSError` subclass:
/// `FileNotFoundError` (not found), `PermissionError` (permission denied), else `OSError` (which
/// Python narrows further by errno, e.g. `IsADirectoryError`).
///
/// With an OS error code the exception is constructed from `(errno, strerror, filename)`, so
/// Python fills `errno`, `strerror` and `filename`; `strerror` is the OS description followed
/// by `op` (what was being done, e.g. `"open"`) and `hint` (what to do), so `str(exc)` reads
/// `[Errno 2] No such file or directory (open): 'data/tokens/train_0000.bin'`. Without a code
/// (an error made up by Rust code, not the OS) it stays a message-only exception:
/// `{path}: {error} ({op}); {hint}`.
pub fn io_to_py(
    err: &std::io::Error,
    path: Option<&Path>,
    op: Option<&str>,
    hint: Option<&str>,
) -> PyErr {
    let mut detail = err.to_string();
    if let Some(code) = err.raw_os_error() {
        // std appends " (os error N)" to the OS text; Python shows the errno itself.
        if let Some(text) = detail.strip_suffix(&format!(" (os error {code})")) {
            detail = text.to_string();
        }
    }
    if let Some(op) = op {
        detail = format!("{detail} ({op})");
    }
    if let Some(hint) = hint {
        detail = format!("{detail}; {hint}");
    }
    macro_rules! raise {
        ($ty:ty) => {
            match (err.raw_os_error(), path) {
                (Some(code), Some(p)) => <$ty>::new_err((code, detail, p.as_os_str().to_owned())),
                (Some(code), None) => <$ty>::new_err((code, detail)),
                (None, Some(p)) => <$ty>::new_err(format!("{}: {detail}", p.display())),
                (None, None) => <$ty>::new_err(detail),
            }
        };
    }
    match err.kind() {
        ErrorKind::NotFound => raise!(PyFileNotFoundError),
        ErrorKind::PermissionDenied => raise!(PyPermissionError),
        _ => raise!(PyOSError),
    }
}

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
