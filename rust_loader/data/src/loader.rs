//! The batch loader: a split's shards, a deterministic row sampler (best-fit or contiguous),
//! and a prefetch thread that writes batches into caller-owned buffers.
//!
//! Rows. `Contiguous`: window w of a shard is tokens `w*T .. w*T+T+1` (stride T, so each target
//! is some window's last input); windows never cross shards. `BestFit`: rows of T+1 tokens built
//! from whole documents (a span from one BOS to the next, or to the shard end): from a buffer of
//! `buffer_docs` documents take the largest that fits the space left; when none fits, crop the
//! shortest to fill the row exactly (its remainder is dropped). Every row starts at a BOS.
//!
//! Order. Items (windows or documents) are numbered globally over the split's shards in
//! manifest order. Epoch e visits `permutation(n, seed, e)` (identity when not shuffling); rank r
//! of w takes positions r, r+w, r+2w, ... of it, `n / w` of them, so ranks are disjoint and
//! all ranks yield the same number of rows (the last `n mod w` items of an epoch are skipped).
//! Items stream across epochs without a break; with `epochs` set the stream ends and the last
//! batch may hold fewer than B rows (contiguous) or the last partial row is dropped (best-fit).
//!
//! State. `(epoch, cursor, buffer)` fixes every later row: `cursor` is the next position in this
//! rank's share of epoch `epoch`, `buffer` the document ids in the best-fit buffer, in order.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{hex, DataError, Result};
use crate::format::{Shard, TokenDtype};
use crate::rng::permutation;

/// What the caller expects of a split's shards (from the manifest and the tokenizer in use).
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub tokenizer_hash: Option<[u8; 32]>,
    /// Token count of each shard, as the manifest records it.
    pub tokens: Option<Vec<u64>>,
}

/// The opened shards of one split. Cheap to open (headers and indices only); chunks are
/// verified on first touch. Shared by every iteration of a loader.
#[derive(Debug)]
pub struct Dataset {
    shards: Vec<Shard>,
    dtype: TokenDtype,
    vocab_size: u32,
    bos_id: u32,
    doc_prefix: Vec<u64>,
}

