"""Fashion-MNIST as a multispectral set whose spectra say nothing about the class, written as real files.

Why it exists: SatMAE++'s tiny benchmark trained on images whose classes differ by spectrum alone
(`SyntheticMultispectral`), so any feature, even a random network's, separates them and the quality
table read 100% in every column. Here every image keeps its Fashion-MNIST shape and gets two spectra,
one for the garment and one for the background, drawn at random for that image and independently of its
class: only the shape tells the class. The bands still share one spatial pattern, so masked bands can
be predicted from visible ones (SatMAE++'s pretext task) once the image's own spectra are inferred.

    band b of a pixel = m * garment[b] + (1 - m) * background[b] + noise,   m = Fashion-MNIST grey / 255

A spectrum is a smooth curve over the bands (a base level plus a Gaussian bump at a random position).
The background gets a dark one (reflectance 0.02-0.2, like water or shade) and the garment that curve plus
a brighter one (0.15-0.6 above it in every band), both drawn per image and independently of its class, so
every class has the same expected spectrum (tests/test_multispectral.py checks it on the written files).
Why the garment is always the brighter: with garment and background drawn as an exchangeable pair (the
first design) the garment was brighter in some bands and darker in others, a per-image contrast sign a
16 px ViT-Tiny must learn away before shape counts: its random init scored 12.4% k-NN / 14.0% linear
(3,000 / 1,000 images), a supervised ViT barely trained in 60 steps (docs/quality-log.md), so the set
measured nothing. With the sign fixed the same random init scores 46.2% / 67.6% (the default set, 10,000
/ 10,000 images): the class is there for features to find, and the spectra still vary at random.

Values are stored as uint16 reflectance x 10000, the scale of Sentinel-2 L2A products, with the bands
first: (bands, 28, 28).

    OUT/npy/{train,test}/<k>_<class>/<index>.npy
    OUT/tif/{train,test}/<k>_<class>/<index>.tif    one-page multi-band GeoTIFF (tifffile; planar bands,
                                                    UTM 33N, 10 m pixels) as Sentinel-2 tools write them
    OUT/manifest.json                                the settings and the train split's per-band mean/std

Written once (into a temporary sibling folder, renamed when complete); writing again with the same
settings does nothing, with other settings it refuses. `python -m ssl_zoo.data.make_multispectral OUT`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ssl_zoo.data.fashion_mnist import FashionMNIST
from ssl_zoo.errors import DataError, SslZooError

CLASS_NAMES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle_boot")
FORMATS = ("npy", "tif")
REFLECTANCE_SCALE = 10000  # Sentinel-2 L2A: digital number = reflectance x 10000
NOISE = 0.005  # per pixel and band, in reflectance: a little sensor noise so no band is an exact mix
BACKGROUND = (0.02, 0.2)  # reflectance range of the background's spectrum
CONTRAST = (0.15, 0.6)  # range of the garment's reflectance above the background's, in every band
SPECTRA = "dark background, brighter garment"  # in the settings: a set of the first design is refused
PIXEL_M = 10.0  # GeoTIFF pixel size (Sentinel-2's 10 m bands)
UTM_33N = 32633  # EPSG code written as the GeoTIFF's projected CRS


def random_spectra(n: int, bands: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """(n, bands) smooth random curves in [low, high]: low + (high - low) (base + amp * exp(-(w - peak)^2 /
    (2 width^2))), base in [0, 0.4], amp in [0, 0.6]."""
    wavelength = np.linspace(0.0, 1.0, bands)
    base = rng.uniform(0.0, 0.4, (n, 1))
    amp = rng.uniform(0.0, 0.6, (n, 1))
    peak = rng.uniform(-0.2, 1.2, (n, 1))
    width = rng.uniform(0.15, 0.5, (n, 1))
    return low + (high - low) * (base + amp * np.exp(-((wavelength - peak) ** 2) / (2 * width**2)))


def spectrum_pairs(n: int, bands: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2, bands): garment and background spectra, the garment brighter than the background in every band."""
    background = random_spectra(n, bands, *BACKGROUND, rng)
    garment = background + random_spectra(n, bands, *CONTRAST, rng)
    return np.stack([garment, background], axis=1)


