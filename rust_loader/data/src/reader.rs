//! Verified reading of shard files (layout: `format.rs`, `docs/SHARD_FORMAT.md`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::format::{
    align8, u32_at, u64_at, ChunkEntry, Compression, ShardHeader, TokenDtype, CHUNK_ENTRY_LEN,
    HEADER_LEN,
};

/// An opened shard. Header, document index and chunk table are validated on open; each
/// payload chunk's crc32 is verified lazily, the first time any of its tokens is read
/// (`token_bytes`), so opening a large split is cheap and no unverified byte is ever returned.
/// zstd shards are decompressed (and verified) as a whole on first touch and kept in memory.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    doc_starts: Vec<u64>,
    chunks: Vec<ChunkEntry>,
    map: Mmap,
    verified: Vec<AtomicBool>,
    decoded: OnceLock<Vec<u8>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| DataError::io("stat", path, e))?
            .len();
        if len < HEADER_LEN as u64 {
            return Err(DataError::format(
                path,
                format!(
                    "truncated: file is {len} bytes, shorter than the {HEADER_LEN}-byte header"
                ),
            ));
        }
        // SAFETY: the map is read-only. Shards are written once (temp + rename) and never
        // modified in place; a file truncated or rewritten under a live map is outside the
        // contract (the same as for numpy.memmap).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io("mmap", path, e))?;
        Self::from_map(path, map)
    }

    fn from_map(path: &Path, map: Mmap) -> Result<Self> {
        let bad = |what: String| DataError::format(path, what);
        let header = ShardHeader::decode(path, &map)?;
        let len = map.len() as u64;
        let table_end = header.payload_offset;
        if len < table_end {
            return Err(bad(format!(
                "truncated: file is {len} bytes but its index ends at byte {table_end}"
            )));
        }
        let index = &map[HEADER_LEN..table_end as usize];
        if crc32fast::hash(index) != header.index_crc32 {
            return Err(bad(
                "document index / chunk table checksum mismatch (the index is corrupt)".into(),
            ));
        }
        let n_docs = header.doc_count as usize;
        let doc_starts: Vec<u64> = (0..n_docs).map(|i| u64_at(index, 8 * i)).collect();
        for (i, w) in doc_starts.windows(2).enumerate() {
            if w[1] <= w[0] {
                return Err(bad(format!(
                    "document index is not increasing at entry {}",
                    i + 1
                )));
            }
        }
        if let Some(&last) = doc_starts.last() {
            if last >= header.token_count {
                return Err(bad(format!(
                    "document start {last} is past the {} tokens",
                    header.token_count
                )));
            }
        }
        let itemsize = header.dtype.itemsize() as u64;
        let ct = header.chunk_tokens as u64;
        let mut chunks = Vec::with_capacity(header.n_chunks as usize);
        let mut expect_off = header.payload_offset;
        for i in 0..header.n_chunks as usize {
            let e = &index[8 * n_docs + CHUNK_ENTRY_LEN * i..];
            let c = ChunkEntry {
                offset: u64_at(e, 0),
                stored_len: u64_at(e, 8),
                crc32: u32_at(e, 16),
                stored_crc32: u32_at(e, 20),
            };
            if header.compression == Compression::None && c.stored_crc32 != 0 {
                return Err(bad(format!(
                    "chunk table entry {i} of a raw shard has a non-zero stored checksum"
                )));
            }
            let n_tok = ct.min(header.token_count - i as u64 * ct);
            let ok_len = match header.compression {
                Compression::None => c.stored_len == n_tok * itemsize,
                Compression::Zstd => c.stored_len > 0,
            };
            if c.offset != expect_off || !ok_len {
                return Err(bad(format!(
                    "chunk table entry {i} (offset {}, length {}) is inconsistent",
                    c.offset, c.stored_len
                )));
            }
            let end = c.offset.saturating_add(c.stored_len);
            if end > len {
                return Err(bad(format!(
                    "truncated: chunk {i} ends at byte {end} but the file is {len} bytes"
                )));
            }
            // Padding after each chunk must be zero: no byte of the file goes unchecked.
            let pad_end = align8(end).min(len);
            if map[end as usize..pad_end as usize].iter().any(|&b| b != 0) {
                return Err(bad(format!("non-zero padding after chunk {i}")));
            }
            expect_off = align8(end);
            chunks.push(c);
        }
        if len != expect_off {
            return Err(bad(if len < expect_off {
                format!("truncated: file is {len} bytes, expected {expect_off}")
            } else {
                format!("{} trailing bytes after the last chunk", len - expect_off)
            }));
        }
        let verified = (0..chunks.len()).map(|_| AtomicBool::new(false)).collect();
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            doc_starts,
            chunks,
            map,
            verified,
            decoded: OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }
    pub fn doc_starts(&self) -> &[u64] {
        &self.doc_starts
    }
    pub fn token_count(&self) -> u64 {
        self.header.token_count
    }

    fn chunk_tokens(&self, i: usize) -> u64 {
        let ct = self.header.chunk_tokens as u64;
        ct.min(self.header.token_count - i as u64 * ct)
    }

    /// Checksum of chunk `i`'s token bytes, then every id < vocab_size (one pass over bytes
    /// already in cache: ids >= vocab with a valid checksum would otherwise reach the
    /// embedding as an IndexError that names no file).
    fn check_crc(&self, i: usize, bytes: &[u8]) -> Result<()> {
        self.check_crc_only(i, bytes)?;
        self.check_ids(i, bytes)
    }

    fn check_ids(&self, i: usize, bytes: &[u8]) -> Result<()> {
        let vocab = self.header.vocab_size;
        let found = match self.header.dtype {
            TokenDtype::U16 => bytes
                .chunks_exact(2)
                .position(|c| u16::from_le_bytes([c[0], c[1]]) as u32 >= vocab),
            TokenDtype::U32 => bytes
                .chunks_exact(4)
                .position(|c| u32::from_le_bytes(c.try_into().unwrap()) >= vocab),
        };
        if let Some(k) = found {
            let itemsize = self.header.dtype.itemsize();
            let at = k * itemsize;
            let id = match self.header.dtype {
                TokenDtype::U16 => u16::from_le_bytes([bytes[at], bytes[at + 1]]) as u32,
                TokenDtype::U32 => u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
            };
            let token = i as u64 * self.header.chunk_tokens as u64 + k as u64;
            return Err(DataError::format(
                &self.path,
                format!(
                    "token {token} (chunk {i}) has id {id}, outside the vocabulary of {vocab}; \
                     the shard is corrupt or was not packed by this pipeline"
                ),
            ));
        }
        Ok(())
    }

    fn check_crc_only(&self, i: usize, bytes: &[u8]) -> Result<()> {
        if crc32fast::hash(bytes) != self.chunks[i].crc32 {
            let ct = self.header.chunk_tokens as u64;
            let a = i as u64 * ct;
            return Err(DataError::format(
                &self.path,
                format!(
                    "checksum mismatch in chunk {i} (tokens {a}..{})",
                    a + self.chunk_tokens(i)
                ),
            ));
        }
        Ok(())
    }

    fn decode_zstd(&self) -> Result<&[u8]> {
        if let Some(d) = self.decoded.get() {
            return Ok(d);
        }
        let itemsize = self.header.dtype.itemsize();
        let parts: Vec<Vec<u8>> = (0..self.chunks.len())
            .into_par_iter()
            .map(|i| {
                let c = self.chunks[i];
                let want = self.chunk_tokens(i) as usize * itemsize;
                let src = &self.map[c.offset as usize..(c.offset + c.stored_len) as usize];
                if crc32fast::hash(src) != c.stored_crc32 {
                    return Err(DataError::format(
                        &self.path,
                        format!("checksum mismatch in chunk {i} (compressed bytes)"),
                    ));
                }
                let out = zstd::bulk::decompress(src, want).map_err(|e| {
                    DataError::format(&self.path, format!("chunk {i} does not decompress: {e}"))
                })?;
                if out.len() != want {
                    return Err(DataError::format(
                        &self.path,
                        format!(
                            "chunk {i} decompresses to {} bytes, expected {want}",
                            out.len()
                        ),
                    ));
                }
                self.check_crc(i, &out)?;
                Ok(out)
            })
            .collect::<Vec<Result<_>>>()
            // in chunk order: the error names the first bad chunk, whichever thread found it
            .into_iter()
            .collect::<Result<_>>()?;
        let _ = self.decoded.set(parts.concat());
        Ok(self.decoded.get().expect("just set"))
    }

    /// Raw little-endian bytes of tokens `start..end`, every covering chunk verified.
    pub fn token_bytes(&self, start: u64, end: u64) -> Result<&[u8]> {
        if start > end || end > self.header.token_count {
            return Err(DataError::Invalid(format!(
                "token range {start}..{end} outside shard {} of {} tokens",
                self.path.display(),
                self.header.token_count
            )));
        }
        let itemsize = self.header.dtype.itemsize() as u64;
        let (a, b) = (start * itemsize, end * itemsize);
        match self.header.compression {
            Compression::Zstd => Ok(&self.decode_zstd()?[a as usize..b as usize]),
            Compression::None => {
                if start < end {
                    let ct = self.header.chunk_tokens as u64;
                    for i in (start / ct) as usize..=((end - 1) / ct) as usize {
                        if !self.verified[i].load(Ordering::Acquire) {
                            let c = self.chunks[i];
                            let bytes =
                                &self.map[c.offset as usize..(c.offset + c.stored_len) as usize];
                            self.check_crc(i, bytes)?;
                            self.verified[i].store(true, Ordering::Release);
                        }
                    }
                }
                // Raw chunks are contiguous (chunk_tokens * itemsize is a multiple of 8).
                let p = self.header.payload_offset;
                Ok(&self.map[(p + a) as usize..(p + b) as usize])
            }
        }
    }

    /// Verifies every chunk now (instead of on first touch).
    pub fn verify_all(&self) -> Result<()> {
        self.token_bytes(0, self.header.token_count).map(|_| ())
    }

    /// All tokens widened to u32 (tests and tools; the loader copies bytes instead).
    pub fn tokens_u32(&self) -> Result<Vec<u32>> {
        let b = self.token_bytes(0, self.header.token_count)?;
        Ok(match self.header.dtype {
            TokenDtype::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                .collect(),
            TokenDtype::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        })
    }
}
