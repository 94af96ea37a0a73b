"""The Fashion-MNIST-derived multispectral set (ssl_zoo.data.make_multispectral): written as .npy and as
GeoTIFF, read back identically through data.kind=multispectral, spectra independent of the class (only the
shape tells it), and bad files or folders refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from ssl_zoo.config import DataConfig
from ssl_zoo.data import DataError, build_dataset
from ssl_zoo.data.make_multispectral import CLASS_NAMES, main, write_fashion_multispectral
from ssl_zoo.data.multispectral import SyntheticMultispectral, read_bands
from tests.conftest import FASHION_MNIST

pytestmark = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")

BANDS = 6


@pytest.fixture(scope="module")
def ms_set(tmp_path_factory):
    """1000 train / 600 test images in both formats (written once for the module)."""
    out = tmp_path_factory.mktemp("ms") / "fmnist_ms"
    manifest = write_fashion_multispectral(out, bands=BANDS, train=1000, test=600)
    return out, manifest


def data_cfg(folder, manifest, **extra) -> DataConfig:
    return DataConfig(kind="multispectral", path=str(folder), load_size=28, channels=BANDS,
                      band_mean=manifest["band_mean"], band_std=manifest["band_std"], **extra)


def raw_split(root, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, bands, 28, 28) float reflectances and labels of one split, read file by file from the .npy tree."""
    files = sorted((root / "npy" / split).rglob("*.npy"))
    labels = np.array([int(f.parent.name.split("_")[0]) for f in files])
    return np.stack([read_bands(f) for f in files]), labels


def nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(10)])
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((distances.argmin(1) == test_y).mean())


def spectral_shape(images: np.ndarray) -> np.ndarray:
    """Each image's mean spectrum over its pixels, divided by its mean over the bands (brightness removed)."""
    spectrum = images.reshape(*images.shape[:2], -1).mean(-1)
    return spectrum / spectrum.mean(1, keepdims=True)


def silhouette(images: np.ndarray) -> np.ndarray:
    """The shape alone: each pixel's spectral distance from the image's corner pixel (background), per image
    scaled to unit maximum, flattened. Independent of which spectra the image happened to get."""
    distance = np.linalg.norm(images - images[:, :, :1, :1], axis=1)
    return (distance / distance.max((1, 2), keepdims=True)).reshape(len(images), -1)


def test_layout_classes_and_geotiff_tags(ms_set):
    out, manifest = ms_set
    assert manifest["train_images"] == 1000 and manifest["test_images"] == 600
    for fmt in ("npy", "tif"):
        for split in ("train", "test"):
            assert sorted(p.name for p in (out / fmt / split).iterdir()) == [f"{k}_{n}" for k, n in
                                                                            enumerate(CLASS_NAMES)]
    assert len(list((out / "tif/train").rglob("*.tif"))) == 1000
    tif = next((out / "tif/test").rglob("*.tif"))
    with tifffile.TiffFile(tif) as f:
        assert f.is_geotiff and len(f.pages) == 1 and f.series[0].axes == "SYX"
        assert f.series[0].shape == (BANDS, 28, 28) and f.series[0].dtype == np.uint16
        geo = f.geotiff_metadata
        assert int(geo["ProjectedCSTypeGeoKey"]) == 32633 and geo["ModelPixelScale"][:2] == [10.0, 10.0]
    npy = out / "npy" / tif.relative_to(out / "tif").with_suffix(".npy")
    assert np.array_equal(tifffile.imread(tif), np.load(npy))
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_npy_and_geotiff_read_to_the_same_labelled_batches(ms_set):
    out, manifest = ms_set
    npy = build_dataset(data_cfg(out / "npy/train", manifest, eval_path=str(out / "npy/test")), "test")
    tif = build_dataset(data_cfg(out / "tif/train", manifest, eval_path=str(out / "tif/test")), "test")
    assert len(npy) == len(tif) == 600 and npy.num_classes == tif.num_classes == 10
    a, b = npy.__getitems__(list(range(0, 600, 7))), tif.__getitems__(list(range(0, 600, 7)))
    assert a.images.dtype == torch.uint8 and a.images.shape == (86, BANDS, 28, 28)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert set(a.labels.tolist()) == set(range(10))
    # the pinned train statistics map the images around mid-grey, not into the clipped ends
    assert 90 < a.images.float().mean() < 165 and (a.images == 255).float().mean() < 0.05


def test_spectra_carry_no_class_information_only_the_shape_does(ms_set):
    out, _ = ms_set
    train_x, train_y = raw_split(out, "train")
    test_x, test_y = raw_split(out, "test")
    # nearest centroid on each image's spectral shape: at chance (10%), the per-class mean spectra equal within noise
    spectral = nearest_centroid_accuracy(spectral_shape(train_x), train_y, spectral_shape(test_x), test_y)
    assert spectral < 0.16
    shapes = spectral_shape(train_x)
    spread = shapes.std(0) / np.sqrt(np.bincount(train_y).min())
    class_means = np.stack([shapes[train_y == c].mean(0) for c in range(10)])
    assert (np.abs(class_means - shapes.mean(0)) < 4 * spread).all()
    # the same classifier on the silhouettes: the class is there, in the shape
    assert nearest_centroid_accuracy(silhouette(train_x), train_y, silhouette(test_x), test_y) > 0.5
    # and on the old synthetic set, whose classes differ by spectrum alone, spectra give the class away
    synth_train = SyntheticMultispectral(400, 10, 16, BANDS, seed=0)
    synth_test = SyntheticMultispectral(200, 10, 16, BANDS, seed=1)
    synth = nearest_centroid_accuracy(spectral_shape(synth_train.images.double().numpy()), synth_train.labels.numpy(),
                                      spectral_shape(synth_test.images.double().numpy()), synth_test.labels.numpy())
    assert synth > 0.9


