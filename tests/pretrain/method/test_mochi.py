"""synthesize() against its definition, on inputs where every synthetic point can be decoded."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.method import mochi
from pretrain.method.mixing import Mixing


def orthonormal_setup(B=6, K=24, N=4, extra=3, seed=0):
    """Queue = K orthonormal rows in D = K + extra dims; each query has its own known top-N.

    Query b is most similar to queue rows hard[b] (disjoint between queries), and has a component
    outside span(queue) so the query's share in h' can be read off.
    """
    g = torch.Generator().manual_seed(seed)
    D = K + extra
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    queue = basis[:K].contiguous()
    outside = basis[K]
    perm = torch.randperm(K, generator=g)
    hard = perm[: B * N].view(B, N)  # disjoint hard sets
    q = torch.zeros(B, D)
    for b in range(B):
        weights = torch.linspace(1.0, 0.6, N)
        q[b] = weights @ queue[hard[b]] + 0.05 * torch.rand(K, generator=g) @ queue + 0.7 * outside
    return F.normalize(q, dim=1), queue, hard, outside


def decode_pair(h, queue):
    """For h = normalize(a n_i + (1 - a) n_j) with orthonormal n: (i, j, a)."""
    coef = h @ queue.T
    top = coef.abs().topk(2).indices
    i, j = top[0].item(), top[1].item()
    rest = coef.clone()
    rest[[i, j]] = 0
    assert rest.abs().max() < 1e-5, "a mixed pair lies in the span of two queue rows"
    a = coef[i] / (coef[i] + coef[j])
    return i, j, a.item()


def test_shapes_norms_detached_and_queue_untouched():
    q, queue, _, _ = orthonormal_setup()
    q.requires_grad_(True)
    before = queue.clone()
    h = mochi.synthesize(q, queue, Mixing(N=4, s=7, s_prime=5))
    assert h.shape == (6, 12, q.shape[1])
    assert torch.allclose(h.norm(dim=-1), torch.ones(6, 12), atol=1e-5)
    assert not h.requires_grad
    assert torch.equal(queue, before)


@pytest.mark.parametrize("N,s,sp", [(0, 0, 0), (8, 0, 0), (16, 0, 0)])
def test_empty(N, s, sp):
    q, queue, _, _ = orthonormal_setup()
    h = mochi.synthesize(q, queue, Mixing(N, s, sp))
    assert h.shape == (6, 0, q.shape[1])


def test_pairs_come_from_each_querys_own_hardest_and_differ():
    q, queue, hard, _ = orthonormal_setup(N=4)
    h = mochi.synthesize(q, queue, Mixing(N=4, s=64, s_prime=0), generator=torch.Generator().manual_seed(1))
    alphas = []
    for b in range(q.shape[0]):
        own = set(hard[b].tolist())
        for p in h[b]:
            i, j, a = decode_pair(p, queue)
            assert {i, j} <= own, f"query {b} mixed rows {i, j} outside its own hard set {own}"
            assert i != j
            alphas.append(round(min(a, 1 - a), 4))  # the pair's order is not recoverable, only its weights
    # Each point is a convex mix (both weights > 0), and each query draws its own alphas: no two
    # queries' sequences agree (one draw shared by all queries would make them equal).
    assert all(0 < x <= 0.5 for x in alphas)
    per_query = [tuple(alphas[b * 64:(b + 1) * 64]) for b in range(q.shape[0])]
    assert len(set(per_query)) == q.shape[0]


def test_query_mixes_carry_b_below_one_half():
    q, queue, hard, outside = orthonormal_setup(N=4)
    h = mochi.synthesize(q, queue, Mixing(N=4, s=0, s_prime=200), generator=torch.Generator().manual_seed(2))
    bs = []
    for b in range(q.shape[0]):
        own = set(hard[b].tolist())
        q_out = (q[b] @ outside).item()
        for p in h[b]:
            cb = (p @ outside).item() / q_out  # c * b: the query's share, read outside span(queue)
            rest = p - cb * q[b]  # = c (1 - b) n_j
            coef = rest @ queue.T
            j = coef.abs().argmax().item()
            assert j in own
            c1b = coef[j].item()
            assert c1b > 0
            others = coef.clone()
            others[j] = 0
            assert others.abs().max() < 1e-4
            bs.append(cb / (cb + c1b))
    bs = torch.tensor(bs)
    assert bs.min() >= 0 and bs.max() <= 0.5
    assert abs(bs.mean().item() - 0.25) < 0.02  # U(0, 0.5)
    assert bs.max() > 0.45 and bs.min() < 0.05


def test_alpha_is_uniform_on_0_1():
    B, K, D = 4, 16, 32
    q, queue, _, _ = orthonormal_setup(B=B, K=K, N=2, extra=D - K)
    h = mochi.synthesize(q, queue, Mixing(N=2, s=2000, s_prime=0), generator=torch.Generator().manual_seed(3))
    # With N = 2 the pair is always (i, j) = the two hard rows in some order: a is read directly.
    coef = torch.einsum("bsd,kd->bsk", h, queue)
    hard2 = q @ queue.T
    top = hard2.topk(2, dim=1).indices  # [B, 2]
    c0 = coef.gather(2, top[:, None, 0:1].expand(B, 2000, 1)).squeeze(-1)
    c1 = coef.gather(2, top[:, None, 1:2].expand(B, 2000, 1)).squeeze(-1)
    a = (c0 / (c0 + c1)).flatten().sort().values
    # Kolmogorov-Smirnov distance to U(0, 1); critical value at 8000 draws, alpha=0.001: 0.022.
    ecdf = torch.arange(1, a.numel() + 1) / a.numel()
    assert (ecdf - a).abs().max() < 0.022


def test_different_queries_use_different_hard_sets():
    """The MaugrimEP bug: every query mixing the FIRST query's hard negatives."""
    q, queue, hard, _ = orthonormal_setup(B=5, N=3)
    h = mochi.synthesize(q, queue, Mixing(N=3, s=10, s_prime=0))
    used = [{decode_pair(p, queue)[0] for p in h[b]} | {decode_pair(p, queue)[1] for p in h[b]} for b in range(5)]
    for b in range(1, 5):
        assert used[b].isdisjoint(used[0])


