"""Image pairs for cross-view methods (CroCo): real pairs from a list, or synthetic ones.

`pairs`: a text/CSV file with one pair per line, `first,second` (or whitespace separated), both
images showing one scene from two viewpoints; blank lines and `#` comments are skipped; relative
paths resolve against `data.path` when set, else against the file's folder. Both images are decoded
in the loader workers like image folders (short side to `data.load_size`, centre square) and travel
as `Batch.images` / `Batch.pair_images`; unreadable files follow `data.on_bad_image`.

`synthetic_pairs`: the dataset yields single images (`data.pairs_source`) and `synthetic_pair_views`
cuts two overlapping crops on the device, the second one through a random homography. This is an
APPROXIMATION for single-image data: a homography is the view change of a planar scene only, so the
pairs lack the parallax and occlusions of real multi-view pairs.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from kornia.geometry.transform import get_perspective_transform, warp_perspective

from ssl_zoo.config import bounded
from ssl_zoo.data.batch import Batch, DataError
from ssl_zoo.data.image_folder import decode_image, first_readable, replaced


def read_pairs_file(pairs_file: str, root: str = "") -> list[tuple[Path, Path]]:
    """Parse the pair list; a line without exactly two paths raises a DataError naming file and line."""
    path = Path(pairs_file)
    if not pairs_file or not path.is_file():
        raise DataError(f"data.pairs_file not found: {pairs_file!r} (data.kind=pairs needs a list of image pairs)")
    base = Path(root) if root else path.parent
    pairs = []
    with path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if len(row) == 1:
                row = row[0].split()
            row = [p.strip() for p in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) != 2 or not all(row):
                raise DataError(f"{path}:{lineno}: expected two image paths, got {row!r}")
            pairs.append((base / row[0], base / row[1]))
    if not pairs:
        raise DataError(f"{path}: no image pairs listed")
    return pairs


class ImagePairs(torch.utils.data.Dataset):
    """Unlabelled pairs (labels -1): `images` = first views, `pair_images` = second views."""

    num_classes = 0

    def __init__(self, pairs_file: str, root: str, load_size: int, channels: int, on_bad_image: str = "skip") -> None:
        self.pairs_file = Path(pairs_file)
        self.pairs = read_pairs_file(pairs_file, root)
        self.labels = torch.full((len(self.pairs),), -1, dtype=torch.long)
        self.load_size, self.channels = load_size, channels
        self.on_bad_image = on_bad_image
        self.bad_images: set[str] = set()

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = self.pairs[index]
        return (decode_image(first, self.load_size, self.channels),
                decode_image(second, self.load_size, self.channels))

    def __getitems__(self, indices: list[int]) -> Batch:
        loaded = [first_readable(i, len(self.pairs), self._read, self.on_bad_image, self.bad_images, self.pairs_file)
                  for i in indices]
        idx = torch.tensor([i for _, i in loaded], dtype=torch.long)
        first = torch.stack([pair[0] for pair, _ in loaded])
        second = torch.stack([pair[1] for pair, _ in loaded])
        return Batch(first, self.labels[idx], idx, second, skipped=replaced(indices, loaded))

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])


@dataclass
class SyntheticPairSpec:
    """Geometry of synthetic pairs (not from a paper: CroCo trains on real pairs)."""

    side: tuple[float, float] = bounded((0.6, 1.0), 0.0, 1.0, ordered=True)  # crop side as a fraction of the image's short side (shared by both)
    shift: float = bounded(0.3, 0.0, 1.0)  # max offset of crop 2 from crop 1, fraction of the side (overlap)
    distortion: float = bounded(0.1, 0.0, 0.5)  # max corner displacement of crop 2, fraction of the side


_UNIT_SQUARE = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))  # top-left, top-right, bottom-right, bottom-left


@functools.lru_cache(maxsize=8)
def unit_square(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The corners of the unit square (4, 2), copied to each device once, not on every batch (a copy from
    Python data to a GPU waits for it). Read-only: callers build new tensors from it."""
    return torch.tensor(_UNIT_SQUARE, device=device, dtype=dtype)


@torch.no_grad()
def synthetic_pair_views(images: torch.Tensor, size: int,
                         spec: SyntheticPairSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two overlapping size x size views of each image, the second through a random homography.

    Batched on the images' device: per image one square crop (side ~ U(spec.side) x short side), a
    second square shifted by up to spec.shift x side (clamped into the image), whose four corners then
    move independently by up to spec.distortion x side. Returns (first, second, quads (2, B, 4, 2)):
    the source corners in pixels (x, y) of each view.
    """
    batch, _, height, width = images.shape
    dev, dtype = images.device, images.dtype
    side = torch.empty(batch, device=dev, dtype=dtype).uniform_(*spec.side) * (min(height, width) - 1)
    room = torch.stack([width - 1 - side, height - 1 - side], 1)  # (B, 2): free space for the top-left corner
    corner1 = torch.rand(batch, 2, device=dev, dtype=dtype) * room
    shift = (torch.rand(batch, 2, device=dev, dtype=dtype) * 2 - 1) * spec.shift * side[:, None]
    corner2 = torch.minimum((corner1 + shift).clamp(min=0), room)
    square = unit_square(dev, dtype) * side[:, None, None]  # (B, 4, 2)
    jitter = (torch.rand(batch, 4, 2, device=dev, dtype=dtype) * 2 - 1) * spec.distortion * side[:, None, None]
    quad1 = corner1[:, None] + square
    quad2 = corner2[:, None] + square + jitter
    quad2 = torch.stack([quad2[..., 0].clamp(0, width - 1), quad2[..., 1].clamp(0, height - 1)], -1)
    quads = torch.stack([quad1, quad2])
    target = unit_square(dev, dtype).expand(2 * batch, 4, 2) * (size - 1)
    warp = get_perspective_transform(quads.flatten(0, 1), target)
    views = warp_perspective(images.repeat(2, 1, 1, 1), warp, (size, size), mode="bilinear", align_corners=True)
    first, second = views.chunk(2)
    return first, second, quads
