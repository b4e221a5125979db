//! pyo3 bindings for `lrt_data`: shard reading, packing, and the prefetching batch stream.
//!
//! Each binding converts types, releases the GIL around the heavy part (`py.detach`) and maps
//! `DataError` to Python (`to_py`). Defaults and validation live in `pipeline/data/shards.py`
//! (format, reading), `pipeline/data/packing.py` and `pipeline/data/loader.py`, the modules users import.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lrt_data::format::Compression;
use lrt_data::{
    DataError, Dataset, Expect, LoaderConfig, LoaderState, Mode, PackConfig, Packer, Prefetcher,
    Sampler, Shard, SlotPtr, TokenDtype,
};
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{io_to_py, ShardFormatError, TokenizerMismatchError};
use crate::tokenizer::PyTokenizer;

/// The one mapping from `DataError` to a Python exception.
fn to_py(e: DataError) -> PyErr {
    let msg = e.to_string();
    match &e {
        DataError::Io { op, path, source } => {
            io_to_py(source, Some(path.as_path()), Some(op), None)
        }
        DataError::Format { .. } => ShardFormatError::new_err(msg),
        DataError::TokenizerMismatch { .. } => TokenizerMismatchError::new_err(msg),
        DataError::Invalid(_) => PyValueError::new_err(msg),
    }
}

fn hash32(b: &[u8]) -> PyResult<[u8; 32]> {
    b.try_into().map_err(|_| {
        PyValueError::new_err(format!("tokenizer hash must be 32 bytes, got {}", b.len()))
    })
}

// ---------------------------------------------------------------------------------------------
// Shards
// ---------------------------------------------------------------------------------------------

type ShardRead<'py> = (
    Bound<'py, PyDict>,
    Bound<'py, PyAny>,
    Bound<'py, PyArray1<u64>>,
);

/// Reads and fully verifies one shard: `(header: dict, tokens: ndarray, doc_starts: ndarray)`.
/// Tokens are uint16 or uint32 as stored, moved into numpy without a copy.
#[pyfunction]
fn read_shard<'py>(py: Python<'py>, path: PathBuf) -> PyResult<ShardRead<'py>> {
    enum Toks {
        U16(Vec<u16>),
        U32(Vec<u32>),
    }
    let (shard, toks) = py
        .detach(|| -> lrt_data::Result<_> {
            let s = Shard::open(&path)?;
            let b = s.token_bytes(0, s.token_count())?;
            let t = match s.header().dtype {
                TokenDtype::U16 => Toks::U16(
                    b.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
                TokenDtype::U32 => Toks::U32(
                    b.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
            };
            Ok((s, t))
        })
        .map_err(to_py)?;
    let h = shard.header();
    let d = PyDict::new(py);
    d.set_item("version", h.version)?;
    d.set_item("dtype", h.dtype.name())?;
    d.set_item("vocab_size", h.vocab_size)?;
    d.set_item("bos_id", h.bos_id)?;
    d.set_item("tokenizer_hash", lrt_data::error::hex(&h.tokenizer_hash))?;
    d.set_item("tokens", h.token_count)?;
    d.set_item("documents", h.doc_count)?;
    d.set_item("chunk_tokens", h.chunk_tokens)?;
    d.set_item("compression", h.compression.name())?;
    d.set_item("n_chunks", h.n_chunks)?;
    let arr = match toks {
        Toks::U16(v) => PyArray1::from_vec(py, v).into_any(),
        Toks::U32(v) => PyArray1::from_vec(py, v).into_any(),
    };
    let starts = PyArray1::from_vec(py, shard.doc_starts().to_vec());
    Ok((d, arr, starts))
}

/// Streams documents into train/val shards; `finish` renames them into place and writes
/// `manifest.json`. Dropped (or `abort`ed) unfinished, it removes every temp file it wrote.
#[pyclass(module = "pipeline._rust", name = "Packer")]
struct PyPacker {
    inner: Option<Packer>,
}

impl PyPacker {
    fn get(&mut self) -> PyResult<&mut Packer> {
        self.inner
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("this Packer is already finished or aborted"))
    }
}

