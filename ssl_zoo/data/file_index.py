"""The file list of an image folder, walked once and cached on disk for every rank and every restart.

Why: on a parallel file system a walk of ImageNet (1.28M files) takes minutes, and every rank of
every start and requeue used to repeat it, each then holding 1.28M `Path` objects (copied into every
loader worker). Here the walk happens once: the index (relative paths as one byte buffer plus
offsets, labels as one int64 array) goes to `cache_root()/index/`, keyed by the folder's absolute
path and the extensions. A later run trusts it only while every directory seen by the walk keeps
the modification time recorded then (adding, removing or renaming a file changes its directory's
mtime), which costs one `stat` per directory, not per file. In a process group rank 0 checks or
rebuilds the index and the other ranks read the file it wrote.

Limit: a file added to a directory within the same clock tick as the walk's `stat` of that
directory (milliseconds) can leave the directory's mtime unchanged; the walk stats each directory
before listing it, so that window is as small as it gets.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist

from ssl_zoo import distributed as dist_utils
from ssl_zoo.cache import cache_root
from ssl_zoo.errors import DataError

FORMAT_VERSION = 1
LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # missing, corrupt, other format
walks = 0  # directory walks made by this process (tests count them across ranks and restarts)


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one uint8 buffer and int64 offsets (n + 1): no per-string Python object to copy."""
    encoded = [os.fsencode(s) for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _unpack(blob: np.ndarray, offsets: np.ndarray, i: int) -> str:
    return os.fsdecode(blob[offsets[i]:offsets[i + 1]].tobytes())


@dataclass
class FileIndex:
    """Files of one folder, compact: `path(i)` rebuilds the i-th Path on demand."""

    root: Path
    blob: np.ndarray  # uint8: relative paths, concatenated
    offsets: np.ndarray  # int64 (n + 1)
    labels: np.ndarray  # int64 (n,), -1 for a flat folder
    classes: list[str]
    dirs: list[str]  # relative directories the walk listed ('' is the root)
    dir_mtimes: np.ndarray  # int64 ns, one per directory

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        return self.root / _unpack(self.blob, self.offsets, i)

    def is_current(self) -> bool:
        """True while every listed directory still has its recorded mtime (no file added or removed)."""
        for rel, mtime in zip(self.dirs, self.dir_mtimes.tolist()):
            try:
                if os.stat(self.root / rel).st_mtime_ns != mtime:
                    return False
            except OSError:
                return False
        return True

    def save(self, path: Path) -> None:
        """Atomically (a partly written index is never read): a temporary file renamed into place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        class_blob, class_offsets = _pack(self.classes)
        dir_blob, dir_offsets = _pack(self.dirs)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int64(FORMAT_VERSION), blob=self.blob, offsets=self.offsets, labels=self.labels,
                     class_blob=class_blob, class_offsets=class_offsets, dir_blob=dir_blob, dir_offsets=dir_offsets,
                     dir_mtimes=self.dir_mtimes)
        os.replace(tmp, path)

    @classmethod
    def load(cls, root: Path, path: Path) -> "FileIndex":
        """The index in `path`; one of LOAD_ERRORS when it is missing, corrupt or of another version."""
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != FORMAT_VERSION:
                raise ValueError(f"index format {int(z['version'])}, expected {FORMAT_VERSION}")
            classes = [_unpack(z["class_blob"], z["class_offsets"], i) for i in range(len(z["class_offsets"]) - 1)]
            dirs = [_unpack(z["dir_blob"], z["dir_offsets"], i) for i in range(len(z["dir_offsets"]) - 1)]
            return cls(root, z["blob"], z["offsets"], z["labels"], classes, dirs, z["dir_mtimes"])


def _walk(top: Path, rel: str, extensions: set[str], recursive: bool, files: list[str],
          dirs: list[str], mtimes: list[int]) -> None:
    """Append the image files under top/rel (sorted, as Path ordering sorts them) and the listed dirs."""
    folder = top / rel if rel else top
    mtimes.append(os.stat(folder).st_mtime_ns)  # before listing: a file added meanwhile changes it again
    dirs.append(rel)
    subdirs = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = f"{rel}/{entry.name}" if rel else entry.name
        if recursive and entry.is_dir(follow_symlinks=False):
            subdirs.append(name)
        elif os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
            files.append(name)
    for name in subdirs:
        _walk(top, name, extensions, recursive, files, dirs, mtimes)


def _sort_like_paths(files: list[str]) -> list[str]:
    return sorted(files, key=lambda f: f.split("/"))


def build_index(root: Path, extensions: set[str]) -> FileIndex:
    """Walk `root`: class sub-folders (labelled, searched recursively) or a flat folder of files."""
    global walks
    walks += 1
    if not root.exists():
        raise DataError(f"data.path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data.path is not a folder: {root}")
    root_mtime = os.stat(root).st_mtime_ns  # before the root is listed, as for every directory
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files: list[str] = []
    labels: list[int] = []
    dirs: list[str] = []
    mtimes: list[int] = []
    if classes:
        mtimes.append(root_mtime)
        dirs.append("")
        for label, name in enumerate(classes):
            found: list[str] = []
            _walk(root, name, extensions, True, found, dirs, mtimes)
            files += _sort_like_paths(found)
            labels += [label] * len(found)
    else:
        _walk(root, "", extensions, False, files, dirs, mtimes)
        mtimes[0] = root_mtime  # the stat before the class listing above
        labels = [-1] * len(files)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(extensions))}) found under {root}")
    blob, offsets = _pack(files)
    return FileIndex(root, blob, offsets, np.asarray(labels, dtype=np.int64), classes, dirs,
                     np.asarray(mtimes, dtype=np.int64))


def index_file(root: Path, extensions: set[str]) -> Path:
    """Where the index of `root` is cached: one file per folder (absolute path) and extension set."""

    key = hashlib.sha256(f"{root}\0{','.join(sorted(extensions))}".encode()).hexdigest()[:16]
    return cache_root() / "index" / f"{root.name or 'root'}-{key}.npz"


def current_index(root: Path, extensions: set[str]) -> FileIndex:
    """The cached index if it is still current, else a fresh walk (saved for the next reader)."""
    path = index_file(root, extensions)
    try:
        index = FileIndex.load(root, path)
        if index.is_current():
            return index
    except LOAD_ERRORS:
        pass  # missing, corrupt or old: rebuilt below
    index = build_index(root, extensions)
    try:
        index.save(path)
    except OSError:  # a read-only cache only costs the next start a walk
        pass
    return index


def folder_index(path: str | Path, extensions: set[str]) -> FileIndex:
    """The index of an image folder, walked at most once per change of the folder.

    In a process group rank 0 checks (or rebuilds) the cached index and the other ranks then read
    the file it wrote (on a multi-node job the cache must be on a file system every node sees). A
    rank-0 failure (missing folder, no images) is raised on every rank with rank 0's message.
    """
    root = Path(path).absolute()
    if dist_utils.world_size() == 1:
        return current_index(root, extensions)
    outcome: list[str | None] = [None]
    if dist_utils.is_main():
        try:
            index = current_index(root, extensions)
        except DataError as e:
            outcome = [str(e)]
        dist.broadcast_object_list(outcome, src=0)
        if outcome[0] is not None:
            raise DataError(outcome[0])
        return index
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise DataError(f"rank 0: {outcome[0]}")
    return read_index(root, extensions)


def read_index(root: Path, extensions: set[str]) -> FileIndex:
    """The cached index rank 0 has just checked or written (not re-checked: that would walk again)."""
    cached = index_file(root, extensions)
    try:
        return FileIndex.load(root, cached)
    except LOAD_ERRORS as e:
        raise DataError(f"cannot read the file index {cached} of {root} (written by rank 0): {e}; every rank "
                        "must see the cache folder (set SSL_ZOO_CACHE to a shared path)") from None
