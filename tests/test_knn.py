"""k-NN: the weighted vote, and the evaluation sharded over real gloo ranks (no mocks).

The distributed tests launch 2 ranks of this very file (`python tests/test_knn.py MODE ARGS`) with the
torchrun environment, as tests/test_ddp.py does, and compare what each rank wrote with one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ssl_zoo.data.synthetic import SyntheticImages
from ssl_zoo.eval.features import extract_features
from ssl_zoo.eval.knn import knn_accuracy, knn_eval, knn_predict
from ssl_zoo.launch.local_ranks import failures, run_ranks

WORLD = 2
ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# (train images, test images): halves, odd counts (the second rank's last row is padding), one query
SPLITS = {"even": (40, 20), "uneven": (37, 15), "one query": (5, 1)}


def test_weighted_vote_by_hand():
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    query = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05]]), dim=1)
    # k=2: neighbours 0 (label 0) and 1 (label 1); the closer one (index 0) wins with exp(sim/T) weights
    sims = query @ train.T
    assert sims[0, 0] > sims[0, 1]
    assert knn_predict(train, labels, query, k=2, temperature=0.07).item() == 0
    # k=3 with a huge temperature: plain majority -> label 1
    assert knn_predict(train, labels, query, k=3, temperature=1e6).item() == 1


def test_separable_clusters_are_perfect():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(5, 16), dim=1) * 5
    labels = torch.arange(5).repeat_interleave(40)
    feats = torch.nn.functional.normalize(centres[labels] + 0.1 * torch.randn(200, 16), dim=1)
    assert knn_accuracy(feats[::2], labels[::2], feats[1::2], labels[1::2]) == 100.0


def test_chunks_of_the_test_set_give_the_same_votes():
    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    test = torch.nn.functional.normalize(torch.randn(23, 8, generator=g), dim=1)
    labels = torch.arange(50) % 4
    whole = knn_predict(train, labels, test, k=5, chunk=23)
    assert torch.equal(knn_predict(train, labels, test, k=5, chunk=4), whole)
    assert torch.equal(knn_predict(train, labels, test, k=5), whole)  # chunk sized from the bank


class CountingEmbed:
    """A fixed random projection of the pixels (the same on every rank) that counts the images it embeds."""

    def __init__(self) -> None:
        self.proj = torch.randn(28 * 28, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.images = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images += len(images)
        return images.flatten(1).double() @ self.proj


def splits(n_train: int, n_test: int) -> tuple[SyntheticImages, SyntheticImages]:
    return SyntheticImages(n_train, 4, 28, 1, seed=0), SyntheticImages(n_test, 4, 28, 1, seed=1)


def launch(mode: str, args: dict) -> list[dict]:
    """Run WORLD ranks of this file in `mode`; each rank's JSON result, or a failure with every rank's output."""
    report = failures(run_ranks([__file__, mode, json.dumps(args)], WORLD, ROOT, timeout=300))
    if report:
        pytest.fail("k-NN ranks failed:\n" + report)
    return [json.loads((Path(args["out"]) / f"rank{r}.json").read_text()) for r in range(WORLD)]


# --------------------------------------------------------------------------- workers (in the ranks)


def _worker_knn(args: dict) -> dict:
    from ssl_zoo import distributed as dist_utils

    dist_utils.init_distributed("cpu")
    result = {"gathered": {n: dist_utils.gather_shards(dist_utils.shard_positions(n), n).tolist()
                           for n in (1, 5, 8)}}
    for name, (n_train, n_test) in SPLITS.items():
        embed = CountingEmbed()
        top1 = knn_eval(embed, *splits(n_train, n_test), CPU, k=5, batch_size=4, progress=False, num_workers=1)
        result[name] = {"top1": top1, "images": embed.images}
    return result


def _worker_train(args: dict) -> dict:
    from ssl_zoo.experiment import load_config
    from ssl_zoo.trainer import Trainer

    result = Trainer(load_config(args["config"]), progress_bar=False).fit()
    return {"knn_top1": result.knn_top1, "run_dir": str(result.run_dir)}


# --------------------------------------------------------------------------- tests


def test_two_ranks_share_the_extraction_and_agree_with_one_process(tmp_path):
    ranks = launch("knn", {"out": str(tmp_path)})
    for r in ranks:  # rows come back in item order, the padding dropped, whatever n is
        assert r["gathered"] == {str(n): list(range(n)) for n in (1, 5, 8)}
    for name, (n_train, n_test) in SPLITS.items():
        one = CountingEmbed()
        expected = knn_eval(one, *splits(n_train, n_test), CPU, k=5, batch_size=4, progress=False)
        assert one.images == n_train + n_test
        assert [r[name]["top1"] for r in ranks] == [expected] * WORLD, name
        # each rank embedded its half (rounded up: the odd image out is padding on the other rank)
        assert [r[name]["images"] for r in ranks] == [-(-n_train // WORLD) + -(-n_test // WORLD)] * WORLD, name
    assert ranks[0]["even"]["images"] == sum(SPLITS["even"]) // WORLD
    assert 0.0 < ranks[0]["even"]["top1"] < 100.0 and 0.0 < ranks[0]["uneven"]["top1"] < 100.0  # not trivial
    # the single-process path is the k-NN it replaced: all features on one device, then the vote
    train, test = splits(*SPLITS["uneven"])
    embed = CountingEmbed()
    before = knn_accuracy(*extract_features(embed, train, CPU, 4, progress=False),
                          *extract_features(embed, test, CPU, 4, progress=False), k=5)
    assert ranks[0]["uneven"]["top1"] == pytest.approx(before, abs=1e-4)


@pytest.mark.slow
def test_the_trainers_final_knn_under_ddp_is_the_knn_of_its_checkpoint(tmp_path):
    from conftest import tiny_config

    from ssl_zoo.eval.frozen import evaluate_knn

    raw = tiny_config("simclrv2", tmp_path, train={"max_steps": 2, "batch_size": 8, "threads": 1},
                      eval={"final_knn": True})
    raw["data"]["synthetic_size"] = 75  # 75 train images (odd: one rank pads) and 18 test images
    ranks = launch("train", {"config": raw, "out": str(tmp_path)})
    top1 = ranks[0]["knn_top1"]
    assert top1 is not None and [r["knn_top1"] for r in ranks] == [top1] * WORLD
    # the checkpoint is rank 0's state; evaluated in one process it gives the same top-1, so every rank
    # embedded its share with rank 0's weights and BatchNorm statistics
    assert evaluate_knn(ranks[0]["run_dir"], device="cpu") == pytest.approx(top1, abs=1e-9)


# --------------------------------------------------------------------------- entry point for the ranks

if __name__ == "__main__":
    from ssl_zoo import distributed as dist_utils

    torch.set_num_threads(1)
    mode, raw_args = sys.argv[1], json.loads(sys.argv[2])
    out = {"knn": _worker_knn, "train": _worker_train}[mode](raw_args)
    (Path(raw_args["out"]) / f"rank{dist_utils.rank()}.json").write_text(json.dumps(out))
    dist_utils.cleanup()


def class_sorted(dataset: SyntheticImages) -> SyntheticImages:
    """The set listed class by class, as image folders list their files."""
    order = dataset.labels.argsort(stable=True)
    dataset.images, dataset.labels = dataset.images[order], dataset.labels[order]
    return dataset


def test_limits_take_images_spread_over_a_class_sorted_split():
    """A limited k-NN bank or probe set holds every class, not the first classes of a folder."""
    from ssl_zoo.data.subset import spread_subset

    assert spread_subset(10, 0).tolist() == spread_subset(10, 25).tolist() == list(range(10))
    assert spread_subset(60000, 10000)[:3].tolist() == [0, 6, 12] and len(spread_subset(60000, 10000).unique()) == 10000
    train, test = class_sorted(SyntheticImages(80, 4, 28, 1, seed=0)), class_sorted(SyntheticImages(40, 4, 28, 1, seed=1))
    embed = lambda images: images.float().flatten(1)  # noqa: E731
    feats, labels = extract_features(embed, train, torch.device("cpu"), batch_size=16, limit=8, progress=False)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # the first 8 would all be class 0
    test_feats, test_labels = extract_features(embed, test, torch.device("cpu"), batch_size=16, limit=8, progress=False)
    expected = knn_accuracy(feats, labels, test_feats, test_labels, k=3, temperature=0.07)
    assert knn_eval(embed, train, test, torch.device("cpu"), k=3, batch_size=16, train_limit=8, test_limit=8,
                    progress=False) == pytest.approx(expected)
