"""Hard negative sampling: Robinson, Chuang, Sra, Jegelka, "Contrastive Learning with Hard Negative
Samples", ICLR 2021.

The debiased estimator (``pretrain.method.debiased``) with every negative importance-weighted by
how hard it is, exp(beta * l_i), the weights normalised to mean 1 over the negatives:

    w_i = exp(beta * l_i) / ((1/n) sum_j exp(beta * l_j)) = n * softmax(beta * l)_i
    g   = max( (sum_i w_i exp(l_i) - tau_plus * n * exp(l_pos)) / (1 - tau_plus),  n * exp(-1 / tau) )
    L   = -log( exp(l_pos) / (exp(l_pos) + g) ),   l = q . x / tau

beta = 0 makes every weight 1, which is the debiased loss; beta = 0 and tau_plus = 0 is InfoNCE
(the clamp cannot bind then: every exp(l_i) >= exp(-1/tau)). Choices the paper leaves to its code
(joshr17/HCL, image/main.py), kept here:

- tau enters the weights: they are exp(beta * cos / tau), beta times the scaled logit, not
  exp(beta * cos).
- The weights are not detached: the gradient flows through them, as in the code.
- The clamp at n * exp(-1/tau), as in the debiased loss.
- The negative set: in the authors' code the other 2B - 2 views of the batch; here the negatives
  the MoCo step built, the queue (and MoCHi's synthetic points when mixing is on); a negative the
  class oracle removed (-inf) gets weight 0 and is not counted in n. A query with none left
  (n = 0) has g = 0, so loss 0 and no gradient, as in InfoNCE and the debiased loss.
- Computed with the row's largest logit factored out (the weights as a softmax), so large 1/tau
  and beta do not overflow.

This module imports only the registry's types (torch where a loss is computed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .debiased import TAU_PLUS
from .losskind import LossKind, Param

if TYPE_CHECKING:
    import torch

BETA = Param("beta", 0.0, 0.0, short="b", help="hcl's concentration on hard negatives, >= 0 (0: the debiased loss)")


def hcl(logits: torch.Tensor, tau: float, tau_plus: float, beta: float) -> torch.Tensor:
    """Mean hard-negative (HCL) loss over the batch.

    logits: [B, 1 + M] already divided by ``tau`` (positive in column 0, -inf for removed
    negatives); tau_plus in [0, 1): the class prior; beta >= 0: the concentration on hard
    negatives. Returns a scalar.
    """
    import torch

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32, or fp64 as given
    l_pos, l_neg = logits[:, 0], logits[:, 1:]
    kept = torch.isfinite(l_neg)
    n = kept.sum(dim=1).to(logits.dtype)
    # mean 1 over the n negatives; a removed one stays at weight 0 (beta = 0 would make 0 * -inf).
    # A row with none kept softmaxes zeros instead of all -inf (NaN, in value and gradient): its
    # weights are 0 all the same, n being 0.
    some = kept.any(dim=1, keepdim=True)
    w = n[:, None] * torch.softmax(torch.where(kept, beta * l_neg, torch.where(some, float("-inf"), 0.0)), dim=1)
    m = logits.max(dim=1).values.detach()
    pos = torch.exp(l_pos - m)
    neg = (w * torch.exp(l_neg - m[:, None])).sum(dim=1)
    g = (neg - tau_plus * n * pos) / (1.0 - tau_plus)
    g = torch.maximum(g, n * torch.exp(-1.0 / tau - m))
    return torch.log1p(g / pos).mean()  # -log(pos / (pos + g)), precise when g << pos


KIND = LossKind(
    name="hcl", params=(TAU_PLUS, BETA),
    label=lambda loss: f"HCL (beta {loss.beta:.1f}, tau+ {loss.tau_plus:g})",
    slug=lambda loss: f"hcl-b{loss.beta:g}-tp{loss.tau_plus:g}",
    compute=lambda loss, logits, tau, synthetic: hcl(logits, tau, loss.tau_plus, loss.beta),
    reduces=lambda loss: ("debiased", {"tau_plus": loss.tau_plus}) if loss.beta == 0 else None,
)