impl Dataset {
    pub fn open(paths: &[PathBuf], expect: &Expect) -> Result<Self> {
        if paths.is_empty() {
            return Err(DataError::Invalid(
                "no shards to load (the split is empty)".into(),
            ));
        }
        let mut shards = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            let s = Shard::open(p)?;
            let h = s.header();
            if let Some(want) = &expect.tokenizer_hash {
                if &h.tokenizer_hash != want {
                    return Err(DataError::TokenizerMismatch {
                        path: p.clone(),
                        expected: hex(want),
                        found: hex(&h.tokenizer_hash),
                    });
                }
            }
            if let Some(t) = expect.tokens.as_ref().and_then(|t| t.get(i)) {
                if *t != h.token_count {
                    return Err(DataError::format(
                        p,
                        format!("holds {} tokens but the manifest says {t}", h.token_count),
                    ));
                }
            }
            if let Some(first) = shards.first() {
                let f: &Shard = first;
                let g = f.header();
                if (g.vocab_size, g.bos_id, g.tokenizer_hash)
                    != (h.vocab_size, h.bos_id, h.tokenizer_hash)
                {
                    return Err(DataError::format(
                        p,
                        format!(
                            "vocab/BOS/tokenizer differ from those of {} in the same split",
                            f.path().display()
                        ),
                    ));
                }
            }
            shards.push(s);
        }
        let h = shards[0].header().clone();
        let mut doc_prefix = vec![0u64];
        for s in &shards {
            doc_prefix.push(doc_prefix.last().unwrap() + s.doc_starts().len() as u64);
        }
        Ok(Dataset {
            shards,
            dtype: h.dtype,
            vocab_size: h.vocab_size,
            bos_id: h.bos_id,
            doc_prefix,
        })
    }

    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
    pub fn n_tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.token_count()).sum()
    }
    pub fn n_docs(&self) -> u64 {
        *self.doc_prefix.last().unwrap()
    }

    /// (shard, start, length) of global document `id`.
    fn doc(&self, id: u64) -> (usize, u64, u64) {
        let s = self.doc_prefix.partition_point(|&x| x <= id) - 1;
        let starts = self.shards[s].doc_starts();
        let k = (id - self.doc_prefix[s]) as usize;
        let end = starts
            .get(k + 1)
            .copied()
            .unwrap_or(self.shards[s].token_count());
        (s, starts[k], end - starts[k])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    BestFit,
    Contiguous,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "bestfit" => Ok(Mode::BestFit),
            "contiguous" => Ok(Mode::Contiguous),
            _ => Err(DataError::Invalid(format!(
                "mode {s:?} is not one of \"bestfit\", \"contiguous\""
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::BestFit => "bestfit",
            Mode::Contiguous => "contiguous",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub mode: Mode,
    pub batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub epochs: Option<u64>,
    pub rank: u64,
    pub world_size: u64,
    pub buffer_docs: usize,
}

/// Position of a loader between two batches. Plain integers only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoaderState {
    pub epoch: u64,
    pub cursor: u64,
    pub buffer: Vec<u64>,
    /// Batches yielded so far (informational).
    pub batches: u64,
}

#[derive(Clone, Copy)]
struct BufDoc {
    id: u64,
    shard: usize,
    start: u64,
    len: u64,
}

/// Produces batches deterministically from a `LoaderState`.
pub struct Sampler {
    ds: Arc<Dataset>,
    cfg: LoaderConfig,
    state: LoaderState,
    buffer: Vec<BufDoc>,
    n_items: u64,
    per_rank: u64,
    win_prefix: Vec<u64>,
    perm: Option<(u64, Vec<u32>)>,
}

impl Sampler {
    pub fn new(ds: Arc<Dataset>, cfg: LoaderConfig, state: Option<LoaderState>) -> Result<Self> {
        let inv = |m: String| Err(DataError::Invalid(m));
        if cfg.batch_size == 0 || cfg.seq_len == 0 {
            return inv("batch_size and seq_len must be positive".into());
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return inv(format!(
                "rank {} is not in 0..world_size {}",
                cfg.rank, cfg.world_size
            ));
        }
        if cfg.buffer_docs == 0 {
            return inv("buffer_docs must be positive".into());
        }
        let t1 = cfg.seq_len as u64 + 1;
        let mut win_prefix = vec![0u64];
        for s in ds.shards() {
            let n = s.token_count().saturating_sub(1) / cfg.seq_len as u64;
            let n = if s.token_count() >= t1 { n } else { 0 };
            win_prefix.push(win_prefix.last().unwrap() + n);
        }
        let n_items = match cfg.mode {
            Mode::Contiguous => *win_prefix.last().unwrap(),
            Mode::BestFit => ds.n_docs(),
        };
        if n_items > u32::MAX as u64 {
            return inv(format!(
                "{n_items} items exceed the loader's limit of 2^32 per split"
            ));
        }
        let per_rank = n_items / cfg.world_size;
        if per_rank == 0 {
            let what = match cfg.mode {
                Mode::Contiguous => format!("windows of {t1} tokens"),
                Mode::BestFit => "documents".into(),
            };
            return inv(format!(
                "the split has {n_items} {what}, fewer than world_size {}; pack more data or \
                 use a shorter seq_len",
                cfg.world_size
            ));
        }
        let mut sampler = Sampler {
            ds,
            cfg,
            state: LoaderState::default(),
            buffer: Vec::new(),
            n_items,
            per_rank,
            win_prefix,
            perm: None,
        };
        if let Some(st) = state {
            sampler.restore(st)?;
        }
        Ok(sampler)
    }

    fn restore(&mut self, st: LoaderState) -> Result<()> {
        if st.cursor > self.per_rank
            || (self.cfg.mode == Mode::Contiguous && !st.buffer.is_empty())
            || st.buffer.len() > self.cfg.buffer_docs
        {
            return Err(DataError::Invalid(format!(
                "loader state (cursor {}, {} buffered) does not fit this loader ({} items per \
                 rank per epoch, buffer of {}); was it saved with another dataset or config?",
                st.cursor,
                st.buffer.len(),
                self.per_rank,
                self.cfg.buffer_docs
            )));
        }
        self.buffer = Vec::with_capacity(self.cfg.buffer_docs);
        for &id in &st.buffer {
            if id >= self.n_items {
                return Err(DataError::Invalid(format!(
                    "loader state names document {id} but the split has {}",
                    self.n_items
                )));
            }
            self.buffer.push(self.buf_doc(id));
        }
        self.state = st;
        Ok(())
    }

    pub fn state(&self) -> &LoaderState {
        &self.state
    }
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.ds
    }
    pub fn row_bytes(&self) -> usize {
        (self.cfg.seq_len + 1) * self.ds.dtype().itemsize()
    }

    fn buf_doc(&self, id: u64) -> BufDoc {
        let (shard, start, len) = self.ds.doc(id);
        BufDoc {
            id,
            shard,
            start,
            len,
        }
    }

    /// Next item of this rank's stream, or None when `epochs` are done.
    fn next_item(&mut self) -> Option<u64> {
        if self.state.cursor == self.per_rank {
            self.state.epoch += 1;
            self.state.cursor = 0;
        }
        if self.cfg.epochs.is_some_and(|e| self.state.epoch >= e) {
            return None;
        }
        let pos = self.cfg.rank + self.cfg.world_size * self.state.cursor;
        self.state.cursor += 1;
        if !self.cfg.shuffle {
            return Some(pos);
        }
        let epoch = self.state.epoch;
        if self.perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.perm = Some((
                epoch,
                permutation(self.n_items as u32, self.cfg.seed, epoch),
            ));
        }
        Some(self.perm.as_ref().unwrap().1[pos as usize] as u64)
    }

    /// Fills one row of T+1 tokens; false when the stream ended first.
    fn fill_row(&mut self, row: &mut [u8]) -> Result<bool> {
        let isz = self.ds.dtype().itemsize();
        match self.cfg.mode {
            Mode::Contiguous => {
                let Some(id) = self.next_item() else {
                    return Ok(false);
                };
                let s = self.win_prefix.partition_point(|&x| x <= id) - 1;
                let start = (id - self.win_prefix[s]) * self.cfg.seq_len as u64;
                let src =
                    self.ds.shards[s].token_bytes(start, start + self.cfg.seq_len as u64 + 1)?;
                row.copy_from_slice(src);
                Ok(true)
            }
            Mode::BestFit => {
                let cap = self.cfg.seq_len as u64 + 1;
                let mut filled = 0u64;
                while filled < cap {
                    while self.buffer.len() < self.cfg.buffer_docs {
                        match self.next_item() {
                            Some(id) => {
                                let d = self.buf_doc(id);
                                self.buffer.push(d);
                            }
                            None => break,
                        }
                    }
                    if self.buffer.is_empty() {
                        return Ok(false);
                    }
                    let room = cap - filled;
                    let (mut best, mut best_len) = (usize::MAX, 0u64);
                    let (mut short, mut short_len) = (0usize, u64::MAX);
                    for (i, d) in self.buffer.iter().enumerate() {
                        if d.len <= room && d.len > best_len {
                            (best, best_len) = (i, d.len);
                        }
                        if d.len < short_len {
                            (short, short_len) = (i, d.len);
                        }
                    }
                    let (i, take) = if best != usize::MAX {
                        (best, best_len)
                    } else {
                        (short, room)
                    };
                    let d = self.buffer.remove(i);
                    let src = self.ds.shards[d.shard].token_bytes(d.start, d.start + take)?;
                    let a = filled as usize * isz;
                    row[a..a + src.len()].copy_from_slice(src);
                    filled += take;
                }
                Ok(true)
            }
        }
    }

    /// Fills up to B rows of `out` (B * (T+1) tokens); returns the rows written (0 = done).
    pub fn next_batch(&mut self, out: &mut [u8]) -> Result<usize> {
        let rb = self.row_bytes();
        assert!(
            out.len() >= rb * self.cfg.batch_size,
            "batch buffer too small"
        );
        let mut rows = 0;
        for row in out.chunks_exact_mut(rb).take(self.cfg.batch_size) {
            if !self.fill_row(row)? {
                break;
            }
            rows += 1;
        }
        if rows > 0 {
            self.state.buffer = self.buffer.iter().map(|d| d.id).collect();
            self.state.batches += 1;
        }
        Ok(rows)
    }
}

