"""Tokenizer benchmark: training time vs rustbpe and HF tokenizers, encode speed vs tiktoken.

Corpus (about 34 MB): the running interpreter's standard-library ``.py`` files (site-packages
excluded) plus the top-level ``../shared/data/text/*.txt`` files. Every tokenizer trains the
same number of merges with the same split pattern; tiktoken encodes with our exact ranks (ids
are checked to be identical before timing counts).

Run: ``python -m pipeline.benchmarks.tokenizer [out.json]`` (build the extension in release
first: ``pip install -e . --no-deps --no-build-isolation``).
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.tokenizer import GPT4_SPLIT_PATTERN, Tokenizer

SHARED_TEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text"


def build_corpus(shared_text: Path = SHARED_TEXT) -> list[str]:
    """Standard-library .py files plus the shared top-level .txt files, one document each."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    if shared_text.is_dir():
        paths += sorted(shared_text.glob("*.txt"))
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


# Process CPU seconds of every timed call, keyed by the label passed to `_timed`. On a shared
# machine wall time depends on the neighbours; CPU time of a one-thread run does not.
CPU_S: dict[str, float] = {}


def _timed(fn: Callable[[], Any], repeat: int = 1, label: str = "") -> tuple[float, Any]:
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    if label:
        CPU_S[label] = best_cpu
    return best, out


def _train_rustbpe(docs: Sequence[str], vocab_size: int) -> float | None:
    try:
        import rustbpe
    except ImportError:
        return None
    tok = rustbpe.Tokenizer()
    seconds, _ = _timed(
        lambda: tok.train_from_iterator(iter(docs), vocab_size, pattern=GPT4_SPLIT_PATTERN),
        label="train_rustbpe",
    )
    return seconds


def _train_hf(docs: Sequence[str], vocab_size: int) -> float | None:
    try:
        from tokenizers import Regex, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        return None
    tok = HFTokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=0,
    )
    seconds, _ = _timed(
        lambda: tok.train_from_iterator(docs, trainer=trainer), label="train_hf_tokenizers"
    )
    return seconds