#[pymethods]
impl PyPacker {
    #[new]
    #[pyo3(signature = (out_dir, *, vocab_size, bos_id, tokenizer_hash, shard_tokens, chunk_tokens,
                        compression, val_fraction, seed, prefix=String::new(),
                        first_document=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        out_dir: PathBuf,
        vocab_size: u32,
        bos_id: u32,
        tokenizer_hash: &[u8],
        shard_tokens: u64,
        chunk_tokens: u32,
        compression: &str,
        val_fraction: f64,
        seed: u64,
        prefix: String,
        first_document: u64,
    ) -> PyResult<Self> {
        let mut cfg = PackConfig::new(vocab_size, bos_id, hash32(tokenizer_hash)?);
        cfg.shard_tokens = shard_tokens;
        cfg.chunk_tokens = chunk_tokens;
        cfg.compression = Compression::parse(compression).map_err(to_py)?;
        cfg.val_fraction = val_fraction;
        cfg.seed = seed;
        cfg.prefix = prefix;
        cfg.first_document = first_document;
        Ok(PyPacker {
            inner: Some(Packer::new(&out_dir, cfg).map_err(to_py)?),
        })
    }

    /// Appends encoded documents given as one flat uint32 array and their lengths.
    fn add_encoded(
        &mut self,
        py: Python<'_>,
        flat: PyReadonlyArray1<'_, u32>,
        lengths: PyReadonlyArray1<'_, u64>,
    ) -> PyResult<()> {
        let flat = flat.as_slice()?;
        let lengths = lengths.as_slice()?;
        if lengths.iter().sum::<u64>() != flat.len() as u64 {
            return Err(PyValueError::new_err(
                "lengths do not sum to the flat token count",
            ));
        }
        let packer = self.get()?;
        py.detach(|| {
            let mut off = 0usize;
            packer.add_encoded(lengths.iter().map(|&n| {
                let d = &flat[off..off + n as usize];
                off += n as usize;
                d
            }))
        })
        .map_err(to_py)
    }

    /// Sends the documents added from now on to `"train"` or `"val"`, or with `None` back to
    /// the seeded `val_fraction` draw.
    #[pyo3(signature = (split=None))]
    fn set_split(&mut self, split: Option<&str>) -> PyResult<()> {
        let split = split
            .map(lrt_data::pack::Split::parse)
            .transpose()
            .map_err(to_py)?;
        self.get()?.set_split(split);
        Ok(())
    }

    /// Encodes `texts` with the Rust tokenizer on all cores (GIL released) and appends them.
    fn add_texts(
        &mut self,
        py: Python<'_>,
        texts: Vec<String>,
        tokenizer: PyRef<'_, PyTokenizer>,
    ) -> PyResult<()> {
        let tok = tokenizer.inner.clone();
        let packer = self.get()?;
        py.detach(|| packer.try_add_documents(&texts, &|s: &str| tok.encode_ordinary(s)))
            .map_err(to_py)
    }

    /// Flushes, renames shards into place, writes the manifest (with `source`, a JSON object
    /// string of input statistics, and the top-level fields of `extra_json`, a JSON object
    /// string) and returns the manifest as a JSON string.
    #[pyo3(signature = (source_json, extra_json=None))]
    fn finish(
        &mut self,
        py: Python<'_>,
        source_json: &str,
        extra_json: Option<&str>,
    ) -> PyResult<String> {
        if let Some(extra) = extra_json {
            self.get()?.set_manifest_extra_json(extra).map_err(to_py)?;
        }
        let packer = self
            .inner
            .take()
            .ok_or_else(|| PyValueError::new_err("this Packer is already finished or aborted"))?;
        py.detach(|| packer.finish_json(source_json)).map_err(to_py)
    }

    /// Removes every temp file written so far; the Packer is unusable afterwards.
    fn abort(&mut self) {
        self.inner = None;
    }
}

// ---------------------------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------------------------

/// The opened shards of one split (headers and indices validated; chunks verified on first touch).
#[pyclass(module = "pipeline._rust", name = "ShardDataset", frozen)]
struct PyDataset {
    inner: Arc<Dataset>,
}

#[pymethods]
impl PyDataset {
    #[new]
    #[pyo3(signature = (paths, *, tokenizer_hash=None, tokens=None))]
    fn new(
        py: Python<'_>,
        paths: Vec<PathBuf>,
        tokenizer_hash: Option<&[u8]>,
        tokens: Option<Vec<u64>>,
    ) -> PyResult<Self> {
        let expect = Expect {
            tokenizer_hash: tokenizer_hash.map(hash32).transpose()?,
            tokens,
        };
        let ds = py
            .detach(|| Dataset::open(&paths, &expect))
            .map_err(to_py)?;
        Ok(PyDataset {
            inner: Arc::new(ds),
        })
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }
    #[getter]
    fn itemsize(&self) -> usize {
        self.inner.dtype().itemsize()
    }
    #[getter]
    fn vocab_size(&self) -> u32 {
        self.inner.vocab_size()
    }
    #[getter]
    fn bos_id(&self) -> u32 {
        self.inner.bos_id()
    }
    #[getter]
    fn n_tokens(&self) -> u64 {
        self.inner.n_tokens()
    }
    #[getter]
    fn n_documents(&self) -> u64 {
        self.inner.n_docs()
    }
}

