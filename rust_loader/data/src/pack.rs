//! Tokenize-and-pack: documents -> `<|bos|>`-prefixed token stream -> fixed-size shards of a
//! train and a val split, plus `manifest.json`.
//!
//! * Every shard holds exactly `shard_tokens` tokens except the last of each split. A document
//!   that does not fit is split across shards; the document index of a shard records only the
//!   true starts (BOS positions) in it, so the continuation at the head of the next shard has
//!   no index entry.
//! * The split is decided per document from (seed, document number in the input stream):
//!   deterministic, independent of batching and thread count.
//! * Empty documents are skipped (not written as a lone BOS) and counted in the manifest.
//! * Shards are written as `name.bin.tmp` (fsynced) and only renamed into place by `finish`,
//!   followed by the manifest (temp + rename). Dropping a `Packer` without `finish` (an error
//!   anywhere) removes every temp it wrote, so an output folder never holds half a corpus.
//! * One part of a multi-machine pack (`lrt-pipeline tokenize --part i/n`) sets `prefix`, so
//!   its files (`{prefix}train_0000.bin`, ..., `{prefix}manifest.json`) cannot collide with
//!   another part's, and `first_document`, the stream number of its first document, so every
//!   document gets the same train/val draw as in a single run.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{hex, DataError, Result};
use crate::format::{
    encode_shard, sync_dir, tmp_path, write_atomic, write_fsync, Compression, ShardMeta,
    TokenDtype, DEFAULT_CHUNK_TOKENS, FORMAT_VERSION,
};
use crate::rng;

pub const MANIFEST: &str = "manifest.json";
pub const SPLITS: [&str; 2] = ["train", "val"];

#[derive(Clone, Debug)]
pub struct PackConfig {
    pub vocab_size: u32,
    pub bos_id: u32,
    pub tokenizer_hash: [u8; 32],
    pub shard_tokens: u64,
    pub chunk_tokens: u32,
    pub compression: Compression,
    pub val_fraction: f64,
    pub seed: u64,
    /// Prefix of every file name written (shards and manifest); "" for a single-run pack.
    /// ASCII letters, digits, `_`, `-` and `.` only.
    pub prefix: String,
    /// Number, in the whole input stream, of the first document added (0 for a single run):
    /// document `first_document + k` gets the split draw `u(seed, first_document + k)`.
    pub first_document: u64,
}

impl PackConfig {
    pub fn new(vocab_size: u32, bos_id: u32, tokenizer_hash: [u8; 32]) -> Self {
        PackConfig {
            vocab_size,
            bos_id,
            tokenizer_hash,
            shard_tokens: 1 << 24,
            chunk_tokens: DEFAULT_CHUNK_TOKENS,
            compression: Compression::None,
            val_fraction: 0.01,
            seed: 0,
            prefix: String::new(),
            first_document: 0,
        }
    }

    /// `{prefix}manifest.json`.
    pub fn manifest_name(&self) -> String {
        format!("{}{MANIFEST}", self.prefix)
    }

    fn validate(&self) -> Result<()> {
        let inv = |m: String| Err(DataError::Invalid(m));
        if self.vocab_size == 0 || self.bos_id >= self.vocab_size {
            return inv(format!(
                "bos_id {} must be below vocab_size {}",
                self.bos_id, self.vocab_size
            ));
        }
        if self.shard_tokens == 0 {
            return inv("shard_tokens must be positive".into());
        }
        if self.chunk_tokens == 0 || self.chunk_tokens & 3 != 0 {
            return inv(format!(
                "chunk_tokens {} must be a positive multiple of 4",
                self.chunk_tokens
            ));
        }
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        if !self.prefix.bytes().all(plain) || self.prefix.starts_with('.') {
            return inv(format!(
                "file prefix {:?} may hold only ASCII letters, digits, '_', '-' and '.' \
                 (and may not start with '.')",
                self.prefix
            ));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return inv(format!(
                "val_fraction {} must be in [0, 1)",
                self.val_fraction
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
struct ShardRecord {
    file: String,
    tokens: u64,
    documents: u64,
    bytes: u64,
    sha256: String,
}

/// The two outputs of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train = 0,
    Val = 1,
}

impl Split {
    /// `"train"` or `"val"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            other => Err(DataError::Invalid(format!(
                "split {other:?} is not one of \"train\", \"val\""
            ))),
        }
    }
}

