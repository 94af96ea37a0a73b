"""The hub index (`index.json`) and the rules that keep names and locations inside the hub.

A hub is a folder (local, `file://`, or served over HTTP) holding `index.json` and one folder
per model. Names and index locations come from users and from remote servers, so both are
checked before they touch a path: a name is one plain path component, a location is a
relative POSIX path with no `..`, no scheme and no absolute start.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from ssl_zoo.checkpoint import atomic_write_json
from ssl_zoo.errors import HubError

INDEX_FILE = "index.json"
INDEX_FORMAT = "ssl-zoo-hub/1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")



def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise HubError(f"invalid hub model name {name!r}: use letters, digits, '.', '_' and '-' "
                       "(at most 128, starting with a letter or digit; no path separators, no '..')")
    return name


def check_sha256(value: object, where: str) -> str:
    """A sha256 as the hub writes it: 64 lowercase hex digits."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise HubError(f"{where} must be a sha256 (64 lowercase hex digits), got {value!r}")
    return value


def check_location(location: object, name: str) -> str:
    """An index entry's folder: a relative path that stays inside the hub."""
    bad = (not isinstance(location, str) or not location or "\\" in location or location.startswith("/")
           or ":" in location)
    if not bad:
        parts = PurePosixPath(location).parts
        bad = any(part in ("..", ".") for part in parts) or not parts
    if bad:
        raise HubError(f"index entry {name!r} points outside the hub ({location!r}); a location must be a "
                       "relative path inside the hub folder")
    return location


def parse_index(text: str, where: str) -> dict:
    """A validated index: {"format": ..., "models": {name: entry}}."""
    try:
        index = json.loads(text)
    except json.JSONDecodeError as e:
        raise HubError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
        raise HubError(f"{where} is not an ssl-zoo hub index (no 'models' mapping)")
    if index.get("format") != INDEX_FORMAT:
        raise HubError(f"{where} has format {index.get('format')!r}; this version reads {INDEX_FORMAT!r}")
    for name, entry in index["models"].items():
        check_name(name)
        if not isinstance(entry, dict):
            raise HubError(f"{where}: entry {name!r} is not an object")
        check_location(entry.get("path"), name)
        if entry.get("sha256") is not None:
            check_sha256(entry["sha256"], f"{where}: entry {name!r} field 'sha256'")
        size = entry.get("size_bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise HubError(f"{where}: entry {name!r} field 'size_bytes' must be a whole number of bytes, got {size!r}")
    return index


def read_local_index(root: Path, missing_ok: bool = False) -> dict:
    path = root / INDEX_FILE
    if not path.is_file():
        if missing_ok:
            return {"format": INDEX_FORMAT, "models": {}}
        raise HubError(f"no {INDEX_FILE} in hub {root} (export a model into it first: ssl-zoo hub export ... --hub {root})")
    return parse_index(path.read_text(), str(path))


def write_local_index(root: Path, index: dict) -> None:
    """Atomic (temporary file + rename), so readers never see half an index."""
    atomic_write_json(index, root / INDEX_FILE, sort_keys=True)


def model_folder(root: Path, name: str, entry: dict) -> Path:
    """The entry's folder under a local hub root; symlinks that lead out of the hub are rejected too."""
    folder = (root / check_location(entry.get("path"), name)).resolve()
    if not folder.is_relative_to(root.resolve()):
        raise HubError(f"index entry {name!r} resolves to {folder}, outside the hub {root}")
    return folder
