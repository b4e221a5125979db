"""Loader throughput: the Rust zero-copy `DataLoader` vs a plain numpy-memmap loader.

Packs synthetic tokens (random documents, fixed seed) into raw shards, then times batches of
(B, T+1) tokens landing in CPU memory (pinned when CUDA is available):

* `rust contiguous` / `rust bestfit`: `pipeline.data.loader.DataLoader`, tokens written by the Rust
  prefetch thread straight into the torch-owned ring buffer;
* `numpy memmap`: `np.memmap` of the same shards' token payload, B random windows sliced and
  stacked with numpy, handed over with `torch.from_numpy` (plus `.pin_memory()` with CUDA) —
  the nanoGPT-style loader most projects start from.

Every loader first runs one untimed warm-up pass (page cache and checksum verification), so the
table compares steady-state copies, which are bound by memory bandwidth.

    python -m pipeline.benchmarks.loader                       # defaults below, prints a table
    python -m pipeline.benchmarks.loader --tokens 50000000 --batch-size 64 --seq-len 2048 \
        --out loader.json
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import _rust
from pipeline.data.loader import DataLoader
from pipeline.data.shards import read_manifest

__all__ = ["pack_synthetic", "run"]


def pack_synthetic(
    out_dir: Path, tokens: int, vocab_size: int, shard_tokens: int, seed: int = 0
) -> None:
    """Random documents (lengths 50..4000) of random ids, packed with the Rust packer."""
    rng = np.random.default_rng(seed)
    packer = _rust.Packer(
        str(out_dir),
        vocab_size=vocab_size,
        bos_id=vocab_size - 1,
        tokenizer_hash=bytes(32),
        shard_tokens=shard_tokens,
        chunk_tokens=1 << 20,
        compression="none",
        val_fraction=0.0,
        seed=seed,
    )
    done = 0
    while done < tokens:
        lengths = rng.integers(50, 4000, size=1024).astype(np.uint64)
        flat = rng.integers(0, vocab_size - 1, size=int(lengths.sum()), dtype=np.uint32)
        packer.add_encoded(flat, lengths)
        done += int(lengths.sum()) + len(lengths)
    packer.finish(json.dumps({"kind": "synthetic", "seed": seed}))


def _time_rust(data_dir: Path, mode: str, batch_size: int, seq_len: int, batches: int,
               pin: bool) -> float:  # fmt: skip
    loader = DataLoader(data_dir, "train", batch_size, seq_len, mode=mode, seed=0, pin_memory=pin)
    it = iter(loader)
    for _ in range(batches):  # warm-up: page cache, chunk checksums
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    loader.close()
    return dt


def _time_memmap(data_dir: Path, batch_size: int, seq_len: int, batches: int, pin: bool) -> float:
    maps = []
    for e in read_manifest(data_dir).splits["train"]:
        payload = struct.unpack_from("<Q", e.path.read_bytes()[:128], 80)[0]
        maps.append(np.memmap(e.path, dtype=np.uint16, mode="r", offset=payload, shape=(e.tokens,)))
    rng = np.random.default_rng(0)

    def batch() -> torch.Tensor:
        mm = maps[int(rng.integers(len(maps)))]
        ix = rng.integers(0, len(mm) - seq_len - 1, size=batch_size)
        x = torch.from_numpy(np.stack([mm[i : i + seq_len + 1] for i in ix]))
        return x.pin_memory() if pin else x

    for _ in range(batches):
        batch()
    t0 = time.perf_counter()
    for _ in range(batches):
        batch()
    return time.perf_counter() - t0


def run(
    *,
    tokens: int = 20_000_000,
    vocab_size: int = 32768,
    shard_tokens: int = 1 << 22,
    batch_size: int = 32,
    seq_len: int = 2048,
    batches: int = 200,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Packs `tokens` synthetic tokens (unless `data_dir` already holds them), times each
    loader over `batches` batches after as many warm-up batches; prints and returns the table."""
    if vocab_size > 65536:
        raise ValueError("the memmap baseline reads uint16 shards: use vocab_size <= 65536")
    pin = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(data_dir) if data_dir is not None else Path(tmp)
        t0 = time.perf_counter()
        if not (root / "manifest.json").exists():
            pack_synthetic(root, tokens, vocab_size, shard_tokens)
        pack_s = time.perf_counter() - t0
        n_tokens = read_manifest(root).total_tokens
        per_batch = batch_size * seq_len
        rows = []
        for name, fn in (
            ("rust contiguous", lambda: _time_rust(root, "contiguous", batch_size, seq_len, batches, pin)),
            ("rust bestfit", lambda: _time_rust(root, "bestfit", batch_size, seq_len, batches, pin)),
            ("numpy memmap", lambda: _time_memmap(root, batch_size, seq_len, batches, pin)),
        ):  # fmt: skip
            dt = fn()
            rows.append({"loader": name, "tokens_per_s": batches * per_batch / dt,
                         "ms_per_batch": 1e3 * dt / batches})  # fmt: skip
    result = {
        "tokens_packed": n_tokens,
        "pack_s": pack_s,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "batches": batches,
        "pinned": pin,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    print(f"packed {n_tokens / 1e6:.1f}M tokens in {pack_s:.2f}s; B={batch_size} T={seq_len}, "
          f"{batches} timed batches, pinned={pin}")  # fmt: skip
    print(f"{'loader':<18}{'Mtok/s':>10}{'ms/batch':>10}")
    for r in rows:
        print(f"{r['loader']:<18}{r['tokens_per_s'] / 1e6:>10.1f}{r['ms_per_batch']:>10.3f}")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=20_000_000)
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    res = run(tokens=a.tokens, vocab_size=a.vocab_size, batch_size=a.batch_size,
              seq_len=a.seq_len, batches=a.batches, data_dir=a.data_dir)  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
