"""Images from a folder: class sub-folders (labelled) or a flat folder (unlabeled).

Decoding and resizing happen here, in the loader workers; everything random happens later on
the device. Evaluation gets each image's centre load_size square; training gets the whole image
(aspect kept, long side capped, centred in a square canvas, its valid size in Batch.sizes), because
RandomResizedCrop on the centre square never sees about a quarter of a 4:3 photo. A corrupt image
is skipped (replaced by the next readable one, counted, warned once) or raises, per
`data.on_bad_image`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ssl_zoo.data.batch import Batch, DataError
from ssl_zoo.data.bit_depth import to_8bit
from ssl_zoo.data.file_index import folder_index
from ssl_zoo.geometry import valid_offset

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


# a decompression bomb (more than Image.MAX_IMAGE_PIXELS pixels; PIL warns above it, refuses above twice it)
# is an unreadable image like any other: skipped or refused per data.on_bad_image, never a crash
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
               Image.DecompressionBombWarning)


class UnreadableImage(Exception):
    """`path` could not be decoded (missing, truncated, not an image)."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = path, cause


def open_8bit(path: Path, mode: str) -> Image.Image:
    """The file as a loaded 8-bit `mode` image. Above Image.MAX_IMAGE_PIXELS PIL only warns (it refuses
    above twice that): the warning is raised too, so a decompression bomb is never decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            return to_8bit(img).convert(mode)


def _resized(path: Path, load_size: int, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 with the short side at load_size (bicubic): 16-bit and float files scaled to
    8 bits (`to_8bit`); an unreadable file raises UnreadableImage."""
    try:
        img = open_8bit(path, "L" if channels == 1 else "RGB")
        w, h = img.size
        scale = load_size / min(w, h)
        img = img.resize((max(load_size, round(w * scale)), max(load_size, round(h * scale))), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)
    except READ_ERRORS as e:
        raise UnreadableImage(path, e) from e


def _crop(arr: np.ndarray, load_size: int, height: int, width: int) -> torch.Tensor:
    """A central height x width part of an (H, W[, 3]) array (short side load_size) as a (C, height, width)
    tensor, placed so that its own centre load_size square is the array's (rounding included): the
    evaluation square of an image is the centre of its training image."""
    top = (arr.shape[0] - load_size) // 2 - (height - load_size) // 2
    left = (arr.shape[1] - load_size) // 2 - (width - load_size) // 2
    t = torch.from_numpy(arr[top:top + height, left:left + width].copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def _channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    return t.expand(channels, -1, -1) if t.shape[0] == 1 and channels > 1 else t


def decode_image(path: Path, load_size: int, channels: int) -> torch.Tensor:
    """(channels, load_size, load_size) uint8: short side resized to load_size, centre square cropped
    (evaluation images, pairs)."""
    return _channels(_crop(_resized(path, load_size, channels), load_size, load_size, load_size), channels)


def decode_whole(path: Path, load_size: int, channels: int, longest: int) -> torch.Tensor:
    """(channels, h, w) uint8 with the aspect ratio kept: short side at load_size, the long side centre-cropped
    to at most `longest` (training images: RandomResizedCrop then sees the whole photo)."""
    arr = _resized(path, load_size, channels)
    return _channels(_crop(arr, load_size, min(arr.shape[0], longest), min(arr.shape[1], longest)), channels)


def pad_into(images: list[torch.Tensor], side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of up to side x side pixels, each centred in a side x side canvas whose border repeats its
    edge pixels (so blurs and interpolation near the valid edge see no black frame), and the (B, 2)
    (height, width) of each one's valid region. Offsets follow ssl_zoo.geometry.valid_offset."""
    out = torch.empty(len(images), images[0].shape[0], side, side, dtype=torch.uint8)
    sizes = torch.empty(len(images), 2, dtype=torch.long)
    grid = torch.arange(side)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        rows = (grid - valid_offset(side, h)).clamp(0, h - 1)
        cols = (grid - valid_offset(side, w)).clamp(0, w - 1)
        out[i] = img[:, rows[:, None], cols[None, :]]
        sizes[i, 0], sizes[i, 1] = h, w
    return out, sizes


def canvas_side(load_size: int, max_aspect: float) -> int:
    """Side of the square each whole image is padded into: the long side is kept up to this."""
    return max(load_size, round(load_size * max_aspect))


T = TypeVar("T")


def first_readable(index: int, count: int, read: Callable[[int], T], on_bad_image: str, bad_images: set[str],
                   where: Path) -> tuple[T, int]:
    """`read(index)`, or in skip mode the next item (cyclically) whose images all decode.

    Unreadable files are warned about once each and collected in `bad_images`; in 'error' mode the
    first one raises a DataError naming it.
    """
    for attempt in range(count):
        i = (index + attempt) % count
        try:
            return read(i), i
        except UnreadableImage as e:
            if on_bad_image == "error":
                raise DataError(f"unreadable image {e.path}: {e.cause} (set data.on_bad_image=skip to skip it)") from e
            if str(e.path) not in bad_images:
                bad_images.add(str(e.path))
                warnings.warn(f"skipping unreadable image {e.path}: {e.cause} ({len(bad_images)} skipped so far)")
    raise DataError(f"no readable image under {where}")


def replaced(requested: list[int], loaded: list[tuple[object, int]]) -> int:
    """How many items of a batch first_readable had to replace."""
    return sum(want != got for want, (_, got) in zip(requested, loaded))


class ImageFolder(torch.utils.data.Dataset):
    """Image files under `path` (class sub-folders: labelled; flat: unlabeled) -> uint8 batches.

    `max_aspect` 1: every image is its centre load_size square. Above 1 (training): whole images, the
    long side kept up to canvas_side(load_size, max_aspect), padded into square canvases, with each
    image's valid (height, width) in `Batch.sizes`. The file list comes from `folder_index` (walked once,
    cached). Subclasses for other file kinds change `extensions` and `decode`."""

    extensions: set[str] = IMAGE_EXTENSIONS

    def __init__(self, path: str, load_size: int, channels: int, on_bad_image: str = "skip",
                 max_aspect: float = 1.0) -> None:
        self.root = Path(path)
        self.index = folder_index(self.root, self.extensions)
        self.labels = torch.from_numpy(self.index.labels)
        self.classes = self.index.classes
        self.num_classes = len(self.classes)
        self.load_size = load_size
        self.canvas = canvas_side(load_size, max_aspect) if max_aspect > 1 else 0
        self.channels = channels
        self.on_bad_image = on_bad_image
        self.bad_images: set[str] = set()

    def __len__(self) -> int:
        return len(self.index)

    def decode(self, index: int) -> torch.Tensor:
        path = self.index.path(index)
        if self.canvas:
            return decode_whole(path, self.load_size, self.channels, self.canvas)
        return decode_image(path, self.load_size, self.channels)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Decode image `index`; in skip mode fall forward to the next readable image."""
        return first_readable(index, len(self.index), self.decode, self.on_bad_image, self.bad_images, self.root)

    def __getitems__(self, indices: list[int]) -> Batch:
        loaded = [self.load(i) for i in indices]
        idx = torch.tensor([i for _, i in loaded], dtype=torch.long)
        images = [img for img, _ in loaded]
        if not self.canvas:
            return Batch(torch.stack(images), self.labels[idx], idx, skipped=replaced(indices, loaded))
        canvases, sizes = pad_into(images, self.canvas)
        return Batch(canvases, self.labels[idx], idx, skipped=replaced(indices, loaded), sizes=sizes)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])
