"""The study's corpus: a small BPE trained by the pipeline's Rust tokenizer, and packed shards.

Books are whole documents, so the validation split is a set of whole books (no book is in both
splits; duplicate editions, same title in `MANIFEST.tsv`, are kept once). Files are drawn in a
seeded order until the byte budgets are filled. The prepared folder is reused when its
recipe (files, vocab, budgets) is unchanged.

    >>> prep = prepare_data("../shared/data/text/gutenberg", "reports/study/x/data",
    ...                     vocab_size=2048, train_bytes=6_000_000, val_bytes=500_000)  # doctest: +SKIP
    >>> prep.tokenizer.vocab_size  # doctest: +SKIP
    2048
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_text
from pipeline.data.packing import pack_files
from pipeline.data.tokenizer import Tokenizer

DEFAULT_DATA = Path("../shared/data/text/gutenberg")
"""Gutenberg books beside the checkout (see ../shared/data/README.md)."""


@dataclass
class PreparedData:
    """Shards (`dir/manifest.json`), the tokenizer and what went into them."""

    dir: Path
    tokenizer: Tokenizer
    recipe: dict[str, Any]


def _titles(folder: Path) -> dict[str, str]:
    manifest = folder / "MANIFEST.tsv"
    if not manifest.is_file():
        return {}
    with manifest.open(encoding="utf-8", newline="") as f:
        return {
            row["file"]: row.get("title", row["file"]) for row in csv.DictReader(f, delimiter="\t")
        }


def text_files(folder: str | Path) -> list[Path]:
    """The .txt files of `folder`, one per title, sorted by name.

    Raises:
        FileNotFoundError: no such folder or no .txt in it (with the fix).
    """
    root = Path(folder)
    files = sorted(p for p in root.glob("*.txt") if p.is_file()) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"study data {root}: no .txt files there; point --data at a folder of plain-text "
            "documents (e.g. ../shared/data/text/gutenberg)"
        )
    titles, seen, out = _titles(root), set(), []
    for p in files:
        title = titles.get(p.name, p.name)
        if title not in seen:
            seen.add(title)
            out.append(p)
    return out


def select_files(
    files: list[Path], train_bytes: int, val_bytes: int, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """(train, val) whole files in a seeded order: val first until `val_bytes`, then train.

    Raises:
        ValueError: fewer than two files (val and train need one each).
    """
    if len(files) < 2:
        raise ValueError(f"study data: {len(files)} file(s); need at least 2 (train and val)")
    order = list(files)
    random.Random(seed).shuffle(order)
    val, train, got = [], [], 0
    for p in order:
        if got < val_bytes or not val:
            val.append(p)
            got += p.stat().st_size
            continue
        if sum(q.stat().st_size for q in train) >= train_bytes:
            break
        train.append(p)
    if not train:
        train.append(val.pop())
    return train, val


def prepare_data(
    text_dir: str | Path,
    out_dir: str | Path,
    *,
    vocab_size: int,
    train_bytes: int,
    val_bytes: int,
    seed: int = 0,
) -> PreparedData:
    """Train the tokenizer on the train files and pack both splits into `out_dir` (cached)."""
    out = Path(out_dir)
    train, val = select_files(text_files(text_dir), train_bytes, val_bytes, seed)
    recipe = {
        "text_dir": str(Path(text_dir).resolve()),
        "train_files": [p.name for p in train],
        "val_files": [p.name for p in val],
        "vocab_size": int(vocab_size),
        "sizes": [p.stat().st_size for p in train + val],
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    recipe_path = out / "recipe.json"
    tok_path = out / "tokenizer.bpe"
    if recipe_path.is_file() and tok_path.is_file() and (out / "manifest.json").is_file():
        old = json.loads(recipe_path.read_text(encoding="utf-8"))
        if old.get("key") == key:
            return PreparedData(out, Tokenizer.load(tok_path), old)
    out.mkdir(parents=True, exist_ok=True)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in train]
    tok = Tokenizer.train(texts, vocab_size)
    tok.save(tok_path)
    manifest = pack_files(train + val, tok, out, val_paths=val, val_fraction=0.0, seed=seed)
    recipe.update(
        key=key,
        train_tokens=manifest.split_tokens("train"),
        val_tokens=manifest.split_tokens("val"),
        tokenizer_vocab=tok.vocab_size,
    )
    atomic_write_text(recipe_path, json.dumps(recipe, indent=1))
    return PreparedData(out, tok, recipe)
