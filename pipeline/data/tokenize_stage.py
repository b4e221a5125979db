"""The `tokenize` stage's work: train (or load) the BPE on the raw documents, pack them into
shards in `tokenizer.out_dir`, and write `stats.json`, in one run or across machines.

    tokenize_single_run(settings)     # lrt-pipeline tokenize
    save_tokenizer(settings)          # lrt-pipeline tokenize --tokenizer-only
    tokenize_part(settings, part)     # lrt-pipeline tokenize --part i/n
    tokenize_merge(settings)          # lrt-pipeline tokenize --merge

Each returns the stats it wrote. The output folder is staged and swapped in after success
(`pipeline.atomic.output_dir`); files in it that are not ours are kept. `pipeline.steps.tokenize`
holds the folder's lock around these and records the stage in MLflow.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_json
from pipeline.config.settings import Settings
from pipeline.data import sources
from pipeline.data.parts import PART_FILE, PartSpec

__all__ = [
    "STATS_FILE",
    "tokenize_merge",
    "tokenize_part",
    "tokenize_single_run",
    "save_tokenizer",
]

STATS_FILE = "stats.json"

# What `tokenize` writes in its folder (temps included). Everything else there is the user's
# (a pretrained `tokenizer_gpt.bpe`, notes) and is carried across every re-run untouched.
_TOKENS_OURS = re.compile(
    r"^((train|val)_\d+\.bin|manifest\.json|stats\.json|tokenizer\.bpe|part\d+of\d+_.*)"
    r"(\.tmp.*)?$|^\.(tokenizer\.bpe|manifest\.json|stats\.json)\.tmp.*$"  # atomic writes' temps
)


def _tokens_ours(name: str) -> bool:
    return _TOKENS_OURS.match(name) is not None


def _tokens_output(settings: Settings, keep: Any = lambda name: False) -> Any:
    """The locked, staged tokens folder (`pipeline.atomic.output_dir`)."""
    from pipeline.atomic import output_dir

    return output_dir(settings.tokenizer.out_dir, owned=_tokens_ours, keep=keep)


# Stats of the tokenizer itself (not of the packed data): kept from `--tokenizer-only` to merge.
_TOKENIZER_STATS = (
    "vocab_size",
    "tokenizer_hash",
    "pretrained",
    "train_sample_bytes",
    "train_sample_documents",
    "bytes_per_token",
    "tokenizer_train_s",
)


def _take_bytes(docs: Iterable[str], max_bytes: int) -> list[str]:
    """The first documents up to `max_bytes` UTF-8 bytes (the last one cut to fit)."""
    out: list[str] = []
    total = 0
    for doc in docs:
        data = doc.encode("utf-8")
        if total + len(data) > max_bytes:
            rest = data[: max_bytes - total].decode("utf-8", errors="ignore")
            if rest:
                out.append(rest)
            break
        out.append(doc)
        total += len(data)
    return out


def _train_tokenizer(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The tokenizer (trained on the first training documents, or `tokenizer.pretrained`) and
    its stats (`_TOKENIZER_STATS`)."""
    from pipeline.data.tokenizer import Tokenizer

    tok = settings.tokenizer
    raw_dir = Path(settings.data.raw_dir)
    # Train the tokenizer on the training documents only (a source's own val split excluded).
    sample = _take_bytes(sources.iter_documents(raw_dir, "train"), tok.train_max_bytes)
    start = time.perf_counter()
    if tok.pretrained:
        tokenizer = Tokenizer.load(tok.pretrained)
    else:
        tokenizer = Tokenizer.train(sample, tok.vocab_size)
    train_s = time.perf_counter() - start
    sample_bytes = sum(len(d.encode("utf-8")) for d in sample)
    sample_tokens = sum(len(ids) for ids in tokenizer.encode_batch(sample)) if sample else 0
    stats = {
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_hash": tokenizer.hash,
        "pretrained": bool(tok.pretrained),
        "train_sample_bytes": sample_bytes,
        "train_sample_documents": len(sample),
        "bytes_per_token": sample_bytes / sample_tokens if sample_tokens else None,
        "tokenizer_train_s": train_s,
    }
    return tokenizer, stats


