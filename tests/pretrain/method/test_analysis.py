"""The paper's analyses on hand-built inputs whose answers are known."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.method import analysis


def test_hardness_means_of_top_k():
    l_neg = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.0, 0.2, 0.4, 0.8]])
    h = analysis.hardness(l_neg, (1, 2, 4))
    assert h["neg_top1_cos"].item() == pytest.approx((0.9 + 0.8) / 2)
    assert h["neg_top2_cos"].item() == pytest.approx(((0.9 + 0.5) / 2 + (0.8 + 0.4) / 2) / 2)
    assert h["neg_top4_cos"].item() == pytest.approx(l_neg.mean().item())


def test_synthetic_share_among_top_k():
    l_neg = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    l_syn = torch.tensor([[0.95, 0.0], [0.6, 0.7]])
    # query 0: top-2 = {syn 0.95, neg 0.9} -> 1/2; query 1: {syn 0.7, syn 0.6} -> 2/2
    assert analysis.synthetic_share_topk(l_neg, l_syn, 2).item() == pytest.approx(0.75)
    assert analysis.synthetic_share_topk(l_neg, l_syn, 1).item() == pytest.approx(1.0)


def test_false_negative_share_counts_same_label_among_hardest():
    l_neg = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.9, 0.8]])
    queue_labels = torch.tensor([3, 1, 3, 3])
    labels = torch.tensor([3, 1])
    # query 0 (label 3): hardest 3 = cols 0, 1, 3 -> labels 3, 1, 3 -> 2/3
    # query 1 (label 1): hardest 3 = cols 2, 3, 1 -> labels 3, 3, 1 -> 1/3
    assert analysis.false_negative_share(l_neg, labels, queue_labels, 3).item() == pytest.approx(0.5)
    mask = analysis.false_negative_mask(labels, torch.tensor([3, 1, -1, 3]))
    assert mask.tolist() == [[True, False, False, True], [False, True, False, False]]


def test_alignment_and_uniformity_known_values():
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    # identical pairs: perfect alignment
    assert analysis.alignment(x, x).item() == 0.0
    # opposite pairs: ||x - (-x)||^2 = 4
    assert analysis.alignment(x, -x).item() == pytest.approx(4.0)
    # two orthogonal unit vectors: one pair, squared distance 2 -> log exp(-4) = -4
    assert analysis.uniformity(x).item() == pytest.approx(-4.0)
    # collapsed features: uniformity 0 (the worst value)
    assert analysis.uniformity(torch.ones(5, 3) / math.sqrt(3)).item() == pytest.approx(0.0, abs=1e-6)
    # evenly spread points on the circle are more uniform than a clump
    ang = torch.linspace(0, 2 * math.pi, 65)[:-1]
    circle = torch.stack([ang.cos(), ang.sin()], dim=1)
    clump = F.normalize(torch.stack([torch.ones(64), 0.1 * ang.sin()], dim=1), dim=1)
    assert analysis.uniformity(circle) < analysis.uniformity(clump)
