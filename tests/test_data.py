import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.config import DataConfig
from ssl_zoo.data import DataError, ResumableSampler, build_dataset, pretraining_set
from ssl_zoo.experiment import load_config
from ssl_zoo.data.fashion_mnist import FashionMNIST
from ssl_zoo.trainer import Trainer
from tests.conftest import FASHION_MNIST, tiny_config


def test_fashion_mnist_splits_labels_and_channels():
    train = FashionMNIST(str(FASHION_MNIST), "train", channels=3)
    test = FashionMNIST(str(FASHION_MNIST), "test", channels=1)
    assert len(train) == 60000 and len(test) == 10000
    batch = train.__getitems__([0, 1, 2])
    assert batch.images.shape == (3, 3, 28, 28) and batch.images.dtype == torch.uint8
    assert torch.equal(batch.images[:, 0], batch.images[:, 2])  # gray replicated
    assert sorted(torch.unique(train.labels).tolist()) == list(range(10))
    assert test.__getitems__([5]).images.shape == (1, 1, 28, 28)


def test_missing_fashion_mnist_names_package_and_override(tmp_path):
    with pytest.raises(DataError, match=r"dataset-fashion-mnist.*data.path="):
        build_dataset(DataConfig(kind="fashion_mnist", path=str(tmp_path)), "train")


def test_truncated_idx_file_is_reported(tmp_path):
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 10)
    with pytest.raises(DataError, match="truncated"):
        FashionMNIST(str(tmp_path), "train")


def make_folder(root, classes=("cat", "dog"), per_class=3, size=20):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 6, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_labelled_and_flat(tmp_path):
    make_folder(tmp_path / "labelled")
    ds = build_dataset(DataConfig(kind="image_folder", path=str(tmp_path / "labelled"), load_size=16), "train")
    batch = ds.__getitems__(list(range(6)))
    assert batch.images.shape == (6, 3, 16, 16) and batch.labels.tolist() == [0, 0, 0, 1, 1, 1]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (30, 30)).save(flat / "a.jpg")
    ds = build_dataset(DataConfig(kind="image_folder", path=str(flat), load_size=16), "train")
    assert ds.__getitems__([0]).labels.tolist() == [-1]


def test_data_limit_spreads_over_a_class_sorted_folder(tmp_path):
    """data.limit takes images spread over the split: the first N of a folder are its first classes."""
    make_folder(tmp_path, classes=("a", "b", "c", "d"), per_class=5, size=8)
    full = build_dataset(DataConfig(kind="image_folder", path=str(tmp_path), load_size=8), "train")
    limited = build_dataset(DataConfig(kind="image_folder", path=str(tmp_path), load_size=8, limit=8), "train")
    assert len(limited) == 8 and limited.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    batch = limited.__getitems__([2, 7])
    assert torch.equal(batch.images, full.__getitems__([5, 17]).images) and batch.labels.tolist() == [1, 3]


