"""Images from a folder: class sub-folders (labelled) or a flat folder (unlabeled).

Decoding and resizing happen here, in the loader workers; everything random happens later on
the device. A corrupt image is skipped (replaced by the next readable one, counted, warned
once) or raises, per `data.on_bad_image`.
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


def decode_image(path: Path, load_size: int, channels: int) -> torch.Tensor:
    """(channels, load_size, load_size) uint8: 16-bit and float files scaled to 8 bits (`to_8bit`), short side
    resized to load_size, centre square cropped."""
    try:
        img = open_8bit(path, "L" if channels == 1 else "RGB")
        w, h = img.size
        scale = load_size / min(w, h)
        img = img.resize((max(load_size, round(w * scale)), max(load_size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - load_size) // 2, (h - load_size) // 2
        img = img.crop((left, top, left + load_size, top + load_size))
        arr = np.asarray(img, dtype=np.uint8)
    except READ_ERRORS as e:
        raise UnreadableImage(path, e) from e
    t = torch.from_numpy(arr.copy())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.expand(channels, -1, -1) if t.shape[0] == 1 and channels > 1 else t


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


def _scan(root: Path, extensions: set[str] = IMAGE_EXTENSIONS) -> tuple[list[Path], list[int], list[str]]:
    if not root.exists():
        raise DataError(f"data.path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data.path is not a folder: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    if classes:
        for label, name in enumerate(classes):
            for f in sorted((root / name).rglob("*")):
                if f.suffix.lower() in extensions and f.is_file():
                    files.append(f)
                    labels.append(label)
    else:
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in extensions and f.is_file())
        labels = [-1] * len(files)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(extensions))}) found under {root}")
    return files, labels, classes


class ImageFolder(torch.utils.data.Dataset):
    """Image files under `path` (class sub-folders: labelled; flat: unlabeled) -> uint8 batches.
    Subclasses for other file kinds change `extensions` and `decode`."""

    extensions: set[str] = IMAGE_EXTENSIONS

    def __init__(self, path: str, load_size: int, channels: int, on_bad_image: str = "skip") -> None:
        self.root = Path(path)
        self.files, labels, self.classes = _scan(self.root, self.extensions)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.num_classes = len(self.classes)
        self.load_size = load_size
        self.channels = channels
        self.on_bad_image = on_bad_image
        self.bad_images: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, index: int) -> torch.Tensor:
        return decode_image(self.files[index], self.load_size, self.channels)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Decode image `index`; in skip mode fall forward to the next readable image."""
        return first_readable(index, len(self.files), self.decode, self.on_bad_image, self.bad_images, self.root)

    def __getitems__(self, indices: list[int]) -> Batch:
        loaded = [self.load(i) for i in indices]
        idx = torch.tensor([i for _, i in loaded], dtype=torch.long)
        return Batch(torch.stack([img for img, _ in loaded]), self.labels[idx], idx,
                     skipped=replaced(indices, loaded))

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])
