import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.config import DataConfig, load_config
from ssl_zoo.data import DataError, ResumableSampler, build_dataset
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


def test_corrupt_image_skipped_with_warning_and_counted(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cat" / "1.png").write_bytes(b"not a png at all")
    ds = build_dataset(DataConfig(kind="image_folder", path=str(tmp_path), load_size=16), "train")
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*1.png"):
        batch = ds.__getitems__([0, 1, 2])
    assert batch.images.shape == (3, 3, 16, 16)
    assert batch.indices.tolist() == [0, 2, 2]  # the bad one was replaced by the next readable image
    assert len(ds.bad_images) == 1
    strict = build_dataset(DataConfig(kind="image_folder", path=str(tmp_path), load_size=16,
                                      on_bad_image="error"), "train")
    with pytest.raises(DataError, match=r"unreadable image .*1.png.*on_bad_image=skip"):
        strict.__getitems__([1])


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
