"""The zero-copy batch loader (pipeline.data.loader.DataLoader over pipeline._rust.BatchStream).

Expected values come from an independent numpy reader of the shards (tests/test_shards.py's
`ref_read`, which parses the byte layout from the spec). The corpus uses an "integer"
tokenizer whose ids are unique positions, so a window or document is identified by its tokens.
"""

from __future__ import annotations

import hashlib
import io
import struct

import numpy as np
import pytest
import torch

from pipeline.data.loader import DataLoader
from pipeline.data.packing import pack
from pipeline.data.shards import ShardFormatError

try:  # pytest's default "prepend" import mode puts tests/ itself on sys.path
    from test_shards import ref_read
except ImportError:
    from tests.test_shards import ref_read

torch.set_num_threads(1)

BOS = 65535


class IntTokenizer:
    """A document is space-separated integers; its ids are those integers."""

    vocab_size = 65536
    bos_id = BOS
    hash = hashlib.sha256(b"int-tokenizer-v1").hexdigest()

    def encode_batch(self, texts):
        return [[int(x) for x in t.split()] for t in texts]


def int_docs(n_docs=300, seed=0):
    """Documents of 1..120 tokens whose ids are distinct across the corpus (< 65535)."""
    rng = np.random.default_rng(seed)
    docs, base = [], 0
    for _ in range(n_docs):
        n = int(rng.integers(1, 120))
        docs.append(" ".join(map(str, range(base, base + n))))
        base += n
    assert base < BOS
    return docs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    m = pack(int_docs(), IntTokenizer(), root, shard_tokens=3000, chunk_tokens=128,
             val_fraction=0.0)  # fmt: skip
    shards = [ref_read(e.path) for e in m.splits["train"]]
    return root, m, shards


def batches(loader, n=None):
    out = []
    for i, (x, y) in enumerate(loader):
        if n is not None and i >= n:
            break
        out.append((x.clone(), y.clone()))
    return out


def rows_of(bs):
    return [tuple(r) for x, y in bs for r in torch.cat([x, y[:, -1:]], 1).tolist()]


# --- zero copy ----------------------------------------------------------------------------------


def test_batches_are_views_of_the_buffer_rust_wrote(data):
    root, _, _ = data
    loader = DataLoader(root, "train", 4, 32, seed=3, prefetch=2)
    ring = [(b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()) for b in loader._buffers]
    seen = []
    for i, (x, y) in enumerate(loader):
        if i == 9:
            break
        slot = [k for k, (lo, hi) in enumerate(ring) if lo <= x.data_ptr() < hi]
        assert len(slot) == 1
        base = ring[slot[0]][0]
        assert x.data_ptr() == base and y.data_ptr() == base + x.element_size()  # row starts
        assert x.stride() == (33, 1) and x.untyped_storage().data_ptr() == base
        assert x.dtype == torch.uint16 and x.shape == (4, 32)
        seen.append((slot[0], id(x), id(y)))
    # prefetch + 1 slots used round-robin, and the very same tensor objects each time round
    assert sorted({s for s, _, _ in seen}) == [0, 1, 2]
    by_slot = {}
    for s, ix, iy in seen:
        assert by_slot.setdefault(s, (ix, iy)) == (ix, iy)


