"""Downloads into the cache: atomic, resumable when the server honours Range, sha256-verified.

Bytes go to `<file>.part` and are renamed into place only after the checksum matches, so the
cache never holds a file that failed verification. A `.part` left by an interrupted download is
continued with an HTTP Range request; a server that ignores Range sends the whole file, and the
download restarts.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ssl_zoo.hub.index import HubError

CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 8 << 20  # no progress bar for config files and small models


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int):
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file is already complete or longer than the file
            return None
        raise HubError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HubError(f"cannot reach {url}: {reason} (no network? a local hub folder or files already "
                       "in the cache work offline)") from e


def read_url(url: str) -> bytes:
    """A small file (index, config) read whole."""
    with _open(url, 0) as response:
        return response.read()


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f}"


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True, size: int | None = None) -> Path:
    """Fetch `url` into `dest`; with `sha256`, a cached `dest` that matches is reused.

    A body shorter than expected (`size`, e.g. the hub index's, else Content-Length) is a dropped
    connection, not a bad file: the `.part` is kept for the rerun to resume, and nothing is installed.
    """
    if sha256 and dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset)
    if response is None:
        part.unlink()
        offset, response = 0, _open(url, 0)
    with response:
        if offset and response.status != 206:
            offset = 0  # Range ignored: the body is the whole file
        length = response.headers.get("Content-Length")
        total = size or (int(length) + offset if length else None)
        received, dropped = offset, False
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name,
                disable=not progress or (total or 0) < PROGRESS_MIN_BYTES) as bar:
            try:
                while block := response.read(CHUNK):
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException):  # reset or timed out mid-body
                dropped = True
    if dropped or (total is not None and received < total):
        raise HubError(f"downloading {url}: connection lost at {_mb(received)} of {_mb(total) if total else '?'} MB: "
                       f"rerun to resume (the partial file {part} is kept)")
    if sha256:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise HubError(f"sha256 mismatch for {url}: expected {sha256}, got {actual}; the download was deleted")
    os.replace(part, dest)
    return dest
