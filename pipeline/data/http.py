"""Resumable, verified HTTP(S) download of one file, and the sha256 every download records.

    from pipeline.data.http import fetch, sha256_file
    path = fetch("https://example.org/shard_00000.parquet", "data/raw/shard_00000.parquet")
    digest = sha256_file(path)

Bytes go to `NAME.part`; a retry asks for the rest with an HTTP Range header, and the result
must match the Content-Length/Content-Range total before `.part` is renamed into place. Used by
the sharded datasets (`pipeline.data.datasets`) and the eval bundle
(`pipeline.evaluation.bundle`); `sha256_file` also by the raw manifest (`pipeline.data.sources`).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["DownloadError", "fetch", "sha256_file"]


class DownloadError(OSError):
    """A remote file could not be fetched or verified after all retries."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def fetch(
    url: str, dest: str | Path, *, retries: int = 4, timeout_s: float = 60.0, backoff_s: float = 1.0
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming with HTTP Range after a failure.

    The finished size must equal the server's total (Content-Length, or the total of
    Content-Range); only then is `.part` renamed to `dest`.

    Raises:
        DownloadError: a 4xx answer (other than a stale range), or every retry failed.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("retrying %s in %.1fs (%s)", url, delay, last_error)
            time.sleep(delay)
        try:
            _fetch_once(url, part, timeout_s=timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()  # an HTTPError holds the response's socket
            if exc.code == 416:  # our .part is longer than the file: start over
                part.unlink(missing_ok=True)
                last_error = exc
                continue
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            last_error = exc
        except (*_RETRYABLE, _Incomplete) as exc:
            last_error = exc
        else:
            os.replace(part, dest)
            return dest
    raise DownloadError(f"{url}: failed after {retries + 1} attempts: {last_error}")


class _Incomplete(OSError):
    """The connection ended before the announced size; the next attempt resumes."""


def _fetch_once(url: str, part: Path, *, timeout_s: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "lrt-pipeline", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise _Incomplete(
                    f"unexpected Content-Range {response.headers.get('Content-Range')!r}"
                )
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:  # 200: the server sent the whole file (no range asked, or range ignored)
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            offset, mode = 0, "wb"
        with part.open(mode) as out:
            try:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            except http.client.IncompleteRead as exc:
                out.write(exc.partial)
                raise _Incomplete(f"connection closed early: {exc}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"{part.name}: {size} bytes of {total}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (hashlib releases the GIL: threads hash in
    parallel)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
