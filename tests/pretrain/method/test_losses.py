"""InfoNCE, the debiased loss and HCL against their definitions written as loops over queries and
negatives; their reductions (beta = 0 is debiased, tau_plus = 0 too is InfoNCE); autograd against
finite differences; the clamp; negatives removed by the class oracle."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.method.debiased import debiased
from pretrain.method.hcl import hcl
from pretrain.method.infonce import infonce
from pretrain.method.loss import INFONCE, Loss

TAU = 0.2


def logits_of(B=5, M=12, seed=0, dtype=torch.float32, removed=0):
    """Cosines of unit vectors over tau: the positive in column 0; ``removed`` negatives per row at -inf."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, 16, generator=g, dtype=torch.float64), dim=1)
    x = F.normalize(torch.randn(B, 1 + M, 16, generator=g, dtype=torch.float64), dim=2)
    x[:, 0] = F.normalize(q + 0.5 * x[:, 0], dim=1)  # positives somewhat aligned
    cos = torch.einsum("bd,bmd->bm", q, x)
    cos[:, 1:1 + removed] = float("-inf")
    return (cos / TAU).to(dtype)


def by_definition(logits, tau, tau_plus=0.0, beta=0.0):
    """The losses written out, one query and one negative at a time (plain Python floats)."""
    total = 0.0
    for row in logits.tolist():
        pos = math.exp(row[0])
        negs = [v for v in row[1:] if v != float("-inf")]
        n = len(negs)
        weights = [math.exp(beta * v) for v in negs]
        mean_w = sum(weights) / n
        weighted = sum(w / mean_w * math.exp(v) for w, v in zip(weights, negs))
        g = max((weighted - tau_plus * n * pos) / (1 - tau_plus), n * math.exp(-1 / tau))
        total += -math.log(pos / (pos + g))
    return total / len(logits)


@pytest.mark.parametrize("removed", [0, 3])
def test_infonce_is_the_cross_entropy_of_the_definition(removed):
    logits = logits_of(removed=removed)
    assert infonce(logits).item() == pytest.approx(by_definition(logits, TAU), rel=1e-5)


# fp64 shows the formula exactly; fp32 (what training computes in) within its rounding
PRECISION = [(torch.float64, 1e-10), (torch.float32, 1e-4)]