/// A prefetch thread writing batches into caller-owned buffers (see `Prefetcher`).
///
/// `buffers` are `(address, nbytes)` of `prefetch + 1` writable buffers; `keepalive` holds the
/// Python objects owning them, so they outlive the thread: `inner` is declared first, so its
/// `Drop` (which joins the thread) runs before `keepalive` is released.
#[pyclass(module = "pipeline._rust", name = "BatchStream")]
struct PyBatchStream {
    inner: Mutex<Prefetcher>,
    _keepalive: Vec<Py<PyAny>>,
}

fn state_from_dict(d: &Bound<'_, PyDict>) -> PyResult<LoaderState> {
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(k)?
            .ok_or_else(|| PyValueError::new_err(format!("loader state lacks key {k:?}")))
    };
    Ok(LoaderState {
        epoch: get("epoch")?.extract()?,
        cursor: get("cursor")?.extract()?,
        buffer: get("buffer")?.extract()?,
        batches: get("batches")?.extract()?,
    })
}

#[pymethods]
impl PyBatchStream {
    #[new]
    #[pyo3(signature = (dataset, buffers, keepalive, *, mode, batch_size, seq_len, seed, shuffle,
                        epochs, rank, world_size, prefetch, buffer_docs, state=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        dataset: &PyDataset,
        buffers: Vec<(usize, usize)>,
        keepalive: Vec<Py<PyAny>>,
        mode: &str,
        batch_size: usize,
        seq_len: usize,
        seed: u64,
        shuffle: bool,
        epochs: Option<u64>,
        rank: u64,
        world_size: u64,
        prefetch: usize,
        buffer_docs: usize,
        state: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let cfg = LoaderConfig {
            mode: Mode::parse(mode).map_err(to_py)?,
            batch_size,
            seq_len,
            seed,
            shuffle,
            epochs,
            rank,
            world_size,
            buffer_docs,
        };
        let state = state.map(state_from_dict).transpose()?;
        let sampler = Sampler::new(dataset.inner.clone(), cfg, state).map_err(to_py)?;
        if buffers.iter().any(|&(p, _)| p == 0) {
            return Err(PyValueError::new_err("null batch buffer"));
        }
        let slots = buffers
            .iter()
            .map(|&(ptr, len)| SlotPtr {
                ptr: ptr as *mut u8,
                len,
            })
            .collect();
        // SAFETY: the Python facade passes the `data_ptr()`/`nbytes` of contiguous tensors it
        // allocated for this purpose and also passes those tensors as `keepalive`, which this
        // object holds until after the thread is joined. The facade reads a slot only between
        // `next` returning it and the `prefetch`-th following `next` (the contract).
        let p = unsafe { Prefetcher::new(sampler, slots, prefetch) }.map_err(to_py)?;
        Ok(PyBatchStream {
            inner: Mutex::new(p),
            _keepalive: keepalive,
        })
    }

    /// Blocks (GIL released) for the next batch: `(slot, rows)` or None at the end.
    fn next(&self, py: Python<'_>) -> PyResult<Option<(usize, usize)>> {
        py.detach(|| self.inner.lock().expect("poisoned").next_batch())
            .map_err(to_py)
    }

    /// The state after the last batch returned by `next`: plain ints.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.inner.lock().expect("poisoned").state().clone();
        let d = PyDict::new(py);
        d.set_item("epoch", st.epoch)?;
        d.set_item("cursor", st.cursor)?;
        d.set_item("buffer", PyList::new(py, st.buffer)?)?;
        d.set_item("batches", st.batches)?;
        Ok(d)
    }

    /// Stops and joins the prefetch thread (GIL released); no buffer is written afterwards.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.lock().expect("poisoned").close())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_shard, m)?)?;
    m.add_class::<PyPacker>()?;
    m.add_class::<PyDataset>()?;
    m.add_class::<PyBatchStream>()?;
    Ok(())
}
