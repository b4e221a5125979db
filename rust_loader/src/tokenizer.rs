//! pyo3 bindings for `lrt_bpe`: `pipeline._rust.Tokenizer`.
//!
//! Each method converts types, releases the GIL around the work (`py.detach`), and maps
//! [`BpeError`] through [`to_py_err`]. Defaults and validation live in `pipeline/data/tokenizer.py`.
//! Other bindings (data packing) can take a `PyRef<PyTokenizer>` and use `inner` directly.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use lrt_bpe::{BpeError, ChunkCounter, Tokenizer};
use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString};

use crate::errors::{io_to_py, TokenizerFormatError};

/// Map a `BpeError` to the matching Python exception.
pub fn to_py_err(e: BpeError) -> PyErr {
    match e {
        BpeError::Io { path, source } => {
            let hint = (source.kind() == std::io::ErrorKind::NotFound)
                .then_some("check the path (a tokenizer is written by Tokenizer.save())");
            io_to_py(&source, Some(&path), None, hint)
        }
        e @ BpeError::Format { .. } => TokenizerFormatError::new_err(e.to_string()),
        BpeError::InvalidValue(msg) => PyValueError::new_err(msg),
    }
}

/// (ids, offsets) of `encode_batch_flat`.
type FlatIds<'py> = (Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<i64>>);

/// A byte-level BPE tokenizer (private; use `pipeline.data.tokenizer.Tokenizer`).
#[pyclass(name = "Tokenizer", module = "pipeline._rust", frozen)]
pub struct PyTokenizer {
    pub inner: Arc<Tokenizer>,
    /// One Python int per id, made on first use. Building a list of ids from these is an
    /// incref per element instead of an int allocation (which cost as much as the encoding).
    ints: OnceLock<Vec<Py<PyInt>>>,
}

impl PyTokenizer {
    fn wrap(t: Tokenizer) -> Self {
        PyTokenizer {
            inner: Arc::new(t),
            ints: OnceLock::new(),
        }
    }

    /// `ids` as a Python list of int.
    fn id_list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        let ints = self.ints.get_or_init(|| {
            (0..self.inner.vocab_size() as u32)
                .map(|i| PyInt::new(py, i).unbind())
                .collect()
        });
        // Every id the encoder emits is < vocab_size.
        PyList::new(py, ids.iter().map(|&i| ints[i as usize].bind(py)))
    }
}

#[pymethods]
impl PyTokenizer {
    /// Train on an iterable of str. Texts are pulled in batches of about `batch_bytes` bytes;
    /// each batch is counted with the GIL released, so memory holds one batch plus the unique
    /// chunks, never the whole corpus twice.
    #[staticmethod]
    #[pyo3(signature = (texts, vocab_size, pattern, special_tokens, batch_bytes = 64 << 20))]
    fn train(
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        vocab_size: usize,
        pattern: &str,
        special_tokens: Vec<String>,
        batch_bytes: usize,
    ) -> PyResult<Self> {
        let mut counter = ChunkCounter::new(pattern).map_err(to_py_err)?;
        let mut batch: Vec<String> = Vec::new();
        let mut size = 0usize;
        for item in texts.try_iter()? {
            let s: String = item?.extract()?;
            size += s.len();
            batch.push(s);
            if size >= batch_bytes {
                py.detach(|| counter.add(&batch)).map_err(to_py_err)?;
                batch.clear();
                size = 0;
            }
        }
        let tok = py.detach(|| {
            counter.add(&batch)?;
            drop(batch);
            Tokenizer::train_from_counter(&counter, vocab_size, &special_tokens)
        });
        tok.map(Self::wrap).map_err(to_py_err)
    }

