"""Build `.gpu_data/` (the quality experiment's shards) from ../shared/data/text/gutenberg.

    python bench/make_gpu_data.py [--out .gpu_data] [--shared ../shared/data]

Writes, deterministically (same books, same seed -> same bytes):
  tokenizer.json   the BPE (vocab 8192) trained on the first 352 KB of 19 books drawn with
                   seed 0 (about 6.7 MB in all)
  tokens/          every book packed with `pack_files`: zstd, val_fraction 0.03, seed 0
  token_bytes.npy  UTF-8 byte length of each token id (0 for special tokens), for BPB

The GPU script (`bench/gpu.sh`, `pipeline.benchmarks.gpu`) reads it; carry it to the device
(`.gpu_data` is ignored by git: add it to `.git/info/exclude`). Run 2 of docs/RESULTS.md used
a folder of the same recipe made by hand before this script existed (its tokenizer sample was
drawn differently), so its tokenizer hash differs from this script's.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.packing import pack_files  # noqa: E402
from pipeline.data.tokenizer import Tokenizer  # noqa: E402

VOCAB = 8192
SAMPLE_BOOKS = 19
SAMPLE_BYTES_PER_BOOK = 352 * 1024


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / ".gpu_data")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    a = p.parse_args(argv)
    books = sorted((a.shared / "text" / "gutenberg").glob("*.txt"))
    if not books:
        sys.exit(f"no Gutenberg books under {a.shared / 'text' / 'gutenberg'}; pass --shared")
    t0 = time.perf_counter()
    sample = []
    for path in random.Random(0).sample(books, min(SAMPLE_BOOKS, len(books))):
        raw = path.read_bytes()[:SAMPLE_BYTES_PER_BOOK]
        sample.append(raw.decode("utf-8", errors="replace"))
    tok = Tokenizer.train(sample, VOCAB)
    tmp = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok.save(tmp / "tokenizer.json")
    manifest = pack_files(books, tok, tmp / "tokens", compression="zstd", val_fraction=0.03, seed=0)
    np.save(tmp / "token_bytes.npy", tok.token_byte_lengths())
    shutil.rmtree(a.out, ignore_errors=True)
    tmp.rename(a.out)  # the whole folder appears at once
    print(
        f"{a.out}: {len(books)} books, {manifest.total_tokens:,} tokens, tokenizer "
        f"{tok.hash[:12]}, {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
