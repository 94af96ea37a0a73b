"""Multi-band (multispectral) images: `.npy` / `.npz` and GeoTIFF (tifffile, a dependency; rasterio if tifffile
is missing).

Layout: a folder of files (class sub-folders: labelled; flat: unlabeled), each one image with its
bands FIRST, (bands, H, W) as rasterio reads GeoTIFFs (a 2-D array is one band). In the workers
each file is: band-selected (`data.bands`), scaled per band with SatMAE's Sentinel normalisation
(mean - 2 std -> 0, mean + 2 std -> 255, clipped) and quantised to uint8 exactly as the official
SatMAE/SatMAE++ loaders do, then resized (short side, bilinear, antialiased) and centre-cropped to
`data.load_size`. So batches are uint8 like every other kind and the device side (augment, k-NN,
hub) needs nothing special. `band_mean`/`band_std` are per KEPT band; when empty they are
estimated from up to 256 evenly spaced files of the
training folder (`folder_band_statistics`; a warning prints them to pin).

`synthetic_multispectral`: labelled test images whose bands share a spatial pattern and differ by a
per-class spectral curve, so bands predict one another as in real reflectance data. Its classes differ by
spectrum alone (any feature separates them): to measure what a method learns, use the Fashion-MNIST-derived
set written by `ssl_zoo.data.make_multispectral`, whose spectra are independent of the class.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_zoo.data.batch import DataError
from ssl_zoo.data.file_index import FileIndex, folder_index
from ssl_zoo.data.image_folder import ImageFolder, UnreadableImage
from ssl_zoo.data.synthetic import SyntheticImages

MULTISPECTRAL_EXTENSIONS = {".npy", ".npz", ".tif", ".tiff"}
SENTINEL2_KEPT_BANDS = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12]  # of 13 (B1..B12 with B8A): B1, B9, B10 dropped


def _read_tiff(path: Path) -> np.ndarray:
    """(bands, H, W) through tifffile (samples axis moved first) or rasterio; clear error if neither."""
    try:
        import tifffile
    except ImportError:
        tifffile = None
    if tifffile is not None:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                arr, axes = series.asarray(), series.axes
        except tifffile.TiffFileError as e:  # a ValueError in recent tifffile, a bare Exception in older ones
            raise ValueError(f"not a readable TIFF: {e}") from e
        band_axis = next((axes.index(a) for a in "SC" if a in axes), None)
        return np.moveaxis(arr, band_axis, 0) if band_axis is not None else arr
    try:
        import rasterio
    except ImportError:
        raise DataError(f"{path}: reading GeoTIFF needs the package 'tifffile' or 'rasterio' (pip install tifffile), "
                        "or convert the files to .npy") from None
    with rasterio.open(path) as src:
        return src.read()


def read_bands(path: Path) -> np.ndarray:
    """All bands of one file as float32 (bands, H, W); UnreadableImage if missing, corrupt or not 2-/3-D."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if len(keys) != 1 and "image" not in keys:
                    raise ValueError(f"an .npz needs one array or one named 'image', found {keys}")
                arr = archive["image" if "image" in keys else keys[0]]
        else:
            arr = _read_tiff(path)
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or min(arr.shape[1:]) < 1:
            raise ValueError(f"expected (bands, H, W), got shape {arr.shape}")
        return arr.astype(np.float32)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UnreadableImage(path, e) from e


def select_bands(arr: np.ndarray, bands: list[int], path: Path) -> np.ndarray:
    """Keep `bands` (all when empty); a file with too few bands is unreadable (named)."""
    if not bands:
        return arr
    if max(bands) >= arr.shape[0]:
        raise UnreadableImage(path, ValueError(f"has {arr.shape[0]} bands, data.bands needs index {max(bands)}"))
    return arr[bands]


def to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """SatMAE's SentinelNormalize: (x - (mean - 2 std)) / (4 std) * 255, clipped, uint8; per band."""
    low = (mean - 2 * std)[:, None, None]
    return ((x - low) / (4 * std)[:, None, None] * 255.0).clamp(0, 255).to(torch.uint8)


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) float: short side to `size` (bilinear, antialiased), then the centre square."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x[None], size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                      antialias=True, align_corners=False)[0]
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[:, top:top + size, left:left + size]


