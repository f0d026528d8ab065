"""Debiased contrastive loss: Chuang, Robinson, Yen-Chen, Torralba, Jegelka, "Debiased Contrastive
Learning", NeurIPS 2020.

Some of a query's negatives share its class (false negatives). With tau_plus the prior probability
of that, the sum over the n negatives in InfoNCE is replaced by an estimate of the sum over true
negatives only:

    g = max( (sum_i exp(l_i) - tau_plus * n * exp(l_pos)) / (1 - tau_plus),  n * exp(-1 / tau) )
    L = -log( exp(l_pos) / (exp(l_pos) + g) ),   l = q . x / tau

The paper writes the first term as n / (1 - tau_plus) * (mean_i exp(l_i) - tau_plus exp(l_pos)),
the same thing. Choices the paper leaves to its code (chingyaoc/DCL, main.py), kept here:

- The clamp at n * exp(-1/tau) is the smallest value the true sum can take for unit vectors
  (every cosine >= -1); the code calls it optional and applies it, so it is applied here.
- tau enters the estimator through the scaled logits only: exp(l) with l = cos / tau.
- The gradient flows through g (nothing is detached).
- The negative set: in the authors' SimCLR code, the other 2B - 2 views of the batch; here the
  negatives the MoCo step built, the queue (and MoCHi's synthetic points when mixing is on).
  A negative the class oracle removed (-inf) is left out of the sum and of n.
- Computed with the row's largest logit factored out of every exponential, so large 1/tau does
  not overflow; the value is that of the formula.

At tau_plus = 0 it is InfoNCE (the clamp cannot bind then: every exp(l_i) >= exp(-1/tau)).
This module imports only the registry's types (torch where a loss is computed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .losskind import LossKind, Param

if TYPE_CHECKING:
    import torch

TAU_PLUS = Param("tau_plus", 0.0, 0.0, 1.0, high_open=True, short="tp",
                 help="class prior of the debiased and hcl losses, in [0, 1)")


def debiased(logits: torch.Tensor, tau: float, tau_plus: float) -> torch.Tensor:
    """Mean debiased contrastive loss over the batch.

    logits: [B, 1 + M] already divided by ``tau`` (positive in column 0, -inf for removed
    negatives); tau_plus in [0, 1): the class prior. Returns a scalar.
    """
    import torch

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32, or fp64 as given
    l_pos, l_neg = logits[:, 0], logits[:, 1:]
    n = torch.isfinite(l_neg).sum(dim=1).to(logits.dtype)  # negatives each query really has
    m = logits.max(dim=1).values.detach()  # factored out of every exponential
    pos = torch.exp(l_pos - m)
    neg = torch.exp(l_neg - m[:, None]).sum(dim=1)
    g = (neg - tau_plus * n * pos) / (1.0 - tau_plus)
    g = torch.maximum(g, n * torch.exp(-1.0 / tau - m))
    return torch.log1p(g / pos).mean()  # -log(pos / (pos + g)), precise when g << pos


KIND = LossKind(
    name="debiased", params=(TAU_PLUS,),
    # the authors named: "DCL" also names Yeh et al.'s decoupled loss
    label=lambda loss: f"debiased (Chuang et al., tau+ {loss.tau_plus:g})",
    slug=lambda loss: f"debiased-tp{loss.tau_plus:g}",
    compute=lambda loss, logits, tau, synthetic: debiased(logits, tau, loss.tau_plus),
    reduces=lambda loss: ("infonce", {}) if loss.tau_plus == 0 else None,
)