def save_tokenizer(settings: Settings) -> dict[str, Any]:
    """`tokenize --tokenizer-only`: train (or load) and save `tokenizer.bpe`, nothing else.

    When the folder already holds the same tokenizer (same hash) everything in it is kept, so
    parts packed with it stay valid; a different tokenizer makes every shard, manifest and
    part file in the folder stale, and they are removed."""
    sources.read_raw_manifest(settings.data.raw_dir)  # "run download" first
    from pipeline.data.tokenizer import TOKENIZER_FILE, Tokenizer

    out = Path(settings.tokenizer.out_dir)
    tokenizer, stats = _train_tokenizer(settings)
    path = out / TOKENIZER_FILE
    same = path.is_file() and Tokenizer.load(path).hash == tokenizer.hash
    # The same tokenizer keeps everything (parts packed with it stay valid); another one
    # makes every shard, manifest and part stale: the new folder holds only it and user files.
    with _tokens_output(settings, keep=lambda name: same and name != STATS_FILE) as staging:
        tokenizer.save(staging / TOKENIZER_FILE)
        atomic_write_json(staging / STATS_FILE, stats)
    return stats


def _part_tokenizer(settings: Settings) -> Any:
    """The output folder's `tokenizer.bpe`, which every part and the merge must use."""
    from pipeline.data.tokenizer import TOKENIZER_FILE, Tokenizer

    out = Path(settings.tokenizer.out_dir)
    path = out / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            "no tokenizer here; a part never trains its own (all parts must share one): run "
            "`lrt-pipeline tokenize --tokenizer-only` once and copy "
            f"{out / TOKENIZER_FILE} to every machine before `--part` / `--merge`",
            str(path),
        )
    tokenizer = Tokenizer.load(path)
    pretrained = settings.tokenizer.pretrained
    if pretrained and Tokenizer.load(pretrained).hash != tokenizer.hash:
        raise ValueError(
            f"tokenizer.pretrained {pretrained} is not the tokenizer in {path} (hashes differ); "
            "re-run `lrt-pipeline tokenize --tokenizer-only` to copy it there"
        )
    return tokenizer


def _raw_inputs_id(raw: dict[str, Any]) -> str:
    """Identifies the raw data every part must read: its files' names, hashes, counts, splits."""
    files = [[e["name"], e.get("sha256"), e["documents"], e.get("split")] for e in raw["files"]]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def tokenize_part(settings: Settings, part: PartSpec) -> dict[str, Any]:
    """`tokenize --part i/n`: pack documents `(i-1)*N//n .. i*N//n - 1` with the folder's
    tokenizer into `partIIIIofNNNN_*` files."""
    raw_dir = Path(settings.data.raw_dir)
    raw = sources.read_raw_manifest(raw_dir)
    from pipeline.data.shards import MANIFEST_NAME

    tokenizer = _part_tokenizer(settings)

    def keep(name: str) -> bool:
        # The merged manifest is stale once a part changes; parts of another split (n) are
        # stale, and this part's old files are replaced.
        m = PART_FILE.match(name)
        if m:
            return int(m.group(2)) == part.count and int(m.group(1)) != part.index
        return name != MANIFEST_NAME

    start = time.perf_counter()
    with _tokens_output(settings, keep=keep) as staging:
        manifest = _pack_raw(
            settings,
            tokenizer,
            staging,
            part=part,
            file_documents=[int(e["documents"]) for e in raw["files"]],
            inputs_id=_raw_inputs_id(raw),
        )
    return {
        "part": str(part),
        "manifest": part.manifest_name,
        **_data_stats(manifest),
        "pack_s": time.perf_counter() - start,
    }


