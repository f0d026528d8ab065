"""InfoNCE, MoCo's loss: the positive against every negative, as a (1 + M)-way classification.

    L = -log( exp(l_pos) / (exp(l_pos) + sum_i exp(l_i)) ),   l = q . x / tau

``logits``: [B, 1 + M] already divided by tau, the positive in column 0 and the negatives after it
(the queue, then any synthetic points); a negative removed by the class oracle is -inf and drops
out of the sum. It takes no parameter and reduces to nothing: it is the loss the others reduce to.
This module imports only the registry's types (torch where a loss is computed).

Example:
    >>> import torch
    >>> infonce(torch.tensor([[5.0, 1.0, -1.0]]))  # -log(e^5 / (e^5 + e^1 + e^-1))
    tensor(0.0206)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .losskind import LossKind

if TYPE_CHECKING:
    import torch


def infonce(logits: torch.Tensor) -> torch.Tensor:
    """Mean InfoNCE over the batch: cross-entropy with the label 0, in fp32 (fp64 if given).
    logits: [B, 1 + M] -> scalar."""
    import torch
    import torch.nn.functional as F

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


KIND = LossKind(
    name="infonce", params=(), label=lambda loss: "InfoNCE", slug=lambda loss: "infonce",
    compute=lambda loss, logits, tau, synthetic: infonce(logits),
)
