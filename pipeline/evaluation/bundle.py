"""nanochat's CORE eval bundle: download, verify and unpack it into the project (stage `eval_bundle`).

The bundle is the archive nanochat's `scripts/base_eval.py` uses (`eval_bundle.zip`: a folder
`eval_bundle/` with `core.yaml`, `eval_meta_data.csv` and `eval_data/**.jsonl`);
`pipeline.evaluation.core_tasks.load_tasks` reads that layout. This module

1. downloads the archive to `<out_dir>.zip` through `<out_dir>.zip.part`, resuming with HTTP
   Range after a dropped connection (`pipeline.data.http.fetch`), the size checked against the
   server's Content-Length;
2. verifies it: the expected sha256 and size when given, every member's CRC, and a `core.yaml`
   inside (a mismatch deletes the archive and raises `EvalBundleError`);
3. extracts it into a temporary folder beside `out_dir` and renames it into place, so
   `out_dir` is either the old bundle or the whole new one, never half of one;
4. writes `out_dir/status.json` (`available`, url, sha256, size, tasks).

Offline, or when the server refuses, the stage does not fail the pipeline: it writes `out_dir`
with only a `status.json` saying `unavailable: <why>` and the command to run once the network is
there; eval and the report repeat that sentence (`core_status`).

    >>> status = prepare_bundle("data/eval_bundle", DEFAULT_URL)          # doctest: +SKIP
    >>> status["available"], status["message"]                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_json, output_dir
from pipeline.data.http import DownloadError, fetch, sha256_file

log = logging.getLogger(__name__)

DEFAULT_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
"""Where nanochat's base_eval downloads the bundle from (`EVAL_BUNDLE_URL`)."""
DEFAULT_DIR = "data/eval_bundle"
STATUS_FILE = "status.json"
URL_ENV = "LRT_EVAL_BUNDLE_URL"
"""Environment override of the bundle URL until `eval.bundle_url` is a setting."""
FETCH_COMMAND = "dvc repro -f -s eval_bundle && dvc repro"
"""What to run once the network is there (also `python -m stages.eval_bundle`)."""

__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_URL",
    "EvalBundleError",
    "bundle_status",
    "core_status",
    "fetch_bundle",
    "prepare_bundle",
]


class EvalBundleError(DownloadError):
    """The archive arrived but is not the bundle: wrong hash or size, corrupt, or no core.yaml."""


# ---------------------------------------------------------------------------------------------
# Download, verify, extract
# ---------------------------------------------------------------------------------------------


def _verify(archive: Path, url: str, sha256: str | None, size: int | None) -> str:
    """Raise `EvalBundleError` (after deleting the archive) unless it is the expected bundle;
    returns its sha256."""
    actual_size = archive.stat().st_size
    digest = sha256_file(archive)
    problem = None
    if sha256 is not None and digest != sha256.lower():
        problem = f"sha256 {digest} != expected {sha256.lower()}"
    elif size is not None and actual_size != size:
        problem = f"{actual_size} bytes != expected {size}"
    else:
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                names = zf.namelist()
            if bad is not None:
                problem = f"member {bad!r} fails its CRC check"
            elif not any(n == "core.yaml" or n.endswith("/core.yaml") for n in names):
                problem = "no core.yaml inside (not an eval bundle)"
        except zipfile.BadZipFile as exc:
            problem = f"not a zip archive ({exc})"
    if problem is not None:
        archive.unlink(missing_ok=True)
        raise EvalBundleError(
            f"eval bundle {archive} from {url}: {problem}; the file was deleted. Check the URL "
            f"and expected hash ({URL_ENV} / eval.bundle_url, eval.bundle_sha256), then "
            "re-run `python -m stages.eval_bundle`"
        )
    return digest


def _extract(archive: Path, into: Path) -> Path:
    """Unpack into the empty folder `into`; returns the folder holding core.yaml."""
    root = into.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():  # refuse members that would land outside (zip slip)
            if not (root / member).resolve().is_relative_to(root):
                raise EvalBundleError(
                    f"eval bundle {archive}: member {member!r} escapes the folder"
                )
        zf.extractall(into)
    for candidate in (into / "eval_bundle", into):
        if (candidate / "core.yaml").is_file():
            return candidate
    found = sorted(into.rglob("core.yaml"))
    if found:
        return found[0].parent
    raise EvalBundleError(f"eval bundle {archive}: no core.yaml after extraction")


def _owned(out_dir: Path) -> Callable[[str], bool]:
    """Names in `out_dir` this stage wrote (its status file and the entries it lists): the rest
    is the user's and is carried across a re-fetch (`pipeline.atomic.output_dir`)."""
    listed = set((bundle_status(out_dir) or {}).get("files", []))
    return lambda name: name == STATUS_FILE or name in listed


