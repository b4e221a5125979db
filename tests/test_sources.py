"""Data sources (`pipeline.data.sources`, `.documents`, `.http`): builtin (offline), files, and
fineweb-edu against a local HTTP server.

The server runs on 127.0.0.1 in a thread and serves parquet files made here; it honours Range
requests and can be told to cut a transfer short or to corrupt one response. No other network.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import zstandard

from pipeline.config.settings import DataSettings
from pipeline.data.documents import file_documents
from pipeline.data.http import DownloadError, fetch
from pipeline.data.sources import (
    download,
    iter_documents,
    raw_files,
    read_raw_manifest,
)

# ---------------------------------------------------------------------------------------------
# A tiny Range-capable server
# ---------------------------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate_next: dict[str, int] = {}  # name -> bytes to send before closing (once)
        self.corrupt_next: set[str] = set()  # name -> serve garbage once
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)


@pytest.fixture
def server() -> Iterator[tuple[_Server, str]]:
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            state.requests.append((name, self.headers.get("Range")))
            if name not in state.files:
                self.send_error(404)
                return
            body = state.files[name]
            if name in state.corrupt_next:
                state.corrupt_next.discard(name)
                body = body[:-16] + b"\0" * 16  # same size, broken footer
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            cut = state.truncate_next.pop(name, None)
            if cut is not None:
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}/data"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _parquet_bytes(tmp_path: Path, name: str, texts: list[str]) -> bytes:
    path = tmp_path / f"src_{name}"
    pl.DataFrame({"text": texts, "score": [1.0] * len(texts)}).write_parquet(path)
    return path.read_bytes()


def _fineweb(tmp_path: Path, url: str, num_shards: int = 2) -> DataSettings:
    return DataSettings(
        source="fineweb-edu",
        base_url=url,
        num_shards=num_shards,
        val_shard=num_shards,  # the shard after the training ones (the default is 1822)
        workers=1,  # one shard at a time, so request logs are in shard order
        raw_dir=str(tmp_path / "raw"),
        retries=2,
        timeout_s=5,
    )


# ---------------------------------------------------------------------------------------------
# fineweb-edu
# ---------------------------------------------------------------------------------------------


def test_fineweb_downloads_shards_and_marks_last_as_val(tmp_path: Path, server) -> None:
    state, url = server
    for i in range(3):
        state.files[f"shard_{i:05d}.parquet"] = _parquet_bytes(
            tmp_path, f"{i}", [f"doc {i} {j}" for j in range(5 + i)]
        )
    manifest = download(_fineweb(tmp_path, url), backoff_s=0.01)
    assert [f["name"] for f in manifest["files"]] == [f"shard_{i:05d}.parquet" for i in range(3)]
    assert [f["split"] for f in manifest["files"]] == ["train", "train", "val"]
    assert [f["documents"] for f in manifest["files"]] == [5, 6, 7]
    raw = tmp_path / "raw"
    assert read_raw_manifest(raw) == manifest
    assert [p.name for p in raw_files(raw, "val")] == ["shard_00002.parquet"]
    assert list(iter_documents(raw, "val"))[0] == "doc 2 0"
    assert not list(raw.glob("*.part"))

    # A second run finds valid files and fetches nothing.
    state.requests.clear()
    assert download(_fineweb(tmp_path, url), backoff_s=0.01)["files"] == manifest["files"]
    assert state.requests == []


def test_interrupted_transfer_resumes_with_range(tmp_path: Path, server) -> None:
    state, url = server
    body = _parquet_bytes(tmp_path, "big", ["x" * 1000 + str(i) for i in range(200)])
    state.files["f.parquet"] = body
    state.truncate_next["f.parquet"] = len(body) // 3
    dest = fetch(f"{url}/f.parquet", tmp_path / "f.parquet", retries=2, timeout_s=5, backoff_s=0.01)
    assert dest.read_bytes() == body
    assert state.requests == [("f.parquet", None), ("f.parquet", f"bytes={len(body) // 3}-")]


def test_leftover_part_file_is_resumed(tmp_path: Path, server) -> None:
    state, url = server
    body = _parquet_bytes(tmp_path, "p", ["hello"] * 100)
    state.files["f.parquet"] = body
    (tmp_path / "f.parquet.part").write_bytes(body[:100])
    fetch(f"{url}/f.parquet", tmp_path / "f.parquet", retries=0, backoff_s=0.01)
    assert (tmp_path / "f.parquet").read_bytes() == body
    assert state.requests == [("f.parquet", "bytes=100-")]


def test_oversized_part_file_restarts(tmp_path: Path, server) -> None:
    state, url = server
    state.files["f.parquet"] = b"0123456789"
    (tmp_path / "f.parquet.part").write_bytes(b"x" * 50)
    fetch(f"{url}/f.parquet", tmp_path / "f.parquet", retries=1, backoff_s=0.01)
    assert (tmp_path / "f.parquet").read_bytes() == b"0123456789"


def test_corrupt_shard_is_detected_and_fetched_again(tmp_path: Path, server) -> None:
    state, url = server
    for i in range(2):
        state.files[f"shard_{i:05d}.parquet"] = _parquet_bytes(tmp_path, f"{i}", [f"d{i}"] * 3)
    state.corrupt_next.add("shard_00000.parquet")
    manifest = download(_fineweb(tmp_path, url, num_shards=1), backoff_s=0.01)
    assert [r[0] for r in state.requests].count("shard_00000.parquet") == 2
    assert manifest["files"][0]["documents"] == 3
    # A corrupt file left on disk (e.g. by a crash) is also refetched on the next run.
    (tmp_path / "raw" / "shard_00001.parquet").write_bytes(b"garbage")
    download(_fineweb(tmp_path, url, num_shards=1), backoff_s=0.01)
    assert list(iter_documents(tmp_path / "raw", "val")) == ["d1"] * 3


def test_missing_shard_fails_without_retrying(tmp_path: Path, server) -> None:
    state, url = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(_fineweb(tmp_path, url, num_shards=1), backoff_s=0.01)
    assert len(state.requests) == 1


def test_unreachable_server_gives_up_after_retries(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="after 2 attempts"):
        fetch(
            "http://127.0.0.1:9/none.parquet",
            tmp_path / "x",
            retries=1,
            timeout_s=1,
            backoff_s=0.01,
        )


# ---------------------------------------------------------------------------------------------
# builtin and files
# ---------------------------------------------------------------------------------------------


def test_builtin_is_deterministic_and_capped(tmp_path: Path) -> None:
    settings = DataSettings(source="builtin", max_bytes=300_000, raw_dir=str(tmp_path / "a"))
    first = download(settings)
    second = download(settings.model_copy(update={"raw_dir": str(tmp_path / "b")}))
    assert first["files"][0]["sha256"] == second["files"][0]["sha256"]
    docs = list(iter_documents(tmp_path / "a"))
    assert len(docs) == first["documents"] > 5
    assert 0 < sum(len(d.encode()) for d in docs) <= 300_000
    assert first["text_bytes"] == sum(len(d.encode()) for d in docs)


def test_files_source_reads_every_format(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("plain text doc")
    (src / "b.jsonl").write_text(
        json.dumps({"text": "json doc"}) + "\n\n" + json.dumps("bare string") + "\n"
    )
    (src / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "zst doc"}\n'))
    pl.DataFrame({"text": ["pq 1", "pq 2"]}).write_parquet(src / "d.parquet")
    (src / "ignored.bin").write_bytes(b"\0")
    settings = DataSettings(
        source="files", paths=[str(src)], raw_dir=str(tmp_path / "raw"), max_bytes=None
    )
    manifest = download(settings)
    assert manifest["documents"] == 6
    assert list(iter_documents(tmp_path / "raw")) == [
        "plain text doc",
        "json doc",
        "bare string",
        "zst doc",
        "pq 1",
        "pq 2",
    ]


def test_files_source_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        download(DataSettings(source="files", paths=[str(bad)], raw_dir=str(tmp_path / "raw")))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        download(
            DataSettings(
                source="files", paths=[str(tmp_path / "nope.txt")], raw_dir=str(tmp_path / "raw")
            )
        )
    with pytest.raises(ValueError, match="needs data.paths"):
        DataSettings(source="files")


_RSS_SCRIPT = """
import resource, sys
from pathlib import Path
from pipeline.data.documents import file_documents
paths = [Path(p) for p in sys.argv[1:]]
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
docs = list(file_documents(paths, 1_000_000))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
print(len(docs), sum(len(d.encode()) for d in docs), grown // 1024)
"""


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_max_bytes_is_honoured_while_streaming(tmp_path: Path, kind: str) -> None:
    """A 96 MB one-line file with data.max_bytes = 1 MB: at most 1 MB of text comes out and
    the reader's memory grows by a few MB, not by the file (it read it all before)."""
    import subprocess
    import sys

    big = tmp_path / f"big.{kind}"
    with big.open("wb") as fh:
        if kind == "jsonl":
            fh.write(b'{"text": "small first document"}\n{"text": "')
        for _ in range(96):
            fh.write(b"x" * (1 << 20))
        fh.write(b'"}\n' if kind == "jsonl" else b"")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(big)], capture_output=True, text=True, check=True
    ).stdout.split()
    n_docs, n_bytes, grown_mb = map(int, out)
    assert n_bytes <= 1_000_000 and n_docs == 1
    assert n_bytes == (1_000_000 if kind == "txt" else len("small first document"))
    assert grown_mb < 24, f"reading grew RSS by {grown_mb} MB"


