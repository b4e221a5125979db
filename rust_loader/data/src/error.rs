//! The one error type of `lrt_data`. `rust_loader/src/data.rs` maps each variant to one
//! Python exception: `Io` -> `OSError` subclass by kind, `Format` -> `ShardFormatError`,
//! `TokenizerMismatch` -> `TokenizerMismatchError`, `Invalid` -> `ValueError`.

use std::path::{Path, PathBuf};

/// The fix printed after every shard-format error: shards are only ever written by the
/// tokenize stage, so rewriting them is always the cure.
pub const RETOKENIZE: &str = "re-run `lrt-pipeline tokenize`";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An operating-system error on a named file.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A shard or manifest that is corrupt, truncated or of an unknown format.
    #[error("shard {}: {what}; {RETOKENIZE}", path.display())]
    Format { path: PathBuf, what: String },
    /// A shard written by a different tokenizer than the one in use.
    #[error(
        "shard {}: written with tokenizer {found} but the tokenizer in use is {expected}; \
         {RETOKENIZE} with the current tokenizer, or load the tokenizer that wrote these shards",
        path.display()
    )]
    TokenizerMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// A bad argument or value (config, token id out of range, empty corpus, ...).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn format(path: &Path, what: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// Lower-case hex of a byte string (tokenizer hashes, sha256 digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