def test_writing_again_is_a_no_op_and_other_settings_are_refused(ms_set, tmp_path, capsys):
    out, manifest = ms_set
    before = (out / "tif/train").stat().st_mtime_ns
    assert main([str(out), "--train", "1000", "--test", "600"]) == 0
    printed = capsys.readouterr().out
    assert (out / "tif/train").stat().st_mtime_ns == before
    assert f"data.path={out / 'npy/train'} data.eval_path={out / 'npy/test'} data.channels=6" in printed
    assert f"data.band_mean=[{','.join(map(str, manifest['band_mean']))}]" in printed
    assert main([str(out), "--train", "999", "--test", "600"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"make_multispectral: error: {out} holds a set written with") and err.count("\n") == 1
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="is not a set written by make_multispectral"):
        write_fashion_multispectral(tmp_path / "other", train=10, test=10)


def test_garment_is_brighter_in_every_band_and_sets_of_the_first_design_are_refused(ms_set, tmp_path):
    from ssl_zoo.data.make_multispectral import spectrum_pairs

    garment, background = spectrum_pairs(5000, BANDS, np.random.default_rng(1)).transpose(1, 0, 2)
    assert ((garment - background) >= 0.15 - 1e-9).all() and (background <= 0.2 + 1e-9).all()
    out, manifest = ms_set
    old = tmp_path / "old"  # a set written before the spectra changed: its settings carry no "spectra"
    old.mkdir()
    settings = {k: v for k, v in manifest["settings"].items() if k != "spectra"}
    (old / "manifest.json").write_text(json.dumps({**manifest, "settings": settings}))
    with pytest.raises(DataError, match="holds a set written with"):
        write_fashion_multispectral(old, bands=BANDS, train=1000, test=600)


def test_missing_fashion_mnist_is_one_line_and_leaves_nothing_behind(tmp_path, capsys):
    assert main([str(tmp_path / "set"), "--fashion-mnist", str(tmp_path / "nowhere"), "--train", "5"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found at" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no half-written set, no partial folder


def test_corrupt_and_missing_files_are_one_line_data_errors(ms_set, tmp_path):
    out, manifest = ms_set
    folder = tmp_path / "copy"
    for k in (0, 1):  # a small labelled copy of two classes, then damaged
        (folder / f"{k}").mkdir(parents=True)
        for f in sorted((out / f"tif/train/{k}_{CLASS_NAMES[k]}").iterdir())[:3]:
            (folder / f"{k}" / f.name).write_bytes(f.read_bytes())
    truncated = sorted((folder / "0").iterdir())[1]
    truncated.write_bytes(truncated.read_bytes()[:150])
    gone = sorted((folder / "1").iterdir())[0]
    strict = build_dataset(data_cfg(folder, manifest, on_bad_image="error"))
    gone.unlink()  # deleted after the folder was indexed
    for index, path in ((1, truncated), (3, gone)):
        with pytest.raises(DataError) as e:
            strict.__getitems__([index])
        assert str(e.value).startswith(f"unreadable image {path}: ") and "\n" not in str(e.value)
    lenient = build_dataset(data_cfg(folder, manifest, on_bad_image="skip"))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        batch = lenient.__getitems__([0, 1, 2])
    assert batch.indices.tolist() == [0, 2, 2] and batch.skipped == 1
    for pinned in (True, False):  # with band statistics given, and estimated from the (missing) folder
        cfg = data_cfg(tmp_path / "no_such_folder", manifest) if pinned else DataConfig(
            kind="multispectral", path=str(tmp_path / "no_such_folder"), channels=BANDS)
        with pytest.raises(DataError, match=r"^data.path does not exist: .*no_such_folder \(`python -m "
                                            r"ssl_zoo.data.make_multispectral OUT` writes"):
            build_dataset(cfg)


def test_the_satmae_pp_fashion_mnist_config_trains_on_the_set(ms_set, tmp_path, one_thread):
    """The shipped config reads the written set (paths overridden to the test's copy) and its pinned band
    statistics are those of the default set's train split."""
    from ssl_zoo.experiment import load_config
    from ssl_zoo.data.fashion_mnist import FashionMNIST
    from ssl_zoo.data.make_multispectral import band_moments, compose, spectrum_pairs
    from ssl_zoo.trainer import Trainer
    from tests.conftest import ROOT

    out, _ = ms_set
    config = ROOT / "configs/satmae_pp/vit_tiny_fashion_mnist.yaml"
    cfg = load_config(config)
    rng = np.random.default_rng(0)  # write_fashion_multispectral's defaults: seed 0, 10,000 train images first
    shapes = FashionMNIST("", "train", 1, 28).images[:10000, 0].numpy()
    assert (cfg.data.band_mean, cfg.data.band_std) == band_moments(compose(shapes, spectrum_pairs(10000, 6, rng), rng))
    assert cfg.data.path == "data/fashion_mnist_multispectral/npy/train"
    cfg = load_config(config, [f"data.path={out / 'tif/train'}", f"data.eval_path={out / 'tif/test'}",
                               "train.max_steps=2", "train.batch_size=16", f"train.output_dir={tmp_path}",
                               "train.ckpt_every=1000"])
    result = Trainer(cfg, progress_bar=False).fit()
    assert result.status == "completed" and result.step == 2
