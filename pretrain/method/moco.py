"""MoCo v2 with MoCHi hard-negative mixing, following facebookresearch/moco's builder.py.

He et al. 2020 (MoCo), Chen et al. 2020 (MoCo v2), Kalantidis et al. 2020 (MoCHi).
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import analysis, mochi
from .encoders import encoder
from .mixing import PLAIN, Mixing
from .synthetic import registry as synthetic


_LOCAL = [False]  # set by ``local_only``


def _dist_on() -> bool:
    return not _LOCAL[0] and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local_only():
    """Inside it, a model on one rank of a process group runs as on a single device: no all-gather of
    keys, emulated Shuffle BN (the preflight's rank-local comparisons of one device with the CPU)."""
    _LOCAL[0], old = True, _LOCAL[0]
    try:
        yield
    finally:
        _LOCAL[0] = old


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' ``t`` stacked along dim 0 in rank order (no gradient)."""
    if not _dist_on():
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def from_config(cfg) -> "MoCo":
    """The MoCo model a pretraining config (``pretrain.run.config.Config``) describes."""
    return MoCo(
        cfg.model.arch, cfg.model.dim, cfg.moco.K, cfg.moco.m, cfg.moco.tau, cfg.model.mlp, cfg.model.small_stem,
        cfg.moco.shuffle_bn_groups, analysis_N=cfg.eval.analysis_N,
    )


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
        analysis_N: int = 1024,
    ):
        super().__init__()
        self.K, self.m, self.tau = K, m, tau
        # "top-N" of the hardness and class-oracle statistics: the same for every run whatever its
        # mixing, so that two runs of one grid are measured alike (not the run's own MoCHi N).
        self.analysis_N = min(analysis_N, K)
        self.shuffle_bn_groups = shuffle_bn_groups
        self.encoder_q = encoder(arch, dim, mlp, small_stem)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        # One negative per row, fp32 whatever the autocast dtype: q.queue loses precision otherwise.
        self.register_buffer("queue", F.normalize(torch.randn(K, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        # Labels of the queued keys, for the class-oracle analysis only (-1: unknown).
        self.register_buffer("queue_labels", torch.full((K,), -1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k <- m k + (1 - m) q over parameters (BN buffers of the key encoder are its own)."""
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.data = pk.data * self.m + pq.data * (1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Replace the oldest entries with this step's keys (and labels), gathered from every rank."""
        keys = concat_all_gather(keys.float())
        if labels is None:
            labels = torch.full((len(keys),), -1, dtype=torch.long, device=keys.device)
        else:
            labels = concat_all_gather(labels.long())
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % n == 0, "K must be a multiple of the global batch"
        self.queue[ptr : ptr + n] = keys
        self.queue_labels[ptr : ptr + n] = labels
        self.queue_ptr[0] = (ptr + n) % self.K

    @torch.no_grad()
    def keys(self, im_k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised key embeddings [B, dim] with Shuffle BN (real under DDP, emulated otherwise)."""
        if _dist_on():
            world, rank = dist.get_world_size(), dist.get_rank()
            x = concat_all_gather(im_k)
            perm = mochi.draw(torch.randperm, x.shape[0], device=x.device, generator=generator)
            dist.broadcast(perm, src=0)
            mine = perm.view(world, -1)[rank]
            k = self.encoder_k(x[mine])
            k_all = concat_all_gather(k)
            k = k_all[torch.argsort(perm).view(world, -1)[rank]]
        else:
            b = im_k.shape[0]
            groups = max(1, min(self.shuffle_bn_groups, b // 2))  # BN needs >= 2 samples a group
            perm = mochi.draw(torch.randperm, b, device=im_k.device, generator=generator)
            shuffled = im_k[perm]
            k = torch.cat([self.encoder_k(c) for c in shuffled.tensor_split(groups)], dim=0)
            k = k[torch.argsort(perm)]
        return F.normalize(k.float(), dim=1)

    def forward(
        self,
        im_q: torch.Tensor,
        im_k: torch.Tensor,
        mixing: Mixing = PLAIN,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        oracle: bool = False,
        with_stats: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One MoCo(HI) step's logits; also updates the key encoder and the queue.

        Args:
            im_q, im_k: [B, 3, H, W] the two views.
            mixing: MoCHi's (N, s, s') and the family's other counts; plain MoCo v2 by default.
            labels: [B] class labels, used only by the analyses (enqueued beside the keys).
            oracle: the paper's class oracle: queue entries with the query's label are removed
                from its logits (set to -inf) and from its hard-negative set. Needs labels.
            with_stats: compute the statistics (a few top-k's); training asks on logging steps.

        Returns:
            logits: [B, 1 + K + S] fp32 (S = mixing.synthetic), already divided by tau; the positive
                is column 0.
            stats: detached 0-dim tensors (proxy-task accuracies, hardness, mixing, oracle).
        """
        if oracle and labels is None:
            raise ValueError("the class oracle needs labels")
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()  # before the key forward, as in MoCo
            k = self.keys(im_k, generator)

        with torch.autocast(q.device.type, enabled=False):
            l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # [B, 1]
            # A copy: the enqueue below edits the queue in place, and backward needs this one.
            queue = self.queue.clone()
            l_neg_all = torch.einsum("nc,kc->nk", q, queue)  # [B, K]
            l_neg, removed = l_neg_all, None
            if oracle:
                removed = analysis.false_negative_mask(labels, self.queue_labels)
                l_neg = l_neg.masked_fill(removed, float("-inf"))
            cols = [l_pos, l_neg]
            l_syn = None
            if mixing.active:
                l_syn = mochi.synthetic_logits(q, queue, mixing, generator, l_neg=l_neg_all, removed=removed)
                cols.append(l_syn)
            logits = torch.cat(cols, dim=1) / self.tau

        stats = {}
        if with_stats:
            stats = self._stats(l_pos.detach(), l_neg.detach(), l_neg_all.detach(),
                                None if l_syn is None else l_syn.detach(), mixing, labels)
        self.enqueue(k, labels)
        return logits, stats

    @torch.no_grad()
    def _stats(self, l_pos, l_neg, l_neg_all, l_syn, mixing, labels) -> dict[str, torch.Tensor]:
        """All cosines (not divided by tau). l_neg is what the loss saw (oracle-masked), l_neg_all not."""
        moco_task = torch.cat([l_pos, l_neg], dim=1)
        st = {
            # MoCo's acc1: the (K + 1)-way proxy task over [positive, queue] only.
            "acc_moco": (moco_task.argmax(dim=1) == 0).float().mean(),
            "pos_cos": l_pos.mean(),
        }
        hard = analysis.hardness(l_neg_all, (1, 10, self.analysis_N))
        st.update(neg_top1_cos=hard["neg_top1_cos"], neg_top10_cos=hard["neg_top10_cos"],
                  neg_topN_cos=hard[f"neg_top{self.analysis_N}_cos"])
        # The hardest negative the loss sees: the queue's (oracle-masked) and the synthetic points.
        seen = l_neg if l_syn is None else torch.cat([l_neg, l_syn], dim=1)
        st["neg_top1_cos_all"] = seen.max(dim=1).values.mean()
        if l_syn is None:
            st["acc_all"] = st["acc_moco"]
        else:
            # The same task with the synthetic negatives as extra columns.
            st["acc_all"] = (torch.cat([moco_task, l_syn], dim=1).argmax(dim=1) == 0).float().mean()
            # Each kind's mean cosine over the points made (under the oracle a query with too few
            # kept entries has -inf ones), beside the mean over the run's own hard sets: a kind
            # whose points are easier than their sources shows below it.
            start = 0
            for name, n in mixing.counts.items():
                if n:
                    cols = l_syn[:, start:start + n]
                    st[f"syn_{synthetic.KINDS[name].stat}_cos"] = cols[torch.isfinite(cols)].mean()
                    start += n
            st["hard_cos"] = l_neg.topk(mixing.N, dim=1).values.nan_to_num(neginf=float("nan")).nanmean()
            st["syn_top1_share"] = analysis.synthetic_share_topk(l_neg, l_syn, 1)
            st["syn_top10_share"] = analysis.synthetic_share_topk(l_neg, l_syn, 10)
        if labels is not None and bool((self.queue_labels >= 0).all()):
            st["false_neg_share"] = analysis.false_negative_share(l_neg_all, labels, self.queue_labels, self.analysis_N)
        return st