def test_seeded_reproducibility():
    q, queue, _, _ = orthonormal_setup()
    a = mochi.synthesize(q, queue, Mixing(4, 5, 3), generator=torch.Generator().manual_seed(7))
    b = mochi.synthesize(q, queue, Mixing(4, 5, 3), generator=torch.Generator().manual_seed(7))
    c = mochi.synthesize(q, queue, Mixing(4, 5, 3), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_precomputed_logits_give_the_same_points():
    q, queue, _, _ = orthonormal_setup()
    a = mochi.synthesize(q, queue, Mixing(4, 5, 3), generator=torch.Generator().manual_seed(7))
    b = mochi.synthesize(q, queue, Mixing(4, 5, 3), generator=torch.Generator().manual_seed(7), l_neg=q @ queue.T)
    assert torch.equal(a, b)


def test_hardest_matches_a_brute_force_sort():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(9, 16, generator=g), dim=1)
    queue = F.normalize(torch.randn(100, 16, generator=g), dim=1)
    got = mochi.hardest(q, queue, 10)
    for b in range(9):
        want = set((q[b] @ queue.T).argsort(descending=True)[:10].tolist())
        assert set(got[b].tolist()) == want
        assert got[b].tolist() == sorted(want)  # in queue order: the same positions on every device


def test_a_cpu_generator_draws_the_same_points_whatever_order_topk_returns(monkeypatch):
    q, queue, _, _ = orthonormal_setup()
    a = mochi.synthesize(q, queue, Mixing(4, 5, 3), generator=torch.Generator().manual_seed(7))
    real_topk = torch.Tensor.topk

    def reversed_topk(self, *args, **kw):  # another device's order of the same set
        out = real_topk(self, *args, **kw)
        return type(out)((out.values.flip(-1), out.indices.flip(-1)))

    monkeypatch.setattr(torch.Tensor, "topk", reversed_topk)
    b = mochi.synthesize(q, queue, Mixing(4, 5, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_generator_gives_a_gpu_the_cpus_points():
    q, queue, _, _ = orthonormal_setup()
    m = Mixing(4, 5, 3)
    cpu = mochi.synthesize(q, queue, m, generator=torch.Generator().manual_seed(7))
    gpu = mochi.synthesize(q.cuda(), queue.cuda(), m, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


def test_logits_of_points_are_dot_products_and_carry_grad_to_q_only():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 8, generator=g), dim=1).requires_grad_(True)
    h = F.normalize(torch.randn(3, 5, 8, generator=g), dim=-1)
    out = mochi.logits_of(q, h)
    want = torch.stack([h[b] @ q[b] for b in range(3)])
    assert torch.allclose(out, want, atol=1e-6)
    out.sum().backward()
    assert torch.allclose(q.grad, h.sum(dim=1), atol=1e-6)


@pytest.mark.parametrize(
    "N,s,sp,K,msg",
    [
        (50, 1, 0, 40, "cannot be taken"),
        (0, 4, 0, 40, "needs N >= 2"),
        (1, 4, 0, 40, "needs N >= 2"),
        (0, 0, 3, 40, "needs N >= 1"),
        (4, -1, 0, 40, "non-negative"),
        (4, 1.5, 0, 40, "non-negative integer"),
        (True, 0, 0, 40, "non-negative integer"),
    ],
)
def test_bad_parameters(N, s, sp, K, msg):
    """A setting that cannot be trained is refused where it is made (or checked against its queue),
    not inside the training step."""
    with pytest.raises(ValueError, match=msg):
        Mixing(N, s, sp).check_queue(K)


@pytest.mark.parametrize("N,s,sp,active", [(0, 0, 0, False), (64, 0, 0, False), (64, 8, 0, True), (64, 0, 4, True)])
def test_a_mixing_is_active_when_it_synthesises_something(N, s, sp, active):
    m = Mixing(N, s, sp)
    assert m.active is active and m.synthetic == s + sp
    assert m.notation == f"MoCHi ({N}, {s}, {sp})" and m.slug == f"mochi-N{N}-s{s}-sp{sp}"
    q = F.normalize(torch.randn(3, 8), dim=1)
    queue = F.normalize(torch.randn(128, 8), dim=1)
    assert mochi.synthesize(q, queue, m).shape == (3, s + sp, 8)
    assert Mixing(N, s, sp) == m and hash(Mixing(N, s, sp)) == hash(m)  # a value: compared and hashed by its fields


def oracle_setup(N=8, kept_counts=(3, 1, 0, 20), K=24, extra=3, seed=4):
    """Orthonormal queue; query b keeps only ``kept_counts[b]`` entries, the class oracle removed the
    rest, and the removed entries are the query's most similar (so they would be its hardest).
    Returns q, queue, removed [B, K], outside (a direction outside span(queue), which q has)."""
    g = torch.Generator().manual_seed(seed)
    D = K + extra
    basis = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0].float()
    queue, outside = basis[:K].contiguous(), basis[K]
    B = len(kept_counts)
    removed = torch.ones(B, K, dtype=torch.bool)
    q = torch.zeros(B, D)
    for b, n in enumerate(kept_counts):
        order = torch.randperm(K, generator=g)
        removed[b, order[:n]] = False
        weights = torch.where(removed[b], 1.0, 0.3) + 0.05 * torch.rand(K, generator=g)
        q[b] = weights @ queue + 0.7 * outside
    return F.normalize(q, dim=1), queue, removed, outside