    /// Load a file written by `save`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        py.detach(|| Tokenizer::load(&path))
            .map(Self::wrap)
            .map_err(to_py_err)
    }

    /// Build from `(token bytes, rank)` pairs (ranks exactly 0..M) and `(special, id)` pairs.
    #[staticmethod]
    fn from_ranks(
        py: Python<'_>,
        ranks: Vec<(Vec<u8>, u32)>,
        pattern: &str,
        special_tokens: Vec<(String, u32)>,
    ) -> PyResult<Self> {
        py.detach(|| {
            let tokens = lrt_bpe::io::ranks_from_pairs(ranks)?;
            Tokenizer::from_ranks(tokens, pattern, special_tokens)
        })
        .map(Self::wrap)
        .map_err(to_py_err)
    }

    /// Build from a tiktoken ranks file (`<base64 token> <rank>` per line).
    #[staticmethod]
    fn from_tiktoken_file(
        py: Python<'_>,
        path: PathBuf,
        pattern: &str,
        special_tokens: Vec<(String, u32)>,
    ) -> PyResult<Self> {
        py.detach(|| {
            let tokens = lrt_bpe::io::load_tiktoken_ranks(&path)?;
            Tokenizer::from_ranks(tokens, pattern, special_tokens)
        })
        .map(Self::wrap)
        .map_err(to_py_err)
    }

    /// Write the project format atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).map_err(to_py_err)
    }

    /// Ids of `text` as a list (special-token strings are ordinary text).
    fn encode_ordinary<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyList>> {
        let ids = py
            .detach(|| self.inner.encode_ordinary(text))
            .map_err(to_py_err)?;
        self.id_list(py, &ids)
    }

    /// Ids of `text` as a uint32 numpy array (the Rust buffer, not copied).
    fn encode_ordinary_array<'py>(
        &self,
        py: Python<'py>,
        text: &str,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let ids = py
            .detach(|| self.inner.encode_ordinary(text))
            .map_err(to_py_err)?;
        Ok(ids.into_pyarray(py))
    }

    /// Ids of each text, encoded in parallel (`num_threads=None`: all cores).
    #[pyo3(signature = (texts, num_threads = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        num_threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let all = py
            .detach(|| self.inner.encode_batch(&texts, num_threads))
            .map_err(to_py_err)?;
        drop(texts);
        let lists = all
            .iter()
            .map(|ids| self.id_list(py, ids))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, lists)
    }

    /// All texts' ids in one uint32 array plus int64 offsets (`len(texts) + 1`): text `i` is
    /// `ids[offsets[i]:offsets[i+1]]`. Zero-copy hand-over for bulk encoding.
    #[pyo3(signature = (texts, num_threads = None))]
    fn encode_batch_flat<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        num_threads: Option<usize>,
    ) -> PyResult<FlatIds<'py>> {
        let (ids, offsets) = py
            .detach(|| {
                let all = self.inner.encode_batch(&texts, num_threads)?;
                let mut offsets = Vec::with_capacity(all.len() + 1);
                offsets.push(0i64);
                let mut ids = Vec::with_capacity(all.iter().map(Vec::len).sum());
                for v in &all {
                    ids.extend_from_slice(v);
                    offsets.push(ids.len() as i64);
                }
                Ok::<_, BpeError>((ids, offsets))
            })
            .map_err(to_py_err)?;
        Ok((ids.into_pyarray(py), offsets.into_pyarray(py)))
    }

    /// Bytes of `ids`; special tokens decode to their strings.
    fn decode_bytes<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| self.inner.decode_bytes(&ids))
            .map_err(to_py_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Bytes of one token.
    fn token_bytes<'py>(&self, py: Python<'py>, id: u32) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.inner.token_bytes(id).map_err(to_py_err)?;
        Ok(PyBytes::new(py, b))
    }

    /// `(token bytes, rank)` of every ordinary token, by rank (tiktoken's mergeable_ranks).
    fn ranks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, u32)> {
        self.inner
            .ranks()
            .iter()
            .enumerate()
            .map(|(r, b)| (PyBytes::new(py, b), r as u32))
            .collect()
    }

    /// The chunks the split pattern cuts `text` into (debugging, reference tests).
    fn pretokenize(&self, py: Python<'_>, text: &str) -> PyResult<Vec<String>> {
        py.detach(|| {
            self.inner
                .pretokenize(text)
                .map(|v| v.into_iter().map(str::to_string).collect())
        })
        .map_err(to_py_err)
    }

    /// int32 (vocab_size,): byte length of each token, 0 for special tokens.
    fn token_byte_lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i32>> {
        self.inner.token_byte_lengths().into_pyarray(py)
    }

    /// One more than the largest id, special tokens included.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// Number of ordinary (non-special) tokens.
    #[getter]
    fn n_ranks(&self) -> usize {
        self.inner.n_ranks()
    }

    /// The split pattern.
    #[getter]
    fn pattern<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        PyString::new(py, self.inner.pattern())
    }

    /// `{special token: id}`.
    #[getter]
    fn special_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (s, id) in self.inner.special_tokens() {
            d.set_item(s, id)?;
        }
        Ok(d)
    }

    /// Hex sha256 of the canonical serialization.
    #[getter]
    fn hash(&self) -> &str {
        self.inner.hash()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add("GPT4_SPLIT_PATTERN", lrt_bpe::GPT4_SPLIT_PATTERN)?;
    Ok(())
}
