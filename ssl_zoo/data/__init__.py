"""Datasets (uint8 at a fixed load size) and the resumable loader."""

from __future__ import annotations

import dataclasses

import torch

from ssl_zoo.config import DataConfig
from ssl_zoo.data.batch import Batch, DataError, to_channels
from ssl_zoo.data.fashion_mnist import FashionMNIST
from ssl_zoo.data.image_folder import ImageFolder
from ssl_zoo.data.multispectral import (MultispectralFolder, SyntheticMultispectral,
                                          folder_band_statistics)
from ssl_zoo.data.pairs import ImagePairs
from ssl_zoo.data.sampler import ResumableSampler
from ssl_zoo.data.synthetic import SyntheticImages
from ssl_zoo.data.subset import SpreadSubset

__all__ = ["Batch", "DataError", "ResumableSampler", "build_dataset", "build_loader", "pretraining_set",
           "to_channels"]


def build_dataset(cfg: DataConfig, split: str = "train",
                  whole_images: bool = False) -> torch.utils.data.Dataset | None:
    """The dataset for `split` ('train' or 'test'); None when the kind has no such labelled split.

    Images are centre squares at data.load_size, as evaluation wants them. `whole_images` (the training
    loader): image folders keep each image's aspect ratio up to data.max_aspect, padded into square
    canvases with the valid sizes in `Batch.sizes`, so RandomResizedCrop samples the whole photo; the
    other kinds are square already or (pairs) cropped by their method."""
    if cfg.kind == "synthetic_pairs":  # single images; the method cuts the pairs on the device
        return build_dataset(dataclasses.replace(cfg, kind=cfg.pairs_source), split)
    if cfg.kind == "pairs":
        if split != "train":
            return None
        ds = ImagePairs(cfg.pairs_file, cfg.path, cfg.load_size, cfg.channels, cfg.on_bad_image)
    elif cfg.kind == "fashion_mnist":
        ds = FashionMNIST(cfg.path, split, cfg.channels, cfg.load_size)
    elif cfg.kind in ("synthetic", "synthetic_multispectral"):
        cls = SyntheticImages if cfg.kind == "synthetic" else SyntheticMultispectral
        ds = cls(cfg.synthetic_size if split == "train" else max(cfg.synthetic_size // 4, cfg.synthetic_classes),
                 cfg.synthetic_classes, cfg.load_size, cfg.channels, seed=0 if split == "train" else 1)
    elif cfg.kind == "image_folder":
        path = cfg.path if split == "train" else cfg.eval_path
        if not path:
            if split == "train":
                raise DataError("data.path is required for data.kind=image_folder")
            return None
        ds = ImageFolder(path, cfg.load_size, cfg.channels, cfg.on_bad_image, cfg.max_aspect if whole_images else 1.0)
    elif cfg.kind == "multispectral":
        path = cfg.path if split == "train" else cfg.eval_path
        if not path:
            if split == "train":
                raise DataError("data.path is required for data.kind=multispectral")
            return None
        mean, std = (cfg.band_mean, cfg.band_std) if cfg.band_mean else folder_band_statistics(cfg.path, cfg.bands)
        ds = MultispectralFolder(path, cfg.load_size, cfg.channels, cfg.bands, mean, std, cfg.on_bad_image)
    else:  # the config schema already restricts the kinds
        raise DataError(f"unknown data.kind {cfg.kind!r}")
    if split == "train" and cfg.limit:
        ds = SpreadSubset(ds, cfg.limit)  # spread over the split: folders list files class by class
    return ds


def pretraining_set(cfg: DataConfig, train_set: torch.utils.data.Dataset) -> torch.utils.data.Dataset:
    """The training loader's dataset: whole images for image folders (data.max_aspect > 1), else
    `train_set` itself (the centre-square split the evaluation uses), not built twice."""
    if cfg.kind == "image_folder" and cfg.max_aspect > 1:
        return build_dataset(cfg, "train", whole_images=True)
    return train_set


def _identity(batch: Batch) -> Batch:
    return batch


def build_loader(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int,
                 sampler: torch.utils.data.Sampler | None = None, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches come straight from `dataset.__getitems__`; a private generator keeps the global RNG untouched.
    Workers persist across epochs (no re-fork of the dataset and its index at every epoch)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=sampler is not None,
        num_workers=num_workers, collate_fn=_identity, pin_memory=pin_memory,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0),
    )
