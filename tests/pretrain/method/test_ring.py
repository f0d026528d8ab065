"""The Ring loss against its definition written as a loop over queries and ranked negatives; its
reduction to InfoNCE when the ring holds every negative; autograd against finite differences; the
class oracle and MoCHi's synthetic points; its place among the losses."""

import copy
import math

import pytest
import torch

from pretrain.method.infonce import infonce
from pretrain.method.loss import Loss
from pretrain.method.mixing import Mixing
from pretrain.method.moco import MoCo
from pretrain.method.objective import Objective
from pretrain.method.ring import ring, ring_mask

from .test_losses import TAU, logits_of


def by_definition(logits, ring_outer, ring_inner, synthetic=0):
    """Ring written out in plain Python: per query, rank its queue negatives (removed ones left out)
    from the most similar, keep ranks floor(ring_inner * n_out) .. n_out - 1 with
    n_out = floor(ring_outer * n), add the synthetic points untouched, and take InfoNCE."""
    total = 0.0
    for row in logits.tolist():
        K = len(row) - 1 - synthetic
        queue = [v for v in row[1:1 + K] if v != float("-inf")]
        ranked = sorted(queue, reverse=True)
        n_out = int(ring_outer * len(ranked))
        n_in = int(ring_inner * n_out)
        negs = ranked[n_in:n_out] + [v for v in row[1 + K:] if v != float("-inf")]
        pos = math.exp(row[0])
        total += -math.log(pos / (pos + sum(math.exp(v) for v in negs)))
    return total / len(logits)


@pytest.mark.parametrize("ring_outer, ring_inner", [(1.0, 0.0), (0.5, 0.0), (0.5, 0.25), (0.3, 0.5), (1.0, 0.1),
                                                    (0.1, 0.1), (0.05, 0.0)])
@pytest.mark.parametrize("removed", [0, 5])
@pytest.mark.parametrize("synthetic", [0, 3])
def test_ring_against_its_definition_in_float64(ring_outer, ring_inner, removed, synthetic):
    logits = logits_of(B=6, M=40, seed=3, dtype=torch.float64, removed=removed)
    assert ring(logits, ring_outer, ring_inner, synthetic).item() == pytest.approx(
        by_definition(logits, ring_outer, ring_inner, synthetic), rel=1e-12)


def test_the_ring_keeps_the_authors_ranks_out_of_a_queue():
    """The MoCo config's 0.1 / 0.1 on K = 1000: the top 100 without the top 10, ranks 10 .. 99."""
    l_neg = torch.arange(1000.0).flip(0)[None]  # rank r holds the value 999 - r
    mask = ring_mask(l_neg, 0.1, 0.1)
    assert mask.sum().item() == 90 and mask[0, 10:100].all() and not mask[0, :10].any()
    # int(0.7 * 10) is 7 in Python; 0.7 rounded to float32 times 10 would floor to 6
    assert ring_mask(torch.randn(1, 10), 0.7, 0.0).sum().item() == 7


@pytest.mark.parametrize("removed", [0, 4])
@pytest.mark.parametrize("synthetic", [0, 2])
def test_a_ring_holding_every_negative_is_infonce(removed, synthetic):
    logits = logits_of(B=5, M=30, seed=4, removed=removed)
    assert torch.equal(ring(logits, 1.0, 0.0, synthetic), infonce(logits))
    assert torch.equal(Loss("ring")(logits, TAU, synthetic), infonce(logits))


@pytest.mark.parametrize("ring_outer, ring_inner, synthetic", [(0.5, 0.2, 0), (1.0, 0.0, 0), (0.6, 0.3, 2)])
def test_gradients_match_finite_differences(ring_outer, ring_inner, synthetic):
    """The ring's choice is piecewise constant; between ties the loss is smooth in the logits."""
    x = logits_of(B=3, M=12, seed=7, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ring(t, ring_outer, ring_inner, synthetic), (x,), eps=1e-6, atol=1e-5)


def test_negatives_outside_the_ring_get_no_gradient_and_synthetic_points_always_do():
    x = logits_of(B=2, M=20, seed=8, dtype=torch.float64).requires_grad_(True)
    ring(x, 0.5, 0.2, synthetic=4).backward()
    inside = ring_mask(x[:, 1:17], 0.5, 0.2)
    assert inside.sum(dim=1).tolist() == [7, 7]  # n_out = 8 of 16, n_in = floor(1.6) = 1
    assert (x.grad[:, 1:17][~inside] == 0).all() and (x.grad[:, 1:17][inside] > 0).all()
    assert (x.grad[:, 17:] > 0).all() and (x.grad[:, 0] < 0).all()


def test_a_row_the_oracle_emptied_or_a_ring_too_thin_adds_nothing_and_its_gradient_is_finite():
    logits = logits_of(B=4, M=10, seed=13, dtype=torch.float64)
    logits[2, 1:] = float("-inf")
    x = logits.clone().requires_grad_(True)
    value = ring(x, 0.5, 0.2)
    assert value.item() == pytest.approx(ring(logits[[0, 1, 3]], 0.5, 0.2).item() * 3 / 4, rel=1e-12)
    value.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[2] == 0).all()
    assert ring(logits_of(B=2, M=5), 0.1, 0.0).item() == 0.0  # floor(0.1 * 5) = 0: no negative left


