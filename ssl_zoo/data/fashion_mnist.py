"""Fashion-MNIST from the idx.gz files of Debian's `dataset-fashion-mnist` package."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ssl_zoo.data.batch import Batch, DataError, to_channels

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MISSING_HINT = (
    "Fashion-MNIST not found at {path}. Install Debian's package with "
    "`apt-get install -y dataset-fashion-mnist` (as root), or point data.path= at a folder "
    "holding train-images-idx3-ubyte.gz and the other three idx.gz files."
)


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4:
        raise DataError(f"{path}: truncated idx file")
    _, dtype_code, ndim = raw[1], raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: expected unsigned-byte idx data, got type 0x{dtype_code:02x}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: expected {int(np.prod(dims))} values, found {data.size} (truncated?)")
    return data.reshape(dims)


class FashionMNIST(torch.utils.data.Dataset):
    """All images in memory as one uint8 tensor; batches are sliced, not collated per sample."""

    num_classes = 10

    def __init__(self, path: str, split: str, channels: int = 3, load_size: int = 28) -> None:
        root = Path(path or DEFAULT_PATH)
        if split not in _FILES:
            raise DataError(f"fashion_mnist has splits {list(_FILES)}, not {split!r}")
        img_file, lbl_file = (root / name for name in _FILES[split])
        if not img_file.is_file() or not lbl_file.is_file():
            raise DataError(MISSING_HINT.format(path=root))
        images = torch.from_numpy(_read_idx(img_file).copy()).unsqueeze(1)
        if load_size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images.float(), size=load_size, mode="bilinear",
                                                     antialias=True).round().clamp(0, 255).to(torch.uint8)
        self.images = images
        self.labels = torch.from_numpy(_read_idx(lbl_file).astype(np.int64))
        self.channels = channels
        if len(self.images) != len(self.labels):
            raise DataError(f"{root}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(to_channels(self.images[idx], self.channels), self.labels[idx], idx)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])