def run(
    vocab_size: int = 32768, threads: int | None = None, corpus: Sequence[str] | None = None
) -> dict[str, Any]:
    """Time training and encoding; print a table and return the numbers (JSON-able).

    Args:
        vocab_size: Vocabulary size to train (no special tokens, so every library learns
            ``vocab_size - 256`` merges).
        threads: Threads for the multi-threaded encode; ``None`` = all cores.
        corpus: Documents; ``None`` builds the default corpus.

    Returns:
        ``{"corpus_mb", "train_s": {...}, "encode_mb_s": {...}, "ratios": {...}, ...}``.

    Example:
        >>> run(vocab_size=1024, corpus=["hello world"] * 1000)  # doctest: +SKIP
    """
    import tiktoken

    docs = list(corpus) if corpus is not None else build_corpus()
    n_threads = threads or os.cpu_count() or 1
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6

    train_s: dict[str, float | None] = {}
    train_s["lrt_bpe"], tok = _timed(
        lambda: Tokenizer.train(docs, vocab_size, special_tokens=()), label="train_lrt_bpe"
    )
    train_s["rustbpe"] = _train_rustbpe(docs, vocab_size)
    train_s["hf_tokenizers"] = _train_hf(docs, vocab_size)

    enc = tiktoken.Encoding(
        "bench", pat_str=tok.pattern, mergeable_ranks=dict(tok._inner.ranks()), special_tokens={}
    )
    ours_1 = tok.encode_batch(docs, num_threads=1)
    if ours_1 != enc.encode_ordinary_batch(docs, num_threads=n_threads):
        raise AssertionError("lrt_bpe and tiktoken ids differ on the benchmark corpus")
    n_tokens = sum(len(x) for x in ours_1)
    del ours_1

    n = n_threads
    encode_s = {
        "lrt_bpe_1": _timed(lambda: tok.encode_batch(docs, num_threads=1), 2, "lrt_bpe_1")[0],
        f"lrt_bpe_{n}": _timed(lambda: tok.encode_batch(docs, num_threads=n), 2, f"lrt_bpe_{n}")[0],
        "lrt_bpe_flat_1": _timed(
            lambda: tok.encode_batch_flat(docs, num_threads=1), 2, "lrt_bpe_flat_1"
        )[0],
        f"lrt_bpe_flat_{n}": _timed(
            lambda: tok.encode_batch_flat(docs, num_threads=n), 2, f"lrt_bpe_flat_{n}"
        )[0],
        "tiktoken_1": _timed(
            lambda: enc.encode_ordinary_batch(docs, num_threads=1), 2, "tiktoken_1"
        )[0],
        f"tiktoken_{n}": _timed(
            lambda: enc.encode_ordinary_batch(docs, num_threads=n), 2, f"tiktoken_{n}"
        )[0],
    }
    encode_mb_s = {k: mb / v for k, v in encode_s.items()}
    encode_mb_cpu_s = {k: mb / CPU_S[k] for k in encode_s if k.endswith("_1")}
    rustbpe_s = train_s["rustbpe"]
    ratios = {
        "train_vs_rustbpe": train_s["lrt_bpe"] / rustbpe_s if rustbpe_s else None,
        "train_cpu_vs_rustbpe": (
            CPU_S["train_lrt_bpe"] / CPU_S["train_rustbpe"] if rustbpe_s else None
        ),
        "encode_1t_vs_tiktoken": encode_mb_s["lrt_bpe_1"] / encode_mb_s["tiktoken_1"],
        "encode_1t_cpu_vs_tiktoken": encode_mb_cpu_s["lrt_bpe_1"] / encode_mb_cpu_s["tiktoken_1"],
        "encode_thread_speedup": encode_mb_s[f"lrt_bpe_{n}"] / encode_mb_s["lrt_bpe_1"],
        "encode_flat_thread_speedup": encode_mb_s[f"lrt_bpe_flat_{n}"]
        / encode_mb_s["lrt_bpe_flat_1"],
    }
    result = {
        "corpus_mb": mb,
        "documents": len(docs),
        "tokens": n_tokens,
        "bytes_per_token": mb * 1e6 / n_tokens,
        "vocab_size": vocab_size,
        "threads": n_threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "train_s": train_s,
        "train_cpu_s": {k[6:]: v for k, v in CPU_S.items() if k.startswith("train_")},
        "encode_mb_s": encode_mb_s,
        "encode_mb_per_cpu_s": encode_mb_cpu_s,
        "ratios": ratios,
    }
    _print_table(result)
    return result


def _print_table(r: dict[str, Any]) -> None:
    print(
        f"corpus {r['corpus_mb']:.1f} MB, {r['documents']} docs, vocab {r['vocab_size']}, "
        f"{r['bytes_per_token']:.2f} bytes/token, threads {r['threads']}, "
        f"load average {r['load_average_1min']:.1f} on {r['cpu_count']} CPUs"
    )
    print("| task | library | wall | CPU |")
    print("|---|---|---|---|")
    for name, s in r["train_s"].items():
        cpu = r["train_cpu_s"].get(name)
        wall = "n/a" if s is None else f"{s:.2f} s"
        print(f"| train | {name} | {wall} | {'n/a' if cpu is None else f'{cpu:.2f} s'} |")
    for name, v in r["encode_mb_s"].items():
        lib, n = name.rsplit("_", 1)
        cpu = r["encode_mb_per_cpu_s"].get(name)
        cpu_s = "" if cpu is None else f"{cpu:.1f} MB/CPU-s"
        print(f"| encode, {n} thread{'s' if n != '1' else ''} | {lib} | {v:.1f} MB/s | {cpu_s} |")
    for name, v in r["ratios"].items():
        print(f"| ratio | {name} | {'n/a' if v is None else f'{v:.2f}'} | |")


if __name__ == "__main__":
    out = run()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