def _pack_raw(settings: Settings, tokenizer: Any, out: Path, **part_args: Any) -> Any:
    """`pack_files` over the raw corpus into `out` with the tokenizer settings
    (`part_args`: a part's `part`, `file_documents`, `inputs_id`). A source's own validation
    files (fineweb-edu's last shard) go to val whole; the rest are split by val_fraction."""
    from pipeline.data.packing import pack_files

    tok, raw_dir = settings.tokenizer, Path(settings.data.raw_dir)
    return pack_files(
        sources.raw_files(raw_dir),
        tokenizer,
        out,
        shard_tokens=tok.shard_tokens,
        compression=tok.compression,
        val_fraction=tok.val_fraction,
        seed=tok.seed,
        val_paths=sources.raw_files(raw_dir, "val"),
        **part_args,
    )


def _data_stats(manifest: Any) -> dict[str, Any]:
    from pipeline.data.shards import shard_set_hash

    listed = {
        "tokenizer_hash": manifest.tokenizer_hash,
        "splits": {
            split: [{"file": e.file, "sha256": e.sha256} for e in entries]
            for split, entries in manifest.splits.items()
        },
    }
    return {
        "shards_hash": shard_set_hash(listed),  # what models trained on these shards record
        "documents": manifest.documents,
        "tokens": manifest.total_tokens,
        "train_tokens": manifest.split_tokens("train"),
        "val_tokens": manifest.split_tokens("val"),
        "train_documents": manifest.split_documents("train"),
        "val_documents": manifest.split_documents("val"),
        "shards": {split: len(entries) for split, entries in manifest.splits.items()},
    }


def tokenize_merge(settings: Settings) -> dict[str, Any]:
    """`tokenize --merge`: check every part and write `manifest.json` and `stats.json`."""
    from pipeline.data.parts import merge_parts
    from pipeline.data.shards import MANIFEST_NAME

    out = Path(settings.tokenizer.out_dir)
    tokenizer = _part_tokenizer(settings)
    previous: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((out / STATS_FILE).read_text(encoding="utf-8"))
    if previous.get("tokenizer_hash") != tokenizer.hash:
        previous = {}  # stats of another tokenizer
    stats = {key: previous.get(key) for key in _TOKENIZER_STATS}
    stats.update(vocab_size=tokenizer.vocab_size, tokenizer_hash=tokenizer.hash)
    raw = sources.read_raw_manifest(settings.data.raw_dir) if _has_raw(settings) else {}
    with _tokens_output(settings, keep=lambda n: n not in (MANIFEST_NAME, STATS_FILE)) as staging:
        manifest = merge_parts(staging, tokenizer_hash=tokenizer.hash)
        stats.update(
            _data_stats(manifest),
            parts=manifest.source.get("parts"),
            raw_text_bytes=raw.get("text_bytes") or None,
        )
        atomic_write_json(staging / STATS_FILE, stats)
    return stats


def _has_raw(settings: Settings) -> bool:
    return (Path(settings.data.raw_dir) / sources.MANIFEST).is_file()


def tokenize_single_run(settings: Settings) -> dict[str, Any]:
    raw_dir = Path(settings.data.raw_dir)
    raw = sources.read_raw_manifest(raw_dir)  # first: "run download" beats an import error

    from pipeline.data.tokenizer import TOKENIZER_FILE

    tokenizer, tok_stats = _train_tokenizer(settings)

    # A fresh folder: a previous configuration's shards (and parts) cannot linger, and the
    # previous pack stays whole until this one has succeeded.
    with _tokens_output(settings) as staging:
        tokenizer.save(staging / TOKENIZER_FILE)
        start = time.perf_counter()
        manifest = _pack_raw(settings, tokenizer, staging)
        pack_s = time.perf_counter() - start
        stats = {
            **{k: v for k, v in tok_stats.items() if k != "tokenizer_train_s"},
            **_data_stats(manifest),
            "raw_text_bytes": raw.get("text_bytes") or None,
            "tokenizer_train_s": tok_stats["tokenizer_train_s"],
            "pack_s": pack_s,
        }
        atomic_write_json(staging / STATS_FILE, stats)
    return stats
