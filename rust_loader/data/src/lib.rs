//! `lrt_data`: token shards (versioned, checksummed, raw or zstd), tokenize-and-pack, and
//! the batch loader. Pure Rust: no Python types, no tokenizer dependency (pack takes an
//! encoder closure). The byte layout is specified in `docs/SHARD_FORMAT.md`.
//!
//! * [`format`]: shard header, writer, verified reader.
//! * [`pack`]: documents -> BOS-prefixed shards of a train and a val split + manifest.
//! * [`loader`]: deterministic best-fit / contiguous rows, rank sharding, resumable state,
//!   prefetch thread writing into caller-owned buffers.

pub mod error;
pub mod format;
pub mod loader;
pub mod pack;
pub mod reader;
pub mod rng;

pub use error::{DataError, Result};
pub use format::{Compression, Shard, ShardHeader, ShardMeta, TokenDtype};
pub use loader::{Dataset, Expect, LoaderConfig, LoaderState, Mode, Prefetcher, Sampler, SlotPtr};
pub use pack::{PackConfig, Packer, Split};