def fetch_bundle(
    out_dir: str | Path = DEFAULT_DIR,
    url: str = DEFAULT_URL,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
) -> dict[str, Any]:
    """Download (or reuse) `<out_dir>.zip`, verify it, and unpack it into `out_dir`.

    Args:
        out_dir: Folder the bundle lands in (its `core.yaml` at the top).
        url: Archive URL (http, https or file).
        sha256: Expected sha256 of the archive (None: not checked; the one seen is recorded).
        size: Expected size in bytes (None: the server's Content-Length is trusted).
        retries, timeout_s, backoff_s: Of the download (`pipeline.data.http.fetch`).

    Returns:
        The status written to `out_dir/status.json` (`available: True`).

    Raises:
        DownloadError: the server could not be reached or refused, after every retry.
        EvalBundleError: the archive is not the expected bundle (deleted; nothing replaced).

    Example:
        >>> fetch_bundle("data/eval_bundle", "http://127.0.0.1:8000/eval_bundle.zip")  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    archive = out_dir.with_name(out_dir.name + ".zip")
    previous = bundle_status(out_dir) or {}
    if archive.is_file() and previous.get("url") not in (None, url):
        log.info("eval bundle: the cached archive came from %s, not %s", previous["url"], url)
        archive.unlink()  # ours, a cache: the extracted bundle stays until a new one verifies
    if archive.is_file():
        try:  # a previous run's archive: reuse it when it still verifies
            digest = _verify(archive, url, sha256, size)
        except EvalBundleError as exc:
            log.warning("re-downloading the eval bundle: %s", exc)
    if not archive.is_file():
        log.info("downloading the CORE eval bundle from %s", url)
        fetch(url, archive, retries=retries, timeout_s=timeout_s, backoff_s=backoff_s)
        digest = _verify(archive, url, sha256, size)
    from pipeline.evaluation.core_tasks import load_tasks

    # locked, staged beside out_dir and swapped in only after success; leftovers of a killed
    # run are removed by the next one (pipeline.atomic)
    with output_dir(out_dir, owned=_owned(out_dir)) as staging:
        unpacked = staging.parent / "unpacked"
        unpacked.mkdir()
        root = _extract(archive, unpacked)
        names = sorted(entry.name for entry in root.iterdir())
        for name in names:
            os.replace(root / name, staging / name)
        tasks = load_tasks(staging)
        status = {
            "available": True,
            "url": url,
            "sha256": digest,
            "size": archive.stat().st_size,
            "tasks": len(tasks),
            "files": names,
            "message": f"CORE eval bundle from {url}: {len(tasks)} tasks",
        }
        atomic_write_json(staging / STATUS_FILE, status)
    log.info("eval bundle: %d CORE tasks in %s (sha256 %s)", len(tasks), out_dir, digest[:12])
    return status


def prepare_bundle(
    out_dir: str | Path = DEFAULT_DIR, url: str = DEFAULT_URL, **kwargs: Any
) -> dict[str, Any]:
    """`fetch_bundle`, but a server that cannot be reached leaves `out_dir` holding only a
    status file that says so (`available: False`, `message`), instead of failing.

    A bundle that arrives but does not verify still raises `EvalBundleError`: that is a wrong URL
    or hash, which must not pass silently as "offline".
    """
    out_dir = Path(out_dir)
    try:
        return fetch_bundle(out_dir, url, **kwargs)
    except EvalBundleError:
        raise
    except DownloadError as exc:
        status = {
            "available": False,
            "url": url,
            "reason": str(exc),
            "message": (
                f"CORE skipped: eval bundle unavailable: {exc}; run `{FETCH_COMMAND}` "
                f"(or `python -m stages.eval_bundle`) with network"
            ),
        }
        previous = bundle_status(out_dir)
        if previous and previous.get("available"):  # never replace a good bundle by "offline"
            log.warning(
                "eval bundle: %s unreachable (%s); keeping the bundle already in %s (from %s)",
                url, exc, out_dir, previous.get("url"),
            )  # fmt: skip
            return previous
        with output_dir(out_dir, owned=_owned(out_dir)) as staging:
            atomic_write_json(staging / STATUS_FILE, status)
        log.warning("%s", status["message"])
        return status


# ---------------------------------------------------------------------------------------------
# What eval and the report say
# ---------------------------------------------------------------------------------------------


def bundle_status(folder: str | Path) -> dict[str, Any] | None:
    """The `status.json` of a bundle folder, or None (no status file: not made by this stage)."""
    path = Path(folder) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def core_status(core_dir: str | Path, n_tasks: int) -> dict[str, Any]:
    """Whether CORE runs from `core_dir` and, when not, one sentence saying why and what to do.

    Returns:
        `{"available": bool, "dir": str, "tasks": n_tasks, "message": str}`.
    """
    core_dir = Path(core_dir)
    out: dict[str, Any] = {"available": n_tasks > 0, "dir": str(core_dir), "tasks": n_tasks}
    status = bundle_status(core_dir)
    if n_tasks > 0:
        source = f" ({status['url']})" if status and status.get("url") else ""
        out["message"] = f"CORE: {n_tasks} tasks from {core_dir}{source}"
    elif status is not None and not status.get("available", False):
        out["message"] = str(status.get("message") or f"CORE skipped: {status.get('reason')}")
    else:
        out["message"] = (
            f"CORE skipped: no CORE task files in {core_dir} (eval.core_dir); fetch nanochat's "
            f"eval bundle with `python -m stages.eval_bundle` (into {DEFAULT_DIR}, with network) "
            f"and set eval.core_dir: {DEFAULT_DIR}"
        )
    return out


def settings_url(settings: Any) -> str:
    """The bundle URL: `eval.bundle_url` when that setting exists, else $LRT_EVAL_BUNDLE_URL,
    else nanochat's."""
    return getattr(settings.eval, "bundle_url", None) or os.environ.get(URL_ENV) or DEFAULT_URL
