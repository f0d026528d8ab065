"""MoCo v2 with MoCHi hard-negative mixing, following facebookresearch/moco's builder.py.

He et al. 2020 (MoCo), Chen et al. 2020 (MoCo v2), Kalantidis et al. 2020 (MoCHi).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import mochi
from .models import encoder


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' ``t`` stacked along dim 0 in rank order (no gradient)."""
    if not _dist_on():
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


class MoCo(nn.Module):
    """Query and momentum key encoders, a queue of keys, and the (K + 1 + s + s')-way logits.

    Args:
        arch, dim, mlp, small_stem: the encoder (see models.encoder).
        K: queue length. m: key momentum. tau: temperature.
        shuffle_bn_groups: on a single device, the key batch is split into this many groups that
            get separate BN statistics after a random shuffle (the one-device stand-in for Shuffle
            BN); capped so that every group holds at least 2 samples. Under DDP the real Shuffle
            BN is used and this is ignored.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        tau: float = 0.2,
        mlp: bool = True,
        small_stem: bool = False,
        shuffle_bn_groups: int = 8,
    ):
        super().__init__()
        self.K, self.m, self.tau = K, m, tau
        self.shuffle_bn_groups = shuffle_bn_groups
        self.encoder_q = encoder(arch, dim, mlp, small_stem)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        # One negative per row, fp32 whatever the autocast dtype: q.queue loses precision otherwise.
        self.register_buffer("queue", F.normalize(torch.randn(K, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k <- m k + (1 - m) q over parameters (BN buffers of the key encoder are its own)."""
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data = pk.data * self.m + pq.data * (1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries with this step's keys, gathered from every rank."""
        keys = concat_all_gather(keys.float())
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % n == 0, "K must be a multiple of the global batch"
        self.queue[ptr : ptr + n] = keys
        self.queue_ptr[0] = (ptr + n) % self.K

    @torch.no_grad()
    def keys(self, im_k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised key embeddings [B, dim] with Shuffle BN (real under DDP, emulated otherwise)."""
        if _dist_on():
            world, rank = dist.get_world_size(), dist.get_rank()
            x = concat_all_gather(im_k)
            perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
            dist.broadcast(perm, src=0)
            mine = perm.view(world, -1)[rank]
            k = self.encoder_k(x[mine])
            k_all = concat_all_gather(k)
            k = k_all[torch.argsort(perm).view(world, -1)[rank]]
        else:
            b = im_k.shape[0]
            groups = max(1, min(self.shuffle_bn_groups, b // 2))  # BN needs >= 2 samples a group
            perm = torch.randperm(b, device=im_k.device, generator=generator)
            shuffled = im_k[perm]
            k = torch.cat([self.encoder_k(c) for c in shuffled.tensor_split(groups)], dim=0)
            k = k[torch.argsort(perm)]
        return F.normalize(k.float(), dim=1)

    def forward(
        self,
        im_q: torch.Tensor,
        im_k: torch.Tensor,
        N: int = 0,
        s: int = 0,
        s_prime: int = 0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One MoCo(HI) step's logits; also updates the key encoder and the queue.

        Returns:
            logits: [B, 1 + K + s + s_prime] fp32, already divided by tau; the positive is column 0.
            stats: detached scalars (proxy-task accuracies and mixing statistics).
        """
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()  # before the key forward, as in MoCo
            k = self.keys(im_k, generator)

        with torch.autocast(q.device.type, enabled=False):
            l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # [B, 1]
            # A copy: the enqueue below edits the queue in place, and backward needs this one.
            queue = self.queue.clone()
            l_neg = torch.einsum("nc,kc->nk", q, queue)  # [B, K]
            cols = [l_pos, l_neg]
            n_syn = s + s_prime if N > 0 else 0
            if n_syn:
                h = mochi.synthesize(q, queue, N, s, s_prime, generator, l_neg=l_neg.detach())
                cols.append(mochi.synthetic_logits(q, h))
            logits = torch.cat(cols, dim=1) / self.tau

        stats = self._stats(logits.detach(), n_syn, s if n_syn else 0)
        self.enqueue(k)
        return logits, stats

    @torch.no_grad()
    def _stats(self, logits: torch.Tensor, n_syn: int, s: int) -> dict[str, torch.Tensor]:
        K, tau = self.K, self.tau
        st = {
            # MoCo's acc1: the (K + 1)-way proxy task over [positive, queue] only.
            "acc_moco": (logits[:, : 1 + K].argmax(dim=1) == 0).float().mean(),
            # The same task with the synthetic negatives as extra columns.
            "acc_all": (logits.argmax(dim=1) == 0).float().mean(),
            "pos_cos": logits[:, 0].mean() * tau,
            "neg_top1_cos": logits[:, 1 : 1 + K].max(dim=1).values.mean() * tau,
        }
        if n_syn:
            syn = logits[:, 1 + K :] * tau
            if s:
                st["syn_s_cos"] = syn[:, :s].mean()
            if n_syn > s:
                st["syn_sprime_cos"] = syn[:, s:].mean()
            # Share of queries whose hardest negative is synthetic.
            st["syn_top1_share"] = (logits[:, 1:].argmax(dim=1) >= K).float().mean()
        return st