def test_contiguous_val_loader_visits_every_window_once_in_order(data):
    root, _, shards = data
    T = 50
    loader = DataLoader(root, "train", 8, T, mode="contiguous", shuffle=False, epochs=1)
    got = rows_of(batches(loader))
    want = []
    for s in shards:
        t = s["tokens"]
        want += [tuple(int(v) for v in t[w * T : w * T + T + 1]) for w in range((len(t) - 1) // T)]
    assert got == want
    # and a second pass of the same loader has nothing left
    assert list(loader) == []


def test_last_batch_is_short_and_targets_shift_inputs(data):
    root, _, shards = data
    loader = DataLoader(root, "train", 7, 64, mode="contiguous", shuffle=False, epochs=1)
    bs = batches(loader)
    n_windows = sum((len(s["tokens"]) - 1) // 64 for s in shards)
    assert [len(x) for x, _ in bs] == [7] * (n_windows // 7) + (
        [n_windows % 7] if n_windows % 7 else []
    )
    for x, y in bs:
        assert torch.equal(x[:, 1:], y[:, :-1])


# --- best fit -----------------------------------------------------------------------------------


def doc_table(shards):
    """First id of each document -> its tokens as the loader sees it: from its BOS to the next
    BOS or to the end of its shard (a document continued in the next shard is cut there)."""
    table = {}
    for s in shards:
        t = s["tokens"].astype(np.int64)
        ends = [*s["starts"][1:].tolist(), len(t)]
        for a, b in zip(s["starts"].tolist(), ends, strict=True):
            table[int(t[a + 1])] = t[a:b].tolist()
    return table


def test_bestfit_rows_start_with_bos_and_are_document_prefixes(data):
    root, _, shards = data
    docs = doc_table(shards)
    loader = DataLoader(root, "train", 4, 96, mode="bestfit", seed=1, epochs=1, bestfit_buffer=16)
    rows = rows_of(batches(loader))
    assert rows and all(r[0] == BOS for r in rows)
    used = []
    for r in rows:
        r = list(r)
        cuts = [i for i, v in enumerate(r) if v == BOS] + [len(r)]
        segs = [r[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        for k, seg in enumerate(segs):
            if len(seg) == 1:  # the last document cropped to its BOS alone
                assert k == len(segs) - 1
                continue
            full = docs[seg[1]]
            # whole documents, except the last one of a row, which may be cropped
            assert seg == full if k < len(segs) - 1 else seg == full[: len(seg)]
            used.append(seg[1])
    assert len(used) == len(set(used))  # one epoch: no document twice


def test_determinism_by_seed(data):
    root, _, _ = data
    for mode in ("bestfit", "contiguous"):
        a = batches(DataLoader(root, "train", 4, 40, mode=mode, seed=11), 12)
        b = batches(DataLoader(root, "train", 4, 40, mode=mode, seed=11), 12)
        c = batches(DataLoader(root, "train", 4, 40, mode=mode, seed=12), 12)
        assert rows_of(a) == rows_of(b) and rows_of(a) != rows_of(c)


def test_epochs_reshuffle_and_cover(data):
    root, _, _ = data
    loader = DataLoader(root, "train", 5, 40, mode="contiguous", seed=2, epochs=2)
    rows = rows_of(batches(loader))
    assert len(rows) % 2 == 0
    e1, e2 = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    assert sorted(e1) == sorted(e2) and e1 != e2 and len(set(e1)) == len(e1)


# --- ranks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["contiguous", "bestfit"])
def test_rank_sharding_disjoint_and_covering(data, mode):
    root, _, shards = data
    world, T = 3, 48

    def items(rank, world_size):
        """Windows (whole rows) or documents (id after each BOS) a rank sees in one epoch."""
        loader = DataLoader(root, "train", 4, T, mode=mode, seed=5, epochs=1, rank=rank,
                            world_size=world_size, bestfit_buffer=8)  # fmt: skip
        rows = rows_of(batches(loader))
        if mode == "contiguous":
            return rows
        return [v for r in rows for i, v in enumerate(r[1:], 1) if r[i - 1] == BOS]

    per_rank = [items(r, world) for r in range(world)]
    sets = [set(x) for x in per_rank]
    for i in range(world):
        assert sets[i] and len(sets[i]) == len(per_rank[i])
        for j in range(i + 1, world):
            assert not sets[i] & sets[j]
    union = set().union(*sets)
    if mode == "contiguous":
        everything = set(items(0, 1))
        assert union <= everything
        assert len({len(x) for x in per_rank}) == 1  # equal shares for DDP lockstep
        assert len(everything - union) < world  # only the last n mod world windows skipped
    else:
        docs = set(doc_table(shards))
        assert union <= docs
        # each rank drops at most its last partial row (< T+1 documents)
        assert len(docs - union) <= world * (T + 1) and len(union) > len(docs) // 2


# --- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bestfit", "contiguous"])
def test_resume_is_exact_across_a_prefetch_boundary(data, mode):
    root, _, _ = data
    kw = dict(mode=mode, seed=7, prefetch=3, bestfit_buffer=32)
    ref = batches(DataLoader(root, "train", 3, 40, **kw), 30)

    loader = DataLoader(root, "train", 3, 40, **kw)
    it = iter(loader)
    first = [next(it) for _ in range(11)]  # the Rust thread has run ahead by now
    for (x, y), (rx, ry) in zip(first[-3:], ref[8:11], strict=True):  # still valid: prefetch=3
        assert torch.equal(x, rx) and torch.equal(y, ry)
    state = loader.state_dict()
    assert state["batches"] == 11
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    resumed = DataLoader(root, "train", 3, 40, **kw)
    resumed.load_state_dict(state)
    rest = batches(resumed, 19)
    assert rows_of(rest) == rows_of(ref[11:])
    # the original keeps going identically too
    tail = [tuple(t.clone() for t in next(it)) for _ in range(19)]
    assert rows_of(tail) == rows_of(ref[11:])


def test_state_from_another_config_is_rejected(data):
    root, _, _ = data
    state = DataLoader(root, "train", 3, 40, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 but this loader has 2"):
        DataLoader(root, "train", 3, 40, seed=2).load_state_dict(state)


# --- errors -------------------------------------------------------------------------------------


def test_corrupt_chunk_is_caught_before_its_tokens_are_yielded(tmp_path):
    m = pack(int_docs(40), IntTokenizer(), tmp_path, shard_tokens=100_000, chunk_tokens=64,
             val_fraction=0.0)  # fmt: skip
    path = m.splits["train"][0].path
    ref = ref_read(path)
    good = path.read_bytes()
    n_doc = len(ref["starts"])
    off, _, _, _ = struct.unpack_from("<QQII", good, 128 + 8 * n_doc + 24 * 5)
    bad = bytearray(good)
    bad[off + 3] ^= 0xFF
    path.write_bytes(bytes(bad))
    loader = DataLoader(tmp_path, "train", 1, 32, mode="contiguous", shuffle=False, epochs=1)
    got = []
    with pytest.raises(ShardFormatError, match=rf"{path.name}: checksum mismatch in chunk 5 "):
        for x, y in loader:
            got.append(torch.cat([x, y[:, -1:]], 1)[0].tolist())
    t = ref["tokens"]
    assert got == [t[w * 32 : w * 32 + 33].tolist() for w in range(len(got))]
    assert (len(got) + 1) * 32 >= 5 * 64  # stopped at the first window touching chunk 5


def test_bad_arguments(data):
    root, _, _ = data
    with pytest.raises(ValueError, match="rank=3"):
        DataLoader(root, "train", 2, 8, rank=3, world_size=2)
    with pytest.raises(ValueError, match="mode="):
        DataLoader(root, "train", 2, 8, mode="random")
    with pytest.raises(ValueError, match="split 'val' has no shards"):
        DataLoader(root, "val", 2, 8)
    with pytest.raises(ValueError, match="fewer than world_size"):
        next(iter(DataLoader(root, "train", 2, 100_000, mode="contiguous")))


def test_u32_shards_give_int32_batches(tmp_path):
    class Wide(IntTokenizer):
        vocab_size = 100_000
        bos_id = 99_999
        hash = hashlib.sha256(b"wide").hexdigest()

    pack(["70000 70001 70002 5"] * 30, Wide(), tmp_path, val_fraction=0.0)
    x, y = next(iter(DataLoader(tmp_path, "train", 2, 10, mode="bestfit")))
    assert x.dtype == torch.int32
    assert x[0, :5].tolist() == [99_999, 70000, 70001, 70002, 5]


def test_forever_loops_over_epochs(data):
    root, _, shards = data
    n_windows = sum((len(s["tokens"]) - 1) // 40 for s in shards)
    loader = DataLoader(root, "train", 5, 40, mode="contiguous", seed=4)  # epochs=None
    rows = rows_of(batches(loader, (3 * n_windows) // 5 + 1))
    e0, e1, e2 = (rows[i * n_windows : (i + 1) * n_windows] for i in range(3))
    assert sorted(e0) == sorted(e1) == sorted(e2) and len(set(e0)) == n_windows
    assert e0 != e1 != e2
    assert loader.state_dict()["epoch"] == 3


def test_zstd_shards_load_like_raw(tmp_path):
    docs = int_docs(80, seed=3)
    for comp in ("none", "zstd"):
        pack(docs, IntTokenizer(), tmp_path / comp, shard_tokens=1500, chunk_tokens=64,
             compression=comp, val_fraction=0.0)  # fmt: skip
    got = {
        comp: rows_of(batches(DataLoader(tmp_path / comp, "train", 4, 30, seed=9, epochs=1)))
        for comp in ("none", "zstd")
    }
    assert got["none"] == got["zstd"] and len(got["none"]) > 10
