"""The MoCo module against MoCo v2's definition (facebookresearch/moco, builder.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from pretrain.method import mochi
from pretrain.method.loss import INFONCE, Loss
from pretrain.method.mixing import Mixing
from pretrain.method.moco import MoCo


def small(K=64, groups=2, seed=0):
    torch.manual_seed(seed)
    return MoCo("resnet18", dim=16, K=K, m=0.9, tau=0.2, shuffle_bn_groups=groups)


def images(b=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)


def reference_moco_v2(model, im_q, im_k, generator):
    """MoCo v2's forward written from the paper, on a copy of the model."""
    ref = copy.deepcopy(model)
    queue = ref.queue.clone()
    q = F.normalize(ref.encoder_q(im_q), dim=1)
    with torch.no_grad():
        for pq, pk in zip(ref.encoder_q.parameters(), ref.encoder_k.parameters()):
            pk.data = pk.data * ref.m + pq.data * (1.0 - ref.m)
        k = ref.keys(im_k, generator)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", q, queue)
    logits = torch.cat([l_pos, l_neg], dim=1) / ref.tau
    return logits, F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long)), k, ref


@pytest.mark.parametrize("N", [0, 16])
def test_no_mixing_equals_plain_moco_v2_exactly(N):
    model = small()
    im_q, im_k = images()
    want_logits, want_loss, k, ref = reference_moco_v2(model, im_q, im_k, torch.Generator().manual_seed(5))
    logits, stats = model(im_q, im_k, Mixing(N, 0, 0), generator=torch.Generator().manual_seed(5),
                          with_stats=True)
    loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    assert logits.shape == (8, 1 + 64)
    assert torch.equal(logits, want_logits)
    assert torch.equal(loss, want_loss)
    # Momentum update happened before the key forward, exactly once.
    for a, b in zip(model.encoder_k.parameters(), ref.encoder_k.parameters()):
        assert torch.equal(a, b)
    # The keys went into the queue at the pointer, FIFO.
    assert torch.equal(model.queue[:8], k)
    assert int(model.queue_ptr) == 8
    assert "syn_top1_share" not in stats


def test_mixing_appends_q_dot_h_over_tau_and_keeps_moco_columns():
    model = small()
    plain = copy.deepcopy(model)
    im_q, im_k = images()
    queue_before = model.queue.clone()
    logits, stats = model(im_q, im_k, Mixing(16, 6, 3), generator=torch.Generator().manual_seed(5),
                          with_stats=True)
    base, _ = plain(im_q, im_k, Mixing(), generator=torch.Generator().manual_seed(5))
    assert logits.shape == (8, 1 + 64 + 9)
    assert torch.equal(logits[:, :65], base)
    q = F.normalize(copy.deepcopy(plain).encoder_q(im_q), dim=1)  # encoder_q is untouched by a forward
    g = torch.Generator().manual_seed(5)
    torch.randperm(8, generator=g)  # the key shuffle draws first from the same generator
    h = mochi.synthesize(q, queue_before, Mixing(16, 6, 3), generator=g)
    assert torch.allclose(logits[:, 65:], torch.einsum("bd,bsd->bs", q, h) / 0.2, atol=1e-5)
    assert {"syn_s_cos", "syn_sprime_cos", "syn_top1_share", "acc_all", "acc_moco"} <= set(stats)


def test_gradient_reaches_query_encoder_through_synthetic_logits_only():
    model = small()
    im_q, im_k = images()
    logits, _ = model(im_q, im_k, Mixing(16, 8, 8))
    logits[:, 65:].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_queue_pointer_wraps_and_stays_normalised():
    model = small(K=16)
    for _ in range(3):
        im_q, im_k = images()
        model(im_q, im_k)
    assert int(model.queue_ptr) == (3 * 8) % 16
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(16), atol=1e-5)


def test_shuffle_bn_groups_change_key_statistics():
    """One device: keys of a batch split into G BN groups differ from a single full-batch BN."""
    model = small(groups=1)
    _, im_k = images(b=16)
    k1 = model.keys(im_k, torch.Generator().manual_seed(0))
    model.shuffle_bn_groups = 4
    k4 = model.keys(im_k, torch.Generator().manual_seed(0))
    assert k1.shape == k4.shape == (16, 16)
    assert not torch.allclose(k1, k4, atol=1e-4)
    # Eval-mode BN has no batch statistics: then the grouping makes no difference.
    model.eval()
    assert torch.allclose(model.keys(im_k, torch.Generator().manual_seed(0)), model.keys(im_k), atol=1e-5)