@pytest.mark.parametrize("tau_plus", [0.0, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("removed", [0, 4])
@pytest.mark.parametrize("dtype, rel", PRECISION)
def test_debiased_against_its_definition(tau_plus, removed, dtype, rel):
    logits = logits_of(removed=removed, dtype=dtype)
    assert debiased(logits, TAU, tau_plus).item() == pytest.approx(by_definition(logits, TAU, tau_plus), rel=rel)


@pytest.mark.parametrize("tau_plus, beta", [(0.0, 0.5), (0.1, 1.0), (0.1, 0.0), (0.05, 2.0)])
@pytest.mark.parametrize("removed", [0, 4])
@pytest.mark.parametrize("dtype, rel", PRECISION)
def test_hcl_against_its_definition(tau_plus, beta, removed, dtype, rel):
    logits = logits_of(removed=removed, dtype=dtype)
    assert hcl(logits, TAU, tau_plus, beta).item() == pytest.approx(
        by_definition(logits, TAU, tau_plus, beta), rel=rel)


def test_reductions():
    logits = logits_of(B=8, M=40, seed=3)
    for tau_plus in (0.0, 0.1, 0.2):  # beta = 0: every weight is 1, the debiased loss
        assert hcl(logits, TAU, tau_plus, 0.0).item() == pytest.approx(debiased(logits, TAU, tau_plus).item(), rel=1e-6)
    # and tau_plus = 0 too: InfoNCE (the clamp cannot bind for unit vectors)
    assert hcl(logits, TAU, 0.0, 0.0).item() == pytest.approx(infonce(logits).item(), rel=1e-6)
    assert debiased(logits, TAU, 0.0).item() == pytest.approx(infonce(logits).item(), rel=1e-6)


def test_hard_negatives_weigh_more_as_beta_grows():
    """Weights rising with the negatives' logits put more on the hard ones: the loss grows with beta."""
    logits = logits_of(B=6, M=30, seed=5)
    losses = [hcl(logits, TAU, 0.1, beta).item() for beta in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert losses == sorted(losses) and losses[-1] > losses[0] + 1e-3


def test_the_clamp_binds_where_the_estimate_would_fall_below_its_floor():
    # A positive far above every negative and a large class prior: the estimate of the negatives'
    # sum goes below n exp(-1/tau), the least the sum of n unit-vector similarities can be.
    logits = torch.tensor([[0.99, -0.9, -0.95, -0.8, -0.85]], dtype=torch.float64) / TAU
    tau_plus, n = 0.5, 4
    pos, negs = math.exp(0.99 / TAU), [math.exp(v) for v in logits[0, 1:].tolist()]
    assert (sum(negs) - tau_plus * n * pos) / (1 - tau_plus) < n * math.exp(-1 / TAU)
    want = -math.log(pos / (pos + n * math.exp(-1 / TAU)))
    for loss in (lambda x: debiased(x, TAU, tau_plus), lambda x: hcl(x, TAU, tau_plus, 1.0)):
        x = logits.clone().requires_grad_(True)
        value = loss(x)
        assert value.item() == pytest.approx(want, rel=1e-5)
        value.backward()
        assert torch.all(x.grad[0, 1:] == 0)  # clamped: the negatives no longer move the loss
        assert x.grad[0, 0] < 0


@pytest.mark.parametrize("loss", [
    lambda x: infonce(x), lambda x: debiased(x, TAU, 0.1), lambda x: hcl(x, TAU, 0.1, 1.0),
    lambda x: hcl(x, TAU, 0.0, 0.5),
])
def test_gradients_match_finite_differences(loss):
    x = logits_of(B=3, M=6, seed=7, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-5)


def test_removed_negatives_count_for_nothing():
    logits = logits_of(B=4, M=10, seed=9, removed=3)
    kept = torch.cat([logits[:, :1], logits[:, 4:]], dim=1)
    for loss in (infonce, lambda x: debiased(x, TAU, 0.1), lambda x: hcl(x, TAU, 0.1, 1.0)):
        assert loss(logits).item() == pytest.approx(loss(kept).item(), rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (("focal",), "method 'focal' is not one of infonce, debiased, hcl"),
    (("debiased", 1.0), r"tau_plus must be in \[0, 1\)"),
    (("hcl", -0.1, 1.0), r"tau_plus must be in \[0, 1\)"),
    (("hcl", 0.1, -1.0), "beta must be >= 0"),
    (("infonce", 0.1), "infonce takes neither"),
    (("debiased", 0.1, 1.0), "the debiased loss is hcl with beta = 0"),
    (("hcl", 0.1, math.nan), "beta must be a finite number"),
    (("debiased", math.nan), "tau_plus must be a finite number"),
    (("ring", 0.0, 0.0, math.inf), "ring_outer must be a finite number"),
])
def test_undefined_losses_are_refused_where_they_are_made(args, message):
    with pytest.raises(ValueError, match=message):
        Loss(*args)


def test_the_default_loss_is_moco_v2s_cross_entropy_bit_for_bit():
    logits = logits_of(B=8, M=64, seed=11)
    assert torch.equal(INFONCE(logits, TAU), F.cross_entropy(logits, torch.zeros(8, dtype=torch.long)))
    assert Loss("hcl", 0.1, 1.0)(logits, TAU) == hcl(logits, TAU, 0.1, 1.0)
    assert Loss("debiased", 0.1)(logits, TAU) == debiased(logits, TAU, 0.1)
    assert (INFONCE.label, Loss("debiased", 0.1).label, Loss("hcl", 0.1, 1.0).label) == \
        ("InfoNCE", "debiased (Chuang et al., tau+ 0.1)", "HCL (beta 1.0, tau+ 0.1)")


@pytest.mark.parametrize("loss", [
    lambda x: infonce(x), lambda x: debiased(x, TAU, 0.1), lambda x: hcl(x, TAU, 0.1, 1.0),
    lambda x: hcl(x, TAU, 0.0, 0.5), lambda x: hcl(x, TAU, 0.1, 0.0),
])
def test_a_row_the_oracle_emptied_adds_nothing_and_its_gradient_is_finite(loss):
    """A query with every negative removed (the class oracle, no mixing) has nothing to contrast:
    InfoNCE's (1 + 0)-way softmax gives it loss 0, and so do the estimators (g = 0 with n = 0). It
    still counts in the batch mean, as it does in MoCo's cross-entropy."""
    logits = logits_of(B=4, M=10, seed=13, dtype=torch.float64)
    logits[2, 1:] = float("-inf")
    others = logits[[0, 1, 3]]
    x = logits.clone().requires_grad_(True)
    value = loss(x)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(loss(others).item() * 3 / 4, rel=1e-12)
    value.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[2] == 0).all()