def compose(shapes: np.ndarray, spectra: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint16 (n, bands, H, W) from uint8 (n, H, W) shapes and (n, 2, bands) garment/background spectra."""
    m = shapes.astype(np.float32)[:, None] / 255.0
    garment, background = (spectra[:, i, :, None, None].astype(np.float32) for i in (0, 1))
    reflectance = m * garment + (1.0 - m) * background + rng.normal(0.0, NOISE, (*garment.shape[:2], *m.shape[2:]))
    return np.round(np.clip(reflectance, 0.0, 1.0) * REFLECTANCE_SCALE).astype(np.uint16)


def class_folder(label: int) -> str:
    return f"{label}_{CLASS_NAMES[label]}"


def write_geotiff(path: Path, image: np.ndarray, index: int) -> None:
    """One-page, band-planar GeoTIFF with its georeferencing tags (pixel scale, tie point, GeoKeys), so GDAL and
    rasterio see a projected multi-band raster; images are laid side by side on a grid of tiles."""
    import tifffile

    height, width = image.shape[1:]
    east = 300000.0 + (index % 100) * width * PIXEL_M
    north = 5000000.0 - (index // 100) * height * PIXEL_M
    geokeys = [1, 1, 0, 3,  # version 1.1.0, three keys:
               1024, 0, 1, 1,  # GTModelType = projected
               1025, 0, 1, 1,  # GTRasterType = PixelIsArea
               3072, 0, 1, UTM_33N]  # ProjectedCSType
    tifffile.imwrite(path, image, photometric="minisblack", planarconfig="separate", metadata=None,
                     extratags=[(33550, "d", 3, (PIXEL_M, PIXEL_M, 0.0), True),
                                (33922, "d", 6, (0.0, 0.0, 0.0, east, north, 0.0), True),
                                (34735, "H", len(geokeys), geokeys, True)])


def write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, formats: list[str]) -> None:
    """root/<format>/<split>/<k>_<class>/<index>.<format> for every image."""
    for fmt in formats:
        for label in np.unique(labels):
            (root / fmt / split / class_folder(int(label))).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        stem = f"{split}/{class_folder(int(label))}/{i:05d}"
        if "npy" in formats:
            np.save(root / "npy" / f"{stem}.npy", image)
        if "tif" in formats:
            write_geotiff(root / "tif" / f"{stem}.tif", image, i)


def band_moments(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-band mean and std over all pixels: the data.band_mean / data.band_std to pin in a config."""
    x = images.astype(np.float64)
    return x.mean((0, 2, 3)).round(2).tolist(), x.std((0, 2, 3)).round(2).tolist()


def write_fashion_multispectral(out: str | Path, bands: int = 6, train: int = 10000, test: int = 10000,
                                formats: tuple[str, ...] = FORMATS, seed: int = 0, fashion_path: str = "") -> dict:
    """Write the set under `out` (see the module docstring) and return its manifest; a no-op when `out` already
    holds a set written with the same settings, a DataError when it holds anything else."""
    out = Path(out)
    if bands < 1 or train < 1 or test < 1:
        raise DataError(f"bands, train and test must be >= 1 (got bands={bands}, train={train}, test={test})")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise DataError(f"formats must be some of {list(FORMATS)}, got {list(formats)}")
    settings = {"source": "fashion_mnist", "bands": bands, "train": train, "test": test,
                "formats": sorted(set(formats)), "seed": seed, "spectra": SPECTRA}
    manifest_file = out / "manifest.json"
    if out.exists():
        try:
            manifest = json.loads(manifest_file.read_text())
        except (OSError, ValueError):
            raise DataError(f"{out} exists and is not a set written by make_multispectral; "
                            "remove it or choose another folder") from None
        if manifest.get("settings") != settings:
            raise DataError(f"{out} holds a set written with {manifest.get('settings')}, not {settings}; "
                            "remove it or choose another folder")
        return manifest
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest: dict = {"settings": settings}
    try:
        for split, count in (("train", train), ("test", test)):
            source = FashionMNIST(fashion_path, split, channels=1, load_size=28)
            n = min(count, len(source))
            shapes, labels = source.images[:n, 0].numpy(), source.labels[:n].numpy()
            images = compose(shapes, spectrum_pairs(n, bands, rng), rng)
            write_split(tmp, split, images, labels, settings["formats"])
            if split == "train":
                manifest["band_mean"], manifest["band_std"] = band_moments(images)
            manifest[f"{split}_images"] = n
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)  # a set is either complete under `out` or absent, never half written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssl_zoo.data.make_multispectral",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to create (npy/, tif/, manifest.json)")
    parser.add_argument("--bands", type=int, default=6)
    parser.add_argument("--train", type=int, default=10000, help="first N Fashion-MNIST training images")
    parser.add_argument("--test", type=int, default=10000, help="first N test images (10000: all)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fashion-mnist", default="", help="folder of the idx.gz files (default: Debian's)")
    args = parser.parse_args(argv)
    try:
        manifest = write_fashion_multispectral(args.out, args.bands, args.train, args.test, tuple(args.formats),
                                               args.seed, args.fashion_mnist)
    except SslZooError as e:
        print(f"make_multispectral: error: {e}", file=sys.stderr)
        return 2
    fmt = manifest["settings"]["formats"][0]
    print(f"{args.out}: {manifest['train_images']} train and {manifest['test_images']} test images, "
          f"{manifest['settings']['bands']} bands, as {' and '.join(manifest['settings']['formats'])}")
    mean, std = (",".join(map(str, manifest[k])) for k in ("band_mean", "band_std"))  # one CLI token each
    print(f"config: data.kind=multispectral data.path={args.out / fmt / 'train'} "
          f"data.eval_path={args.out / fmt / 'test'} data.channels={manifest['settings']['bands']} "
          f"data.band_mean=[{mean}] data.band_std=[{std}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