#[derive(Default)]
struct SplitWriter {
    cur: Vec<u32>,
    starts: Vec<u64>,
    shards: Vec<ShardRecord>,
    documents: u64,
    tokens: u64,
}

pub struct Packer {
    out_dir: PathBuf,
    cfg: PackConfig,
    meta: ShardMeta,
    splits: [SplitWriter; 2],
    docs_in: u64,
    empty_docs: u64,
    temps: Vec<PathBuf>,
    finished: bool,
    /// `Some(0 | 1)`: documents go to train / val regardless of `val_fraction` (a source with
    /// its own validation files); `None`: the seeded per-document draw.
    forced_split: Option<usize>,
    /// Extra top-level manifest fields (e.g. a part's `part` record).
    extra: serde_json::Map<String, Value>,
}

/// The top-level keys every manifest has; `set_manifest_extra` may not replace them.
const MANIFEST_KEYS: [&str; 14] = [
    "format",
    "format_version",
    "tokenizer_hash",
    "vocab_size",
    "bos_id",
    "token_dtype",
    "compression",
    "shard_tokens",
    "chunk_tokens",
    "val_fraction",
    "seed",
    "splits",
    "totals",
    "source",
];

impl Packer {
    pub fn new(out_dir: &Path, cfg: PackConfig) -> Result<Self> {
        cfg.validate()?;
        fs::create_dir_all(out_dir).map_err(|e| DataError::io("create folder", out_dir, e))?;
        let meta = ShardMeta {
            vocab_size: cfg.vocab_size,
            bos_id: cfg.bos_id,
            tokenizer_hash: cfg.tokenizer_hash,
            chunk_tokens: cfg.chunk_tokens,
            compression: cfg.compression,
        };
        Ok(Packer {
            out_dir: out_dir.to_path_buf(),
            cfg,
            meta,
            splits: Default::default(),
            docs_in: 0,
            empty_docs: 0,
            temps: Vec::new(),
            finished: false,
            forced_split: None,
            extra: serde_json::Map::new(),
        })
    }

    /// Adds top-level fields to the manifest `finish` writes (a JSON object; its keys must not
    /// be among the standard ones).
    pub fn set_manifest_extra(&mut self, extra: Value) -> Result<()> {
        let Value::Object(map) = extra else {
            return Err(DataError::Invalid(
                "extra manifest fields must be a JSON object".into(),
            ));
        };
        if let Some(k) = map.keys().find(|k| MANIFEST_KEYS.contains(&k.as_str())) {
            return Err(DataError::Invalid(format!(
                "extra manifest field {k:?} would replace a standard one"
            )));
        }
        self.extra = map;
        Ok(())
    }

    /// `set_manifest_extra` from JSON text (for bindings).
    pub fn set_manifest_extra_json(&mut self, text: &str) -> Result<()> {
        let extra = serde_json::from_str(text)
            .map_err(|e| DataError::Invalid(format!("extra manifest fields are not JSON: {e}")))?;
        self.set_manifest_extra(extra)
    }

    /// Sends the documents added from now on to `Some(Split::Train | Split::Val)`, or back to
    /// the seeded `val_fraction` draw with `None`. Document numbering is unaffected, so the
    /// draw for the remaining documents is the same as without the forced ones.
    pub fn set_split(&mut self, split: Option<Split>) {
        self.forced_split = split.map(|s| s as usize);
    }