def band_statistics(files: FileIndex, bands: list[int], limit: int = 256) -> tuple[list[float], list[float]]:
    """Per-band mean and std over the pixels of up to `limit` evenly spaced files (kept bands only)."""
    picked = [files.path(i) for i in range(0, len(files), max(1, math.ceil(len(files) / limit)))]
    total = total_sq = count = 0.0
    for path in picked:
        try:
            arr = select_bands(read_bands(path), bands, path).astype(np.float64)
        except UnreadableImage:  # the dataset reports (or refuses) it per data.on_bad_image
            continue
        total = total + arr.sum((1, 2))
        total_sq = total_sq + (arr**2).sum((1, 2))
        count += arr.shape[1] * arr.shape[2]
    if not count:
        raise DataError(f"no readable multispectral file among {len(picked)} sampled for band statistics")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def require_folder(path: str) -> None:
    """A missing folder is a DataError that says how to write a labelled multispectral set to try the zoo on."""
    if not Path(path).exists():
        raise DataError(f"data.path does not exist: {path} (`python -m ssl_zoo.data.make_multispectral OUT` writes "
                        "a labelled Fashion-MNIST-derived set: OUT/npy/train, OUT/npy/test)")


def folder_band_statistics(path: str, bands: list[int]) -> tuple[list[float], list[float]]:
    """`band_statistics` of the training folder (train and eval sets both normalise with these), warned
    about so the user can pin them in data.band_mean / data.band_std."""
    require_folder(path)
    mean, std = band_statistics(folder_index(path, MULTISPECTRAL_EXTENSIONS), bands)
    warnings.warn(f"data.band_mean/band_std not set; estimated from {path}: "
                  f"band_mean={[round(v, 4) for v in mean]} band_std={[round(v, 4) for v in std]}")
    return mean, std


class MultispectralFolder(ImageFolder):
    """Multi-band files under `path` -> uint8 (channels, load_size, load_size) batches."""

    extensions = MULTISPECTRAL_EXTENSIONS

    def __init__(self, path: str, load_size: int, channels: int, bands: list[int], band_mean: list[float],
                 band_std: list[float], on_bad_image: str = "skip") -> None:
        require_folder(path)
        super().__init__(path, load_size, channels, on_bad_image)
        self.bands = list(bands)
        if len(band_mean) != channels:
            raise DataError(f"{self.root}: the files have {len(band_mean)} bands (after data.bands) "
                            f"but data.channels={channels}")
        self.mean = torch.tensor(band_mean, dtype=torch.float32)
        self.std = torch.tensor(band_std, dtype=torch.float32)

    def decode(self, index: int) -> torch.Tensor:
        path = self.index.path(index)
        arr = select_bands(read_bands(path), self.bands, path)
        if arr.shape[0] != self.channels:
            raise UnreadableImage(path, ValueError(f"has {arr.shape[0]} bands, data.channels={self.channels}"))
        return to_uint8(resize_square(torch.from_numpy(arr), self.load_size), self.mean, self.std)


class SyntheticMultispectral(SyntheticImages):
    """SyntheticImages' per-class stripes as one shared spatial pattern, times a smooth per-class spectral
    curve over `channels` bands (plus a little per-band noise): uint8 (channels, load_size, load_size)."""

    def __init__(self, size: int, num_classes: int, load_size: int, channels: int, seed: int = 0) -> None:
        super().__init__(size, num_classes, load_size, 1, seed)
        g = torch.Generator().manual_seed(seed + 7)
        wavelength = torch.linspace(0, 1, channels)
        peak = self.labels.float()[:, None] / max(num_classes - 1, 1)
        curve = 0.35 + 0.65 * torch.exp(-((wavelength[None] - peak) ** 2) / 0.08)  # (size, channels)
        noise = torch.rand(size, channels, load_size, load_size, generator=g) * 0.1
        img = (self.images.float() / 255.0) * curve[:, :, None, None] * 0.9 + noise
        self.images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
