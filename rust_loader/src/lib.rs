//! `pipeline._rust`: the private extension module behind `pipeline.data.tokenizer`,
//! `pipeline.data.shards` (with `packing` and `parts`) and `pipeline.data.loader`.
//!
//! This crate is the only place pyo3 appears. Every binding does three things:
//! convert types, release the GIL around the heavy part, map errors
//! (`errors.rs`). Logic lives in the pure-Rust crates `lrt_bpe` and `lrt_data`,
//! which `cargo test` builds without Python.

use pyo3::prelude::*;

mod data;
mod errors;
mod tokenizer;

#[pymodule]
fn _rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    tokenizer::register(m)?;
    data::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