def test_corrupt_image_skipped_with_warning_and_counted(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cat" / "1.png").write_bytes(b"not a png at all")
    ds = build_dataset(DataConfig(kind="image_folder", path=str(tmp_path), load_size=16), "train")
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*1.png"):
        batch = ds.__getitems__([0, 1, 2])
    assert batch.images.shape == (3, 3, 16, 16)
    assert batch.indices.tolist() == [0, 2, 2]  # the bad one was replaced by the next readable image
    assert len(ds.bad_images) == 1 and batch.skipped == 1
    strict = build_dataset(DataConfig(kind="image_folder", path=str(tmp_path), load_size=16,
                                      on_bad_image="error"), "train")
    with pytest.raises(DataError, match=r"unreadable image .*1.png.*on_bad_image=skip"):
        strict.__getitems__([1])


def test_skipped_images_are_counted_in_metrics_and_the_run_summary(tmp_path, capsys, one_thread):
    import json

    import yaml

    from ssl_zoo.cli import main as cli_main

    folder = tmp_path / "images"
    make_folder(folder)
    bad = [p for p in sorted(folder.rglob("*.png"))][::2]
    for path in bad:
        path.write_bytes(b"not a png at all")
    raw = tiny_config("simclrv2", tmp_path, train={"max_steps": 3, "batch_size": 4})
    raw["data"] = {"kind": "image_folder", "path": str(folder), "load_size": 28}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert cli_main(["train", str(config), "--no-progress"]) == 0
    records = [json.loads(line) for line in (tmp_path / "runs" / "simclrv2_test" / "metrics.jsonl").open()]
    counts = [r["skipped_images"] for r in records if "skipped_images" in r]
    assert counts == sorted(counts) and counts[-1] > 0  # cumulative, every log step
    assert f"skipped: {counts[-1]} unreadable images" in capsys.readouterr().out


def test_missing_path_and_empty_folder_fail_before_training(tmp_path):
    cfg = tiny_config("simclrv2", tmp_path)
    cfg["data"] = {"kind": "image_folder", "path": str(tmp_path / "nowhere")}
    with pytest.raises(DataError, match="does not exist"):
        Trainer(load_config(cfg))
    (tmp_path / "empty").mkdir()
    cfg["data"]["path"] = str(tmp_path / "empty")
    with pytest.raises(DataError, match="no images"):
        Trainer(load_config(cfg))
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_the_trainer_trains_on_whole_images_and_evaluates_centre_squares(tmp_path, one_thread):
    folder = tmp_path / "images"
    make_folder(folder, per_class=4)  # 20 x 26 photos
    cfg = tiny_config("dino", tmp_path, train={"batch_size": 4})
    cfg["data"] = {"kind": "image_folder", "path": str(folder), "load_size": 28}
    trainer = Trainer(load_config(cfg))
    batch = next(iter(trainer.loader))
    assert batch.images.shape[-2:] == (37, 37) and batch.sizes.tolist() == [[28, 36]] * 4  # canvas round(28 * 4/3)
    assert trainer.train_set.__getitems__([0]).images.shape[-2:] == (28, 28)  # the k-NN memory
    views = trainer.method.views(batch)
    assert len(views.crops) > 2 and all(b.min() >= 0 and b.max() <= 1 for b in views.boxes)


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    full = list(ResumableSampler(100, 10, seed=3))
    assert len(full) == 100 and sorted(full) == list(range(100))
    s = ResumableSampler(100, 10, seed=3)
    s.set_position(0, 4)
    assert list(s) == full[40:]
    s.set_position(1, 0)
    assert list(s) != full  # a new permutation per epoch
    r0, r1 = ResumableSampler(100, 10, 3, rank=0, world_size=2), ResumableSampler(100, 10, 3, rank=1, world_size=2)
    assert not set(r0) & set(r1) and len(list(r0)) == len(list(r1)) == 50
    with pytest.raises(ValueError, match="smaller than one global batch"):
        ResumableSampler(10, 8, 0, world_size=2)


def flat_folder(folder, channels=1, on_bad_image="skip"):
    """The image-folder dataset of 16 px images at load size 16 (decoded without resampling)."""
    return build_dataset(DataConfig(kind="image_folder", path=str(folder), load_size=16, channels=channels,
                                    on_bad_image=on_bad_image), "train")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_images_scale_by_257_not_clip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    pixels[0, :3] = [0, 32767, 65535]
    Image.fromarray(pixels).save(tmp_path / f"a{suffix}")
    assert Image.open(tmp_path / f"a{suffix}").mode == "I;16"  # really a 16-bit file
    expected = torch.from_numpy(np.rint(pixels / 257).astype(np.uint8))
    gray = flat_folder(tmp_path, channels=1).__getitems__([0])
    assert torch.equal(gray.images[0, 0], expected)
    assert gray.images[0, 0, 0, :3].tolist() == [0, 127, 255]
    rgb = flat_folder(tmp_path, channels=3).__getitems__([0])
    assert all(torch.equal(rgb.images[0, c], expected) for c in range(3))


def test_float_images_scale_from_unit_range_else_min_max(tmp_path):
    rng = np.random.default_rng(1)
    unit = rng.random((16, 16), dtype=np.float32)
    wide = (rng.random((16, 16), dtype=np.float32) * 300 - 100).astype(np.float32)  # about -100..200
    Image.fromarray(unit).save(tmp_path / "a_unit.tif")
    Image.fromarray(wide).save(tmp_path / "b_wide.tif")
    assert Image.open(tmp_path / "a_unit.tif").mode == "F"
    batch = flat_folder(tmp_path).__getitems__([0, 1])
    assert torch.equal(batch.images[0, 0], torch.from_numpy(np.rint(unit * 255).astype(np.uint8)))
    minmax = (wide - wide.min()) / (wide.max() - wide.min())
    assert torch.equal(batch.images[1, 0], torch.from_numpy(np.rint(minmax * 255).astype(np.uint8)))


def test_unconvertible_high_bit_images_follow_on_bad_image_with_the_reason(tmp_path):
    Image.fromarray(np.full((16, 16), 1000, dtype=np.uint16)).save(tmp_path / "a_good.png")
    nan = np.ones((16, 16), dtype=np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan).save(tmp_path / "b_nan.tif")
    Image.fromarray(np.full((16, 16), 70000, dtype=np.int32)).save(tmp_path / "c_int32.tif")
    with pytest.warns(UserWarning) as record:
        batch = flat_folder(tmp_path).__getitems__([1, 2])
    assert batch.indices.tolist() == [0, 0] and batch.images[0, 0, 0, 0] == 4  # round(1000 / 257)
    messages = [str(w.message) for w in record]
    assert any("b_nan.tif: float image with NaN or infinite pixels" in m for m in messages)
    assert any("c_int32.tif: 32-bit integer pixels span 70000..70000, outside 16 bits" in m for m in messages)
    strict = flat_folder(tmp_path, on_bad_image="error")
    with pytest.raises(DataError, match=r"^unreadable image .*b_nan.tif: float image with NaN or infinite pixels "
                                        r"\(set data.on_bad_image=skip to skip it\)$"):
        strict.__getitems__([1])


def test_decompression_bombs_are_skipped_or_refused_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1000 pixels, refuses above 2000
    Image.new("L", (20, 20), 7).save(tmp_path / "a_small.png")
    Image.new("L", (40, 40)).save(tmp_path / "b_warned.png")  # 1600 pixels
    Image.new("L", (50, 50)).save(tmp_path / "c_refused.png")  # 2500 pixels
    with pytest.warns(UserWarning) as record:
        batch = flat_folder(tmp_path).__getitems__([0, 1, 2])
    assert batch.indices.tolist() == [0, 0, 0] and int(batch.images[1, 0, 0, 0]) == 7
    messages = [str(w.message) for w in record if "skipping" in str(w.message)]
    assert len(messages) == 2
    assert "b_warned.png: Image size (1600 pixels) exceeds limit of 1000 pixels" in messages[0]
    assert "c_refused.png: Image size (2500 pixels) exceeds limit of 2000 pixels" in messages[1]
    strict = flat_folder(tmp_path, on_bad_image="error")
    for index, name in ((1, "b_warned.png"), (2, "c_refused.png")):
        with pytest.raises(DataError, match=rf"^unreadable image .*{name}: Image size .* exceeds limit"):
            strict.__getitems__([index])


def test_training_images_keep_their_aspect_ratio_inside_padded_canvases(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "a").mkdir()
    photos = {"wide": (30, 40), "tall": (40, 30), "panorama": (20, 60)}  # (height, width)
    for name, (h, w) in photos.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "a" / f"{name}.png")
    cfg = DataConfig(kind="image_folder", path=str(tmp_path), load_size=15, max_aspect=4 / 3)
    squares = build_dataset(cfg, "train")  # evaluation: centre squares, as before
    whole = build_dataset(cfg, "train", whole_images=True)
    order = [whole.index.path(i).stem for i in range(len(whole))]
    batch, centre = whole.__getitems__([0, 1, 2]), squares.__getitems__([0, 1, 2])
    assert centre.sizes is None and centre.images.shape == (3, 3, 15, 15)
    assert batch.images.shape == (3, 3, 20, 20)  # canvas side round(15 * 4/3)
    expected = {"wide": [15, 20], "tall": [20, 15], "panorama": [15, 20]}  # the panorama's long side capped
    assert batch.sizes.tolist() == [expected[name] for name in order]
    for i, (h, w) in enumerate(batch.sizes.tolist()):
        top, left = (20 - h) // 2, (20 - w) // 2
        valid = batch.images[i, :, top:top + h, left:left + w]
        s = min(h, w)  # the evaluation square is the centre of the whole image
        assert torch.equal(valid[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s], centre.images[i])
        # padding repeats the edge pixels: rows above / below copy the first / last valid row, columns likewise
        img = batch.images[i]
        assert (img[:, :top] == img[:, top:top + 1]).all() and (img[:, top + h:] == img[:, top + h - 1:top + h]).all()
        assert (img[..., :left] == img[..., left:left + 1]).all()
        assert (img[..., left + w:] == img[..., left + w - 1:left + w]).all()
    assert {h for h, w in batch.sizes.tolist()} == {15, 20}  # some padding was checked on each axis


def test_square_kinds_train_on_the_evaluation_set_itself():
    cfg = DataConfig(kind="synthetic", load_size=16, synthetic_size=8)
    train = build_dataset(cfg, "train")
    assert pretraining_set(cfg, train) is train and train.__getitems__([0, 1]).sizes is None