// ------------------------------------------------------------------------------------------
// Prefetch thread
// ------------------------------------------------------------------------------------------

/// A caller-owned batch buffer handed to the prefetch thread.
#[derive(Clone, Copy)]
pub struct SlotPtr {
    pub ptr: *mut u8,
    pub len: usize,
}
// SAFETY: the prefetch protocol gives the thread exclusive use of a slot between receiving
// its index on `free` and sending it back on `filled`; see `Prefetcher::new`.
unsafe impl Send for SlotPtr {}

enum Msg {
    Batch {
        slot: usize,
        rows: usize,
        state: LoaderState,
    },
    End,
    Failed(DataError),
}

/// Runs a `Sampler` on its own thread, `prefetch` batches ahead, into a ring of
/// `prefetch + 1` caller-owned slots. A yielded slot stays untouched until `prefetch`
/// further batches have been drawn, then it is handed back to the thread.
pub struct Prefetcher {
    free: Option<Sender<usize>>,
    filled: Receiver<Msg>,
    thread: Option<JoinHandle<()>>,
    held: VecDeque<usize>,
    prefetch: usize,
    state: LoaderState,
    done: bool,
}

impl Prefetcher {
    /// # Safety
    /// Each slot must point to `len` writable bytes, not aliased by anything that writes,
    /// that stay valid until this `Prefetcher` is dropped (its `Drop` joins the thread).
    /// The caller reads a slot only between `next_batch` returning it and the `prefetch`-th
    /// following call of `next_batch`.
    pub unsafe fn new(mut sampler: Sampler, slots: Vec<SlotPtr>, prefetch: usize) -> Result<Self> {
        let need = sampler.row_bytes() * sampler.cfg.batch_size;
        if prefetch == 0 || slots.len() != prefetch + 1 {
            return Err(DataError::Invalid(format!(
                "need prefetch >= 1 and prefetch + 1 slots, got prefetch {prefetch} and {} slots",
                slots.len()
            )));
        }
        if let Some(s) = slots.iter().find(|s| s.len < need) {
            return Err(DataError::Invalid(format!(
                "batch buffer of {} bytes is smaller than B*(T+1)*itemsize = {need}",
                s.len
            )));
        }
        let state = sampler.state().clone();
        let (free_tx, free_rx) = channel::<usize>();
        let (filled_tx, filled_rx) = channel::<Msg>();
        for i in 0..slots.len() {
            free_tx.send(i).expect("receiver alive");
        }
        let thread = std::thread::Builder::new()
            .name("lrt-loader".into())
            .spawn(move || {
                let slots = slots;
                for slot in free_rx {
                    let s = slots[slot];
                    // SAFETY: exclusive use of this slot until it is sent back (see new()).
                    let buf = unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) };
                    let msg = match sampler.next_batch(&mut buf[..need]) {
                        Ok(0) => Msg::End,
                        Ok(rows) => Msg::Batch {
                            slot,
                            rows,
                            state: sampler.state().clone(),
                        },
                        Err(e) => Msg::Failed(e),
                    };
                    let stop = !matches!(msg, Msg::Batch { .. });
                    if filled_tx.send(msg).is_err() || stop {
                        break;
                    }
                }
            })
            .map_err(|e| DataError::io("spawn loader thread for", Path::new("<loader>"), e))?;
        Ok(Prefetcher {
            free: Some(free_tx),
            filled: filled_rx,
            thread: Some(thread),
            held: VecDeque::new(),
            prefetch,
            state,
            done: false,
        })
    }

    /// Blocks for the next batch: `Some((slot, rows))`, or `None` at the end of the epochs.
    pub fn next_batch(&mut self) -> Result<Option<(usize, usize)>> {
        if self.done {
            return Ok(None);
        }
        if self.held.len() == self.prefetch {
            let slot = self.held.pop_front().unwrap();
            if let Some(tx) = &self.free {
                let _ = tx.send(slot);
            }
        }
        match self.filled.recv() {
            Ok(Msg::Batch { slot, rows, state }) => {
                self.held.push_back(slot);
                self.state = state;
                Ok(Some((slot, rows)))
            }
            Ok(Msg::End) => {
                self.done = true;
                Ok(None)
            }
            Ok(Msg::Failed(e)) => {
                self.done = true;
                Err(e)
            }
            Err(_) => {
                self.done = true;
                Err(DataError::Invalid(
                    "the loader thread stopped unexpectedly".into(),
                ))
            }
        }
    }

    /// State after the last batch returned by `next_batch` (not after what is prefetched).
    pub fn state(&self) -> &LoaderState {
        &self.state
    }

    /// Stops and joins the thread; no slot is written after this returns.
    pub fn close(&mut self) {
        self.free = None;
        self.done = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.close();
    }
}