def test_class_oracle_removes_same_label_entries_from_logits_and_mixing():
    model = small(K=64)
    model.queue_labels.copy_(torch.arange(64) % 4)
    im_q, im_k = images()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    queue_before, qlab = model.queue.clone(), model.queue_labels.clone()
    plain = copy.deepcopy(model)
    logits, stats = model(im_q, im_k, Mixing(8, 4, 2), generator=torch.Generator().manual_seed(3), with_stats=True,
                          labels=labels, oracle=True)
    same = labels[:, None] == qlab[None, :]
    assert torch.isinf(logits[:, 1:65][same]).all() and torch.isfinite(logits[:, 1:65][~same]).all()
    # Mixing drew only from entries with another label: the same points as synthesize() on masked logits.
    q = F.normalize(copy.deepcopy(plain).encoder_q(im_q), dim=1)
    g = torch.Generator().manual_seed(3)
    torch.randperm(8, generator=g)
    masked = (q @ queue_before.T).masked_fill(same, float("-inf"))
    h = mochi.synthesize(q, queue_before, Mixing(8, 4, 2), generator=g, removed=same)
    assert torch.allclose(logits[:, 65:], torch.einsum("bd,bsd->bs", q, h) / 0.2, atol=1e-5)
    for b in range(8):
        assert (qlab[mochi.hardest(q[b : b + 1], queue_before, 8, masked[b : b + 1])] != labels[b]).all()
    # The loss stays finite, and the oracle statistic is measured on the unmasked queue.
    loss = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert torch.isfinite(loss)
    assert 0 < stats["false_neg_share"].item() <= 1
    # Keys and their labels were enqueued together.
    assert torch.equal(model.queue_labels[:8], labels)


@pytest.mark.parametrize("loss", [INFONCE, Loss("debiased", 0.1), Loss("hcl", 0.1, 1.0)])
def test_a_query_whose_class_fills_the_queue_mixes_nothing_and_adds_no_loss(loss):
    """The oracle removes every queue entry of a class-0 query: it has no negative to mix, so its
    synthetic logits are -inf like its queue logits, and it adds 0 to the batch's mean loss."""
    model = small(K=64)
    model.queue_labels.zero_()
    im_q, im_k = images()
    labels = torch.tensor([0, 1, 0, 2, 0, 3, 1, 2])
    logits, stats = model(im_q, im_k, Mixing(8, 4, 2), generator=torch.Generator().manual_seed(3), labels=labels,
                          oracle=True, with_stats=True)
    empty = labels == 0
    assert torch.isneginf(logits[empty, 1:]).all() and torch.isfinite(logits[~empty]).all()
    value = loss(logits, model.tau)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(loss(logits[~empty], model.tau).item() * 5 / 8, rel=1e-6)
    value.backward()
    grads = [p.grad for p in model.encoder_q.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(stats["syn_s_cos"]) and torch.isfinite(stats["syn_sprime_cos"])


def test_stats_are_skipped_when_not_asked():
    model = small()
    im_q, im_k = images()
    _, stats = model(im_q, im_k, Mixing(16, 4, 2), with_stats=False)
    assert stats == {}
    _, stats = model(im_q, im_k, Mixing(16, 4, 2))  # the default: training asks for them on logging steps only
    assert stats == {}


def test_top_n_statistics_use_one_analysis_N_whatever_the_mixing():
    """MoCo v2 and MoCHi runs of one preset measure "the N hardest" alike (``eval.analysis_N``, at
    most K): at their first step they are the same model, so their statistics must be equal."""
    from pretrain.method.moco import from_config
    from pretrain.run import config

    stats = {}
    small_demo = ["model.dim=16", "moco.K=64", "optim.batch_size=8"]
    mixings = {"mocov2": "mochi.N=0 mochi.s=0 mochi.s_prime=0", "mochi": "mochi.N=16 mochi.s=8 mochi.s_prime=4"}
    for name, mixing in mixings.items():
        cfg = config.load("demo", overrides=[*mixing.split(), *small_demo, "eval.analysis_N=48"])
        torch.manual_seed(0)
        model = from_config(cfg)
        assert model.analysis_N == 48
        im_q, im_k = images()
        labels = torch.arange(8) % 3
        model.queue_labels.fill_(1)
        _, stats[name] = model(im_q, im_k, cfg.objective.mixing, torch.Generator().manual_seed(0), labels=labels,
                               with_stats=True)
    for key in ("neg_topN_cos", "false_neg_share"):
        assert torch.equal(stats["mocov2"][key], stats["mochi"][key]), key
    # and it is clamped to the queue: a top-N over more entries than the queue holds is the whole queue
    assert from_config(config.load("demo", overrides=[*small_demo, "mochi.N=16"])).analysis_N == 64
