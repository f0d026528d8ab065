"""kNN classification on a hand-built case."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.eval import knn


def test_knn_weighted_vote_by_hand():
    train_f = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    train_y = torch.tensor([0, 0, 1, 1])
    test_f = F.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    scores = knn.knn_predict(train_f, train_y, test_f, num_classes=2, k=3, T=0.07)
    assert scores.argmax(dim=1).tolist() == [0, 1]
    # Query 0's three neighbours: train 0, 1 (class 0) and 3 (class 1); weights exp(cos / T).
    sims = test_f[0] @ train_f.T
    want0 = (sims[0] / 0.07).exp() + (sims[1] / 0.07).exp()
    want1 = (sims[3] / 0.07).exp()
    assert scores[0, 0].item() == pytest.approx(want0.item(), rel=1e-5)
    assert scores[0, 1].item() == pytest.approx(want1.item(), rel=1e-5)
