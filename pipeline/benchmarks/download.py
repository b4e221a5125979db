"""Shard download throughput, 1 vs N workers, against a local server with a per-connection
bandwidth limit (what a CDN or the hub gives one TCP stream).

    python -m pipeline.benchmarks.download                      # 7 + 1 shards x 4 MB, 8 MB/s each
    python -m pipeline.benchmarks.download --workers 1 4 8 --shards 16 --limit-mbs 4

Prints MB/s per worker count and the ratio to 1 worker. `ShardServer` is also the test
server of tests/test_datasets.py: it serves files under any URL prefix (plain folders and
the hub's `/datasets/REPO/resolve/REV/NAME`), answers HEAD the way the hub does (X-Repo-Commit,
ETag, Content-Length), honours Range, and can throttle, cut a transfer short once, or fail.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import string
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["ShardServer", "fixture_shard", "main"]

REPO_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class ShardServer:
    """A Range-capable HTTP server on 127.0.0.1 in a daemon thread.

    Attributes (set them before the requests they should affect):
        files: name -> bytes, matched on the last path component of the request.
        limit_bps: bytes per second per connection (None = unthrottled).
        slow: name -> bytes per second for that file only.
        cut_once: name -> bytes to send before dropping the connection, once.
        fail: name -> HTTP status always answered for that file.
        requests: (method, path, Range header, Authorization header) of every request, in
            arrival order.
    """

    def __init__(self, limit_bps: float | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.limit_bps = limit_bps
        self.slow: dict[str, float] = {}
        self.cut_once: dict[str, int] = {}
        self.fail: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self._lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                state._serve(self, body=False)

            def do_GET(self) -> None:
                state._serve(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        """Root URL (`http://127.0.0.1:PORT`)."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def names(self, method: str = "GET") -> list[str]:
        """File names requested with `method`, in order."""
        with self._lock:
            return [p.rsplit("/", 1)[-1] for m, p, _, _ in self.requests if m == method]

    def __enter__(self) -> ShardServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _serve(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        name = path.rsplit("/", 1)[-1]
        rng = handler.headers.get("Range")
        with self._lock:
            self.requests.append((handler.command, path, rng, handler.headers.get("Authorization")))
            status = self.fail.get(name)
            data = self.files.get(name)
            cut = self.cut_once.pop(name, None) if body else None
        if status is not None or data is None:
            handler.send_response(status or 404)
            handler.send_header("X-Repo-Commit", REPO_COMMIT)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        start = 0
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        payload = data[start:]
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", REPO_COMMIT)
        handler.end_headers()
        if not body:
            return
        if cut is not None:
            payload = payload[:cut]
        rate = self.slow.get(name, self.limit_bps)
        try:
            _send(handler.wfile, payload, rate)
        except (BrokenPipeError, ConnectionResetError):
            return
        if cut is not None:
            handler.close_connection = True


def _send(out: io.BufferedIOBase, payload: bytes, rate: float | None) -> None:
    chunk = 64 << 10
    start = time.monotonic()
    for offset in range(0, len(payload), chunk):
        out.write(payload[offset : offset + chunk])
        if rate:
            ahead = (offset + chunk) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    out.flush()


def fixture_shard(path: Path, docs: int, doc_bytes: int, seed: int) -> bytes:
    """A parquet shard of `docs` random-letter documents (incompressible enough that the file
    is about docs x doc_bytes x 0.6 bytes); returns the file's bytes."""
    import polars as pl

    rng = random.Random(seed)
    letters = string.ascii_lowercase + " "
    texts = ["".join(rng.choices(letters, k=doc_bytes)) for _ in range(docs)]
    pl.DataFrame({"text": texts}).write_parquet(path)
    return path.read_bytes()


def _measure(server: ShardServer, shards: int, workers: int, base: Path) -> tuple[float, float]:
    from pipeline.data.datasets import Progress, download_shards, parquet_url_spec, plan

    spec = parquet_url_spec(f"{server.url}/data", final_shard=shards)
    dest = base / f"w{workers}"
    progress = Progress(shards + 1, stream=io.StringIO(), tty=False, interval_s=1e9)
    t0 = time.perf_counter()
    results = download_shards(
        spec, plan(spec, shards), dest, workers=workers, backoff_s=0.01, progress=progress
    )
    elapsed = time.perf_counter() - t0
    progress.close()
    return sum(r.bytes for r in results) / elapsed, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=7, help="training shards (one more: val)")
    parser.add_argument("--shard-mb", type=float, default=4.0, help="approximate MB per shard")
    parser.add_argument("--limit-mbs", type=float, default=8.0, help="MB/s per connection")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args(argv)
    import pipeline.data.sources  # noqa: F401  (imported here, not inside the first timing)

    doc_bytes = 4096
    docs = max(1, int(args.shard_mb * 1e6 / 0.6 / doc_bytes))
    with tempfile.TemporaryDirectory(prefix="lrt-bench-download-") as tmp:
        base = Path(tmp)
        with ShardServer(limit_bps=args.limit_mbs * 1e6) as server:
            for i in range(args.shards + 1):
                name = f"shard_{i:05d}.parquet"
                server.files[name] = fixture_shard(base / f"src_{name}", docs, doc_bytes, i)
            total = sum(len(b) for b in server.files.values())
            print(
                f"{args.shards + 1} shards, {total / 1e6:.1f} MB, limit {args.limit_mbs:g} MB/s "
                "per connection, 127.0.0.1",
                flush=True,
            )
            reference = None
            for workers in args.workers:
                rate, elapsed = _measure(server, args.shards, workers, base)
                reference = reference or rate
                print(
                    f"workers={workers:>2}: {rate / 1e6:7.1f} MB/s  {elapsed:6.2f} s  "
                    f"{rate / reference:5.2f}x vs workers={args.workers[0]}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
