//! Shard format v1: header, document index, chunk table, checksummed payload chunks.
//!
//! The byte layout is specified in `docs/SHARD_FORMAT.md`; this file is its one implementation.
//! Everything is little-endian. Header (128 bytes):
//!
//! ```text
//!   0  [u8; 8]  magic b"LRTSHRD\0"          72  u32  compression (0 raw, 1 zstd)
//!   8  u32      format version (1)          76  u32  number of chunks
//!  12  u32      token dtype (1 u16, 2 u32)   80  u64  payload offset (8-aligned)
//!  16  u32      vocab size                   88  u32  crc32 of document index + chunk table
//!  20  u32      chunk size in tokens         92  u32  BOS token id
//!  24  [u8;32]  tokenizer sha256             96  [u8; 28] reserved, zero
//!  56  u64      token count                 124  u32  crc32 of bytes 0..124
//!  64  u64      document count
//! ```
//! then `document count` u64 BOS offsets, then `number of chunks` entries of
//! `(offset u64, stored length u64, crc32 of the uncompressed bytes u32, crc32 of the stored
//! bytes u32 (zstd; 0 for raw chunks, whose stored bytes are the uncompressed ones))`,
//! then the chunks, each starting 8-aligned, zero padding between them and at the end.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

pub const MAGIC: [u8; 8] = *b"LRTSHRD\0";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 128;
pub const CHUNK_ENTRY_LEN: usize = 24;
/// Default chunk size: 1 Mi tokens (2 MiB of u16), a few hundred microseconds of crc32.
pub const DEFAULT_CHUNK_TOKENS: u32 = 1 << 20;
const ZSTD_LEVEL: i32 = 3;