    /// Encodes `docs` in parallel on the rayon pool (all cores) and appends them in order.
    pub fn add_documents<S, F>(&mut self, docs: &[S], encode: &F) -> Result<()>
    where
        S: AsRef<str> + Sync,
        F: Fn(&str) -> Vec<u32> + Sync,
    {
        self.try_add_documents(docs, &|d: &str| {
            Ok::<_, std::convert::Infallible>(encode(d))
        })
    }

    /// `add_documents` with a fallible encoder (e.g. `lrt_bpe::Tokenizer::encode_ordinary`).
    pub fn try_add_documents<S, F, E>(&mut self, docs: &[S], encode: &F) -> Result<()>
    where
        S: AsRef<str> + Sync,
        F: Fn(&str) -> std::result::Result<Vec<u32>, E> + Sync,
        E: std::fmt::Display + Send,
    {
        let first = self.cfg.first_document + self.docs_in;
        let encoded: Vec<Vec<u32>> = docs
            .par_iter()
            .enumerate()
            .map(|(i, d)| {
                encode(d.as_ref()).map_err(|e| {
                    DataError::Invalid(format!(
                        "document {}: encoding failed: {e}",
                        first + i as u64
                    ))
                })
            })
            .collect::<Result<_>>()?;
        self.add_encoded(encoded.iter().map(|v| v.as_slice()))
    }