def test_with_the_class_oracle_the_ring_is_taken_within_the_true_negatives():
    """A removed entry is not a negative of its query: the fractions count the kept ones only, so
    removing the easiest negatives shrinks the ring (a count of K would keep the same ranks)."""
    logits = logits_of(B=1, M=20, seed=5, dtype=torch.float64)
    order = logits[0, 1:].argsort()  # easiest first
    masked = logits.clone()
    masked[0, 1 + order[:10]] = float("-inf")
    assert ring_mask(logits[:, 1:], 0.5, 0.0).sum().item() == 10
    assert ring_mask(masked[:, 1:], 0.5, 0.0).sum().item() == 5


def test_ring_composes_with_mochi_and_the_oracle_in_the_moco_step():
    """Through the real MoCo step: the ring keeps ranks of the queue columns only; every synthetic
    column reaches the loss whatever the ring; removed (-inf) entries stay out."""
    torch.manual_seed(0)
    model = MoCo("resnet18", dim=16, K=64, m=0.9, tau=0.2, shuffle_bn_groups=2)
    g = torch.Generator().manual_seed(1)
    im_q, im_k = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    model.queue_labels.copy_(torch.arange(64) % 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixing = Mixing(8, 4, 2)
    logits, _ = model(im_q, im_k, mixing, torch.Generator().manual_seed(2), labels=labels, oracle=True)
    loss = Loss("ring", ring_outer=0.5, ring_inner=0.25)
    value = loss(logits, model.tau, mixing.synthetic)
    assert value.item() == pytest.approx(by_definition(logits.detach().double(), 0.5, 0.25, mixing.synthetic), rel=1e-5)
    assert value.item() != pytest.approx(loss(logits, model.tau).item(), rel=1e-3)  # the points are not ranked
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.encoder_q.parameters() if p.grad is not None)


@pytest.mark.parametrize("args, message", [
    (("ring", 0.0, 0.0, 0.0), r"ring_outer must be in \(0, 1\]"),
    (("ring", 0.0, 0.0, 1.5), r"ring_outer must be in \(0, 1\]"),
    (("ring", 0.0, 0.0, 0.1, 1.0), r"ring_inner must be in \[0, 1\)"),
    (("ring", 0.1), "ring takes neither"),
    (("hcl", 0.1, 1.0, 0.1, 0.1), "ring_outer and ring_inner belong to the ring loss; hcl takes neither"),
    (("infonce", 0.0, 0.0, 1.0, 0.1), "infonce takes neither"),
])
def test_undefined_rings_are_refused_where_they_are_made(args, message):
    with pytest.raises(ValueError, match=message):
        Loss(*args)


def test_ring_is_named_in_words_and_composes_in_the_objective():
    ring_loss = Loss("ring", ring_outer=0.1, ring_inner=0.1)
    assert (ring_loss.label, ring_loss.slug) == ("Ring (outer 0.1, inner 0.1)", "ring-o0.1-i0.1")
    o = Objective(ring_loss, Mixing(1024, 1024, 128))
    assert not o.is_plain_moco and not Objective(Loss("ring", ring_outer=0.5)).is_plain_moco
    assert Objective(Loss("ring")).is_plain_moco  # a ring holding every negative is InfoNCE
    assert (o.method, o.label, o.slug) == ("ring+mochi", "Ring (outer 0.1, inner 0.1) + MoCHi (1024, 1024, 128)",
                                           "ring-o0.1-i0.1_mochi-N1024-s1024-sp128")
    assert Objective(ring_loss).method == "ring"


def test_the_training_step_tells_the_loss_how_many_columns_are_synthetic():
    from pretrain.train import step

    torch.manual_seed(0)
    model = MoCo("resnet18", dim=16, K=64, m=0.9, tau=0.2, shuffle_bn_groups=2)
    g = torch.Generator().manual_seed(1)
    im_q, im_k = torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    mixing = Mixing(8, 4, 2)
    with torch.no_grad():  # the same step's logits, on a copy
        logits, _ = copy.deepcopy(model)(im_q, im_k, mixing, torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    value, _ = step(model, opt, im_q, im_k, mixing, torch.Generator().manual_seed(2),
                    loss=Loss("ring", ring_outer=0.5, ring_inner=0.25))
    assert value.item() == pytest.approx(ring(logits, 0.5, 0.25, mixing.synthetic).item(), rel=1e-5)
    assert value.item() != pytest.approx(ring(logits, 0.5, 0.25).item(), rel=1e-3)


@pytest.mark.parametrize("ring_outer, ring_inner, K", [(0.1, 0.1, 512), (0.7, 0.0, 10), (0.5, 0.2, 16), (0.001, 0.0, 512),
                                                        (0.3, 0.9, 10), (1.0, 0.0, 7)])
def test_the_ring_size_a_config_is_checked_with_is_the_masks_size(ring_outer, ring_inner, K):
    """``Loss.ring_size`` (what a config is refused on: an empty ring) counts what ``ring_mask`` keeps."""
    kept = ring_mask(torch.randn(3, K), ring_outer, ring_inner).sum(dim=1)
    assert kept.tolist() == [Loss("ring", ring_outer=ring_outer, ring_inner=ring_inner).ring_size(K)] * 3