#[cfg(target_endian = "big")]
compile_error!("lrt_data hands shard bytes to torch unchanged and assumes a little-endian host");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// u16 when every id fits (vocab <= 65536), else u32.
    pub fn for_vocab(vocab_size: u32) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }
    pub fn itemsize(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
    pub fn code(self) -> u32 {
        match self {
            TokenDtype::U16 => 1,
            TokenDtype::U32 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            TokenDtype::U16 => "uint16",
            TokenDtype::U32 => "uint32",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    pub fn code(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" | "raw" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(DataError::Invalid(format!(
                "compression {s:?} is not one of \"none\", \"zstd\""
            ))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u32,
    pub dtype: TokenDtype,
    pub vocab_size: u32,
    pub chunk_tokens: u32,
    pub tokenizer_hash: [u8; 32],
    pub token_count: u64,
    pub doc_count: u64,
    pub compression: Compression,
    pub n_chunks: u32,
    pub payload_offset: u64,
    pub index_crc32: u32,
    pub bos_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub offset: u64,
    pub stored_len: u64,
    /// crc32 of the uncompressed token bytes.
    pub crc32: u32,
    /// crc32 of the stored (compressed) bytes for zstd chunks, 0 for raw ones. Without it a
    /// flipped bit that zstd happens to ignore (e.g. in a frame header field) would go unseen.
    pub stored_crc32: u32,
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
pub fn align8(x: u64) -> u64 {
    x.div_ceil(8) * 8
}

impl ShardHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.dtype.code().to_le_bytes());
        b[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.chunk_tokens.to_le_bytes());
        b[24..56].copy_from_slice(&self.tokenizer_hash);
        b[56..64].copy_from_slice(&self.token_count.to_le_bytes());
        b[64..72].copy_from_slice(&self.doc_count.to_le_bytes());
        b[72..76].copy_from_slice(&self.compression.code().to_le_bytes());
        b[76..80].copy_from_slice(&self.n_chunks.to_le_bytes());
        b[80..88].copy_from_slice(&self.payload_offset.to_le_bytes());
        b[88..92].copy_from_slice(&self.index_crc32.to_le_bytes());
        b[92..96].copy_from_slice(&self.bos_id.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates a header. Checks, in order: magic, version, header checksum,
    /// then every field's own range (so a wrong magic or version is reported as such even
    /// though it also breaks the checksum).
    pub fn decode(path: &Path, b: &[u8]) -> Result<Self> {
        let bad = |what: String| DataError::format(path, what);
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "truncated: file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            )));
        }
        if b[0..8] != MAGIC {
            return Err(bad(format!(
                "bad magic {:?} (expected {:?}): not an LRT token shard",
                String::from_utf8_lossy(&b[0..8]),
                String::from_utf8_lossy(&MAGIC)
            )));
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "unsupported format version {version} (this build reads version {FORMAT_VERSION})"
            )));
        }
        let stored_crc = u32_at(b, 124);
        if crc32fast::hash(&b[..124]) != stored_crc {
            return Err(bad(
                "header checksum mismatch (the header is corrupt)".into()
            ));
        }
        let dtype = match u32_at(b, 12) {
            1 => TokenDtype::U16,
            2 => TokenDtype::U32,
            c => {
                return Err(bad(format!(
                    "unknown token dtype code {c} (1 = u16, 2 = u32)"
                )))
            }
        };
        let compression = match u32_at(b, 72) {
            0 => Compression::None,
            1 => Compression::Zstd,
            c => return Err(bad(format!("unknown compression code {c} (0 raw, 1 zstd)"))),
        };
        let h = ShardHeader {
            version,
            dtype,
            vocab_size: u32_at(b, 16),
            chunk_tokens: u32_at(b, 20),
            tokenizer_hash: b[24..56].try_into().unwrap(),
            token_count: u64_at(b, 56),
            doc_count: u64_at(b, 64),
            compression,
            n_chunks: u32_at(b, 76),
            payload_offset: u64_at(b, 80),
            index_crc32: u32_at(b, 88),
            bos_id: u32_at(b, 92),
        };
        if h.vocab_size == 0 {
            return Err(bad("vocab size is 0".into()));
        }
        if TokenDtype::for_vocab(h.vocab_size) != dtype {
            return Err(bad(format!(
                "token dtype {} does not match vocab size {} (expected {})",
                dtype.name(),
                h.vocab_size,
                TokenDtype::for_vocab(h.vocab_size).name()
            )));
        }
        if h.bos_id >= h.vocab_size {
            return Err(bad(format!(
                "BOS id {} is outside the vocabulary of {}",
                h.bos_id, h.vocab_size
            )));
        }
        if h.chunk_tokens == 0 || h.chunk_tokens & 3 != 0 {
            return Err(bad(format!(
                "chunk size {} tokens is not a positive multiple of 4",
                h.chunk_tokens
            )));
        }
        if h.token_count.div_ceil(h.chunk_tokens as u64) != h.n_chunks as u64 {
            return Err(bad(format!(
                "{} chunks cannot hold {} tokens in chunks of {}",
                h.n_chunks, h.token_count, h.chunk_tokens
            )));
        }
        if h.doc_count > h.token_count {
            return Err(bad(format!(
                "{} documents but only {} tokens",
                h.doc_count, h.token_count
            )));
        }
        let table_end = (HEADER_LEN as u64)
            .checked_add(
                h.doc_count
                    .checked_mul(8)
                    .ok_or_else(|| bad("doc count overflows".into()))?,
            )
            .and_then(|x| x.checked_add(h.n_chunks as u64 * CHUNK_ENTRY_LEN as u64))
            .ok_or_else(|| bad("document count overflows".into()))?;
        if h.payload_offset != table_end {
            return Err(bad(format!(
                "payload offset {} should be {table_end}",
                h.payload_offset
            )));
        }
        Ok(h)
    }
}

/// What a writer needs besides the tokens.
#[derive(Clone, Debug)]
pub struct ShardMeta {
    pub vocab_size: u32,
    pub bos_id: u32,
    pub tokenizer_hash: [u8; 32],
    pub chunk_tokens: u32,
    pub compression: Compression,
}