    /// Appends already-encoded documents (ordinary tokens, no BOS: the packer adds it).
    pub fn add_encoded<'a>(&mut self, docs: impl IntoIterator<Item = &'a [u32]>) -> Result<()> {
        for doc in docs {
            let index = self.cfg.first_document + self.docs_in;
            self.docs_in += 1;
            if doc.is_empty() {
                self.empty_docs += 1;
                continue;
            }
            if let Some(&bad) = doc.iter().find(|&&t| t >= self.cfg.vocab_size) {
                return Err(DataError::Invalid(format!(
                    "document {index}: token id {bad} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                )));
            }
            let s = self.forced_split.unwrap_or_else(|| {
                usize::from(rng::unit(self.cfg.seed, index) < self.cfg.val_fraction)
            });
            let w = &mut self.splits[s];
            w.starts.push(w.cur.len() as u64);
            w.cur.push(self.cfg.bos_id);
            w.cur.extend_from_slice(doc);
            w.documents += 1;
            w.tokens += doc.len() as u64 + 1;
            while self.splits[s].cur.len() as u64 >= self.cfg.shard_tokens {
                self.flush(s, self.cfg.shard_tokens as usize)?;
            }
        }
        Ok(())
    }

    /// Writes the first `n` buffered tokens of split `s` as its next shard (temp name).
    fn flush(&mut self, s: usize, n: usize) -> Result<()> {
        let w = &mut self.splits[s];
        let k = w.starts.partition_point(|&x| (x as usize) < n);
        let name = format!("{}{}_{:04}.bin", self.cfg.prefix, SPLITS[s], w.shards.len());
        let tmp = tmp_path(&self.out_dir.join(&name));
        let bytes = encode_shard(&self.meta, &w.cur[..n], &w.starts[..k])?;
        self.temps.push(tmp.clone());
        write_fsync(&tmp, &bytes)?;
        w.shards.push(ShardRecord {
            file: name,
            tokens: n as u64,
            documents: k as u64,
            bytes: bytes.len() as u64,
            sha256: hex(&Sha256::digest(&bytes)),
        });
        w.cur.drain(..n);
        w.starts.drain(..k);
        for x in w.starts.iter_mut() {
            *x -= n as u64;
        }
        Ok(())
    }

    /// Flushes the last shards, renames everything into place, writes `manifest.json`
    /// (which also records `source`, the caller's input statistics) and returns it.
    pub fn finish(mut self, source: Value) -> Result<Value> {
        let total: u64 = self.splits.iter().map(|w| w.tokens).sum();
        if total == 0 {
            return Err(DataError::Invalid(format!(
                "empty corpus: {} documents read, {} of them empty; nothing to pack",
                self.docs_in, self.empty_docs
            )));
        }
        for s in 0..2 {
            let n = self.splits[s].cur.len();
            if n > 0 {
                self.flush(s, n)?;
            }
        }
        let mut keep = Vec::new();
        for w in &self.splits {
            for r in &w.shards {
                let dst = self.out_dir.join(&r.file);
                fs::rename(tmp_path(&dst), &dst)
                    .map_err(|e| DataError::io("rename onto", &dst, e))?;
                keep.push(r.file.clone());
            }
        }
        self.temps.clear();
        self.remove_stale(&keep);
        let manifest = self.manifest(source);
        let text = serde_json::to_string_pretty(&manifest).expect("json");
        let path = self.out_dir.join(self.cfg.manifest_name());
        write_atomic(&path, text.as_bytes())?;
        sync_dir(&path);
        self.finished = true;
        Ok(manifest)
    }

    /// `finish` with the source statistics and the manifest as JSON text (for bindings).
    pub fn finish_json(self, source_json: &str) -> Result<String> {
        let source: Value = serde_json::from_str(source_json)
            .map_err(|e| DataError::Invalid(format!("source statistics are not JSON: {e}")))?;
        Ok(serde_json::to_string(&self.finish(source)?).expect("json"))
    }

    /// Shards of an earlier, larger pack in the same folder would otherwise linger, and so would
    /// the `name.bin.tmp` files of a pack killed with SIGKILL (which no destructor cleans up).
    /// Runs after every temp of this pack was renamed, so any shard temp left is stale. Only
    /// names with this pack's prefix are touched (other parts' shards stay).
    fn remove_stale(&self, keep: &[String]) {
        let Ok(entries) = fs::read_dir(&self.out_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = SPLITS.iter().any(|s| {
                name.strip_prefix(self.cfg.prefix.as_str())
                    .and_then(|r| r.strip_prefix(s))
                    .and_then(|r| r.strip_prefix('_'))
                    .and_then(|r| r.strip_suffix(".tmp").unwrap_or(r).strip_suffix(".bin"))
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            });
            if ours && !keep.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn manifest(&self, source: Value) -> Value {
        let split_json = |w: &SplitWriter| -> Value {
            w.shards
                .iter()
                .map(|r| {
                    json!({"file": r.file, "tokens": r.tokens, "documents": r.documents,
                           "bytes": r.bytes, "sha256": r.sha256})
                })
                .collect()
        };
        let totals = |w: &SplitWriter| json!({"tokens": w.tokens, "documents": w.documents, "shards": w.shards.len()});
        let [train, val] = &self.splits;
        let mut m = json!({
            "format": "lrt-token-shards",
            "format_version": FORMAT_VERSION,
            "tokenizer_hash": hex(&self.cfg.tokenizer_hash),
            "vocab_size": self.cfg.vocab_size,
            "bos_id": self.cfg.bos_id,
            "token_dtype": TokenDtype::for_vocab(self.cfg.vocab_size).name(),
            "compression": self.cfg.compression.name(),
            "shard_tokens": self.cfg.shard_tokens,
            "chunk_tokens": self.cfg.chunk_tokens,
            "val_fraction": self.cfg.val_fraction,
            "seed": self.cfg.seed,
            "splits": {"train": split_json(train), "val": split_json(val)},
            "totals": {
                "tokens": train.tokens + val.tokens,
                "documents": train.documents + val.documents,
                "documents_read": self.docs_in,
                "empty_documents_skipped": self.empty_docs,
                "train": totals(train),
                "val": totals(val),
            },
            "source": source,
        });
        let obj = m.as_object_mut().expect("object");
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        m
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        if !self.finished {
            for t in &self.temps {
                let _ = fs::remove_file(t);
            }
        }
    }
}