def test_the_oracle_removed_entries_never_enter_a_synthetic_point():
    """Queries with fewer kept negatives than N mix from the kept ones only: every pair point lies in
    the span of the query's kept entries, every query point in that span plus q, pairs still differ."""
    N, s, sp = 8, 40, 40
    q, queue, removed, outside = oracle_setup(N)
    h = mochi.synthesize(q, queue, Mixing(N, s, sp), torch.Generator().manual_seed(5), l_neg=q @ queue.T,
                         removed=removed)
    for b in (0, 3):
        kept = set((~removed[b]).nonzero().flatten().tolist())
        for p in h[b, :s]:
            i, j, _ = decode_pair(p, queue)
            assert {i, j} <= kept and i != j
        for p in h[b, s:]:
            cb = (p @ outside) / (q[b] @ outside)  # the query's share, read outside span(queue)
            coef = (p - cb * q[b]) @ queue.T
            assert coef[removed[b]].abs().max() < 1e-5
            assert coef[~removed[b]].abs().max() > 0.1
    # Query 0 has three kept entries: its points use all of them, nothing else; query 3 has more
    # than N, and mixes its N hardest kept ones.
    used = [{k for p in h[b, :s] for k in decode_pair(p, queue)[:2]} for b in (0, 3)]
    assert used[0] == set((~removed[0]).nonzero().flatten().tolist())
    hardest_kept = (q[3] @ queue.T).masked_fill(removed[3], float("-inf")).topk(N).indices
    assert used[1] == set(hardest_kept.tolist())


def test_points_a_query_cannot_make_are_zero_and_drop_out_of_its_logits():
    """Pairs need two kept negatives, query mixes one: query 1 (one kept) makes only its s' points,
    query 2 (none kept) makes nothing; what is not made is zero and its logit -inf."""
    N, s, sp = 8, 6, 4
    q, queue, removed, outside = oracle_setup(N)
    h = mochi.synthesize(q, queue, Mixing(N, s, sp), torch.Generator().manual_seed(6), removed=removed)
    made = h.norm(dim=-1)
    assert torch.equal(made[1, :s], torch.zeros(s)) and torch.allclose(made[1, s:], torch.ones(sp))
    assert torch.equal(made[2], torch.zeros(s + sp))
    assert torch.allclose(made[[0, 3]], torch.ones(2, s + sp))
    only = (~removed[1]).nonzero().item()
    for p in h[1, s:]:
        coef = (p - (p @ outside) / (q[1] @ outside) * q[1]) @ queue.T
        assert coef.abs().argmax().item() == only
    logits = mochi.logits_of(q, h)
    assert torch.isneginf(logits[1, :s]).all() and torch.isneginf(logits[2]).all()
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[1, s:]).all() and torch.isfinite(logits[3]).all()