def test_every_reader_error_names_the_file(tmp_path: Path) -> None:
    """The class of 'a traceback naming no file': corrupt/truncated parquet, a non-string
    `text` column, a non-zstd .zst, invalid UTF-8 in .txt and .jsonl, a first JSON line too
    long for max_bytes. (CLI-level: tests/test_faults.py.)"""
    good = tmp_path / "good.parquet"
    pl.DataFrame({"text": ["a document"] * 100}).write_parquet(good)
    data = good.read_bytes()
    cases = {
        "trunc.parquet": (data[: len(data) // 2], "trunc.parquet: not a readable parquet"),
        "ints.parquet": (None, "ints.parquet: column `text` holds Int64, not strings"),
        "plain.jsonl.zst": (b'{"text": "x"}\n', "plain.jsonl.zst: not a valid zstd stream"),
        "bad.txt": (b"ok \xff", "bad.txt: invalid UTF-8 at byte 3"),
        "bad.jsonl": (b'{"text": "ok"}\n{"text": "\xff"}\n', "bad.jsonl:2: invalid UTF-8"),
        "long.jsonl": (b'{"text": "' + b"y" * 200_000 + b'"}\n', "long.jsonl:1: one JSON line"),
    }
    for name, (payload, message) in cases.items():
        path = tmp_path / name
        if payload is None:
            pl.DataFrame({"text": [1, 2]}).write_parquet(path)
        else:
            path.write_bytes(payload)
        with pytest.raises(ValueError, match=re.escape(message)):
            if name == "long.jsonl":  # the first document: nothing fits, say so
                list(file_documents([path], 10_000))
            else:  # after a good file: the bad one is reached
                list(file_documents([good, path], None))
