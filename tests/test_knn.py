import torch

from ssl_zoo.eval.knn import knn_accuracy, knn_predict


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
