"""The image-folder index: one walk per change of the folder, across ranks (real gloo processes) and restarts.

The ranks are processes of this very file (`python tests/test_file_index.py ARGS`), as in test_ddp.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_zoo.data import DataError
from ssl_zoo.data import file_index
from ssl_zoo.data.file_index import index_file, read_index
from ssl_zoo.data.image_folder import IMAGE_EXTENSIONS, ImageFolder
from ssl_zoo.launch.local_ranks import failures, run_ranks

ROOT = Path(__file__).resolve().parents[1]


def make_images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10, 12, 3), len(name), dtype=np.uint8)).save(root / name)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_index_is_walked_once_and_rebuilt_when_files_are_added_or_removed(tmp_path, cache):
    folder = tmp_path / "data"
    make_images(folder, ["cat/1.png", "cat/deep/0.png", "cat/0.png", "dog/a.jpg"])
    (folder / "dog" / "notes.txt").write_text("not an image")
    before = file_index.walks
    first = ImageFolder(str(folder), 8, 3)
    assert file_index.walks == before + 1 and index_file(folder.absolute(), IMAGE_EXTENSIONS).is_file()
    # labels and order as Path sorting gives them (class sub-folders searched recursively)
    assert [str(first.index.path(i).relative_to(folder)) for i in range(len(first))] == [
        "cat/0.png", "cat/1.png", "cat/deep/0.png", "dog/a.jpg"]
    assert first.labels.tolist() == [0, 0, 0, 1] and first.classes == ["cat", "dog"]
    assert isinstance(first.index.blob, np.ndarray) and first.index.blob.dtype == np.uint8  # no Path list

    again = ImageFolder(str(folder), 8, 3)  # a restart: the cached index, no walk
    assert file_index.walks == before + 1 and len(again) == 4

    make_images(folder, ["cat/deep/1.png"])  # added in a sub-folder: only that directory's mtime changes
    grown = ImageFolder(str(folder), 8, 3)
    assert file_index.walks == before + 2 and len(grown) == 5

    (folder / "dog" / "a.jpg").unlink()
    shrunk = ImageFolder(str(folder), 8, 3)
    assert file_index.walks == before + 3 and len(shrunk) == 4 and shrunk.labels.tolist() == [0, 0, 0, 0]
    assert ImageFolder(str(folder), 8, 3).__getitems__([3]).images.shape == (1, 3, 8, 8)
    assert file_index.walks == before + 3


def test_corrupt_cached_index_is_rebuilt_and_an_unreadable_one_is_named(tmp_path, cache):
    folder = tmp_path / "flat"
    make_images(folder, ["a.png", "b.png"])
    ImageFolder(str(folder), 8, 3)
    cached = index_file(folder.absolute(), IMAGE_EXTENSIONS)
    cached.write_bytes(b"PK\x03\x04 truncated")
    before = file_index.walks
    assert len(ImageFolder(str(folder), 8, 3)) == 2 and file_index.walks == before + 1  # rebuilt, not trusted
    cached.write_bytes(b"garbage")
    # what a non-zero rank does after rank 0's check: read the file, or fail on one line naming it
    with pytest.raises(DataError, match=rf"cannot read the file index {cached}") as err:
        read_index(folder.absolute(), IMAGE_EXTENSIONS)
    assert "\n" not in str(err.value)


def launch(folder: Path, out: Path, cache: Path) -> list[dict]:
    out.mkdir()
    results = run_ranks([__file__, str(folder), str(out)], 2, ROOT, timeout=120, env={"SSL_ZOO_CACHE": str(cache)})
    report = failures(results)
    if report:
        pytest.fail("ranks failed:\n" + report)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_two_ranks_and_a_restart_walk_the_folder_once(tmp_path):
    folder, cache = tmp_path / "data", tmp_path / "cache"
    make_images(folder, [f"c{c}/{i}.png" for c in range(3) for i in range(4)])
    first = launch(folder, tmp_path / "start", cache)
    assert sum(r["walks"] for r in first) == 1 and first[0]["walks"] == 1  # rank 0 walked, rank 1 read its index
    assert first[0]["files"] == first[1]["files"] and len(first[0]["files"]) == 12

    restart = launch(folder, tmp_path / "restart", cache)
    assert sum(r["walks"] for r in restart) == 0 and restart[0]["files"] == first[0]["files"]

    make_images(folder, ["c1/new.png"])  # a stale index is rebuilt (once), not trusted
    stale = launch(folder, tmp_path / "stale", cache)
    assert [r["walks"] for r in stale] == [1, 0] and all(len(r["files"]) == 13 for r in stale)


@pytest.mark.slow
def test_a_missing_folder_fails_on_every_rank_with_rank_0s_message(tmp_path):
    results = run_ranks([__file__, str(tmp_path / "nowhere"), str(tmp_path)], 2, ROOT, timeout=120,
                        env={"SSL_ZOO_CACHE": str(tmp_path / "cache")})
    assert all(r.returncode == 1 for r in results)
    assert all("data.path does not exist" in r.output for r in results) and "rank 0:" in results[1].output


if __name__ == "__main__":  # one rank: index the folder, report the walks it made and the files it got
    from ssl_zoo import distributed as dist_utils

    folder, out = sys.argv[1], Path(sys.argv[2])
    info = dist_utils.init_distributed("cpu")
    try:
        ds = ImageFolder(folder, 8, 3)
    except DataError as e:
        print(f"DataError: {e}")
        dist_utils.cleanup()
        sys.exit(1)
    files = [str(ds.index.path(i)) for i in range(len(ds))]
    (out / f"rank{info.rank}.json").write_text(json.dumps({"walks": file_index.walks, "files": files}))
    dist_utils.cleanup()