/// Size and sha256 of a written shard file (for the manifest).
#[derive(Clone, Debug)]
pub struct WrittenShard {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

fn to_le_bytes(tokens: &[u32], dtype: TokenDtype) -> Vec<u8> {
    match dtype {
        TokenDtype::U16 => tokens
            .iter()
            .flat_map(|&t| (t as u16).to_le_bytes())
            .collect(),
        TokenDtype::U32 => tokens.iter().flat_map(|&t| t.to_le_bytes()).collect(),
    }
}

/// Encodes a whole shard file in memory (the writer's one source of layout truth).
pub fn encode_shard(meta: &ShardMeta, tokens: &[u32], doc_starts: &[u64]) -> Result<Vec<u8>> {
    if meta.chunk_tokens == 0 || meta.chunk_tokens & 3 != 0 {
        return Err(DataError::Invalid(format!(
            "chunk_tokens {} must be a positive multiple of 4 (keeps raw chunks 8-aligned)",
            meta.chunk_tokens
        )));
    }
    if meta.bos_id >= meta.vocab_size {
        return Err(DataError::Invalid(format!(
            "bos_id {} is outside the vocabulary of {}",
            meta.bos_id, meta.vocab_size
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t >= meta.vocab_size) {
        return Err(DataError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {} (tokenizer and vocab size disagree)",
            meta.vocab_size
        )));
    }
    let dtype = TokenDtype::for_vocab(meta.vocab_size);
    let raw = to_le_bytes(tokens, dtype);
    let chunk_bytes = meta.chunk_tokens as usize * dtype.itemsize();
    let pieces: Vec<&[u8]> = raw.chunks(chunk_bytes).collect();
    let stored: Vec<(Vec<u8>, u32, u32)> = pieces
        .par_iter()
        .map(|p| {
            let crc = crc32fast::hash(p);
            let data = match meta.compression {
                Compression::None => Vec::new(), // raw chunks are written from `raw` directly
                Compression::Zstd => zstd::bulk::compress(p, ZSTD_LEVEL)
                    .map_err(|e| DataError::Invalid(format!("zstd compression failed: {e}")))?,
            };
            let stored_crc = match meta.compression {
                Compression::None => 0,
                Compression::Zstd => crc32fast::hash(&data),
            };
            Ok((data, crc, stored_crc))
        })
        .collect::<Result<_>>()?;

    let n_chunks = pieces.len();
    let payload_offset = (HEADER_LEN + 8 * doc_starts.len() + CHUNK_ENTRY_LEN * n_chunks) as u64;
    let mut table = Vec::with_capacity(n_chunks);
    let mut off = payload_offset;
    for (i, (data, crc, stored_crc)) in stored.iter().enumerate() {
        let len = match meta.compression {
            Compression::None => pieces[i].len(),
            Compression::Zstd => data.len(),
        } as u64;
        table.push(ChunkEntry {
            offset: off,
            stored_len: len,
            crc32: *crc,
            stored_crc32: *stored_crc,
        });
        off = align8(off + len);
    }
    let mut index = Vec::with_capacity(8 * doc_starts.len() + CHUNK_ENTRY_LEN * n_chunks);
    for &s in doc_starts {
        index.extend_from_slice(&s.to_le_bytes());
    }
    for c in &table {
        index.extend_from_slice(&c.offset.to_le_bytes());
        index.extend_from_slice(&c.stored_len.to_le_bytes());
        index.extend_from_slice(&c.crc32.to_le_bytes());
        index.extend_from_slice(&c.stored_crc32.to_le_bytes());
    }
    let header = ShardHeader {
        version: FORMAT_VERSION,
        dtype,
        vocab_size: meta.vocab_size,
        chunk_tokens: meta.chunk_tokens,
        tokenizer_hash: meta.tokenizer_hash,
        token_count: tokens.len() as u64,
        doc_count: doc_starts.len() as u64,
        compression: meta.compression,
        n_chunks: n_chunks as u32,
        payload_offset,
        index_crc32: crc32fast::hash(&index),
        bos_id: meta.bos_id,
    };
    let mut out = Vec::with_capacity(off as usize);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&index);
    for (i, (data, _, _)) in stored.iter().enumerate() {
        let bytes = match meta.compression {
            Compression::None => pieces[i],
            Compression::Zstd => data.as_slice(),
        };
        out.extend_from_slice(bytes);
        out.resize(align8(out.len() as u64) as usize, 0);
    }
    debug_assert_eq!(out.len() as u64, off);
    Ok(out)
}

/// Writes `bytes` to `path` via `path.tmp` + fsync + rename (+ fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    write_fsync(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io("rename onto", path, e)
    })?;
    sync_dir(path);
    Ok(())
}

/// `name.bin` -> `name.bin.tmp` in the same folder (so the final rename is atomic).
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

pub(crate) fn write_fsync(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| DataError::io("create", path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| DataError::io("write", path, e))
}

pub(crate) fn sync_dir(path: &Path) {
    // Best effort: makes the rename durable on POSIX; not supported everywhere.
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}

/// Encodes and writes one shard atomically; returns its size and sha256.
pub fn write_shard(
    path: &Path,
    meta: &ShardMeta,
    tokens: &[u32],
    doc_starts: &[u64],
) -> Result<WrittenShard> {
    let bytes = encode_shard(meta, tokens, doc_starts)?;
    write_atomic(path, &bytes)?;
    Ok(WrittenShard {
        bytes: bytes.len() as u64,
        sha256: Sha256::digest(&bytes).into(),
    })
}

pub use crate::reader::Shard;
